"""Style learning is real: the demo preset on the embedded model moves generations toward a style set.

Statistic (documented in loramix/embedded/README.md): the 90th percentile of HSV saturation, i.e. how
colourful the most colourful tenth of the picture (the shapes) is. The *pastel* set is washed out
while the base model draws saturated shapes; a LoRA that learned the style brings held-out prompts
toward the set's value, and weight 0.5 lies between.
"""

from __future__ import annotations

import pytest

from loramix.core.config import load_config
from loramix.embedded import STYLE_SETS
from tests.style_distance import scene_scores, style_distances
from trainers.lora_trainer import train

pytestmark = pytest.mark.slow


def test_demo_preset_learns_the_pastel_style(tmp_path):
    style = STYLE_SETS / "pastel"
    config = load_config("presets/demo-cpu.toml", overrides=[
        f"dataset.data_dir={style}", f"output.output_dir={tmp_path}", "sample.sample_every_n_steps=0",
        "output.save_every_n_steps=0"])
    result = train(config)
    stats, distance = style_distances(result.lora_path, "pastel")
    assert distance[1.0] < 0.5 * distance[0.0], distance
    assert min(stats[0.0], stats[1.0]) <= stats[0.5] <= max(stats[0.0], stats[1.0]), stats


def test_the_train_tabs_preset_reaches_stripes_and_keeps_the_content(tmp_path):
    """Issue 25: the preset the Train tab opens with (presets/demo-cpu.toml, as it stands) reaches the stripes
    look on the embedded model with the content kept, as bench/time_to_style.py measures it: among the LoRAs
    saved every 50 steps, one draws the 12 held-out content scenes at weight 1 at most half as far from the
    set (as the model's VAE draws it back) as the base does, with the content kept on at least 10 of 12.
    Measured 2026-12-05 on v3, 1 thread: steps 200 and 250 (ratio 0.39 and 0.16, 12 kept); 2026-12-06, with the
    background judged too (`content_kept`), torch's 2 threads: 0.39 and 0.12, 12 kept. With attention
    alone (the preset before) no save reached it by step 400 (0.51 at best); that is how this test was
    watched to fail. Pastel is pinned by the test above; ink is not reached (docs/benchmarks.md)."""
    from loramix.embedded.style_metrics import style_target
    from loramix.mix.mixer import Mixer

    style = "stripes"
    config = load_config("presets/demo-cpu.toml", overrides=[
        f"dataset.data_dir={STYLE_SETS / style}", f"output.output_dir={tmp_path}", "sample.sample_every_n_steps=0",
        "output.save_every_n_steps=50"])
    final = train(config).lora_path
    saves = sorted(tmp_path.glob(f"{final.stem}-step*.safetensors")) + [final]
    base_stat, _ = scene_scores(None, style)
    target = style_target(style, STYLE_SETS / style, vae=Mixer.from_base("").components.vae)
    scores = {}
    for path in saves:
        stat, kept = scene_scores(path, style)
        scores[path.name] = (round(abs(stat - target) / abs(base_stat - target), 3), round(kept * 12))
    print(f"{style}: (distance ratio, kept of 12) per save: {scores}")
    assert any(ratio <= 0.5 and kept >= 10 for ratio, kept in scores.values()), scores
