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


def test_regularisation_and_a_trigger_keep_the_content_the_plain_run_loses(tmp_path):
    """presets/demo-cpu-keep-content.toml (trigger word "style" last, the embedded regularisation pictures)
    trained on pastel, and the same preset with both removed. On the 12 held-out content scenes at weight 1
    (the trigger in the prompts of the first), measured 2026-11-23: the regularised run moves the pictures
    more than half-way to the set (distance ratio 0.30, the time-to-style bench's measure) and keeps the
    content on 9 of 12 (the base: 10); the plain run keeps it on 2 of 12 (ratio 0.62). With the
    regularisation pictures left out of the epochs (planted) the run kept 2 of 12 and this test failed. With
    them given the trigger too (planted) it still passed (ratio 0.496, content 10 of 12): what keeps the
    content is the regularisation pictures; that they get no trigger is pinned in tests/unit/test_dataset.py."""
    from loramix.embedded.style_metrics import style_target
    from loramix.mix.mixer import Mixer

    style = STYLE_SETS / "pastel"
    runs = {"reg": [], "plain": ["dataset.reg_data_dir=", "dataset.trigger_word="]}
    scores = {}
    for name, extra in runs.items():
        config = load_config("presets/demo-cpu-keep-content.toml", overrides=[
            f"dataset.data_dir={style}", f"output.output_dir={tmp_path / name}", "sample.sample_every_n_steps=0",
            "output.save_every_n_steps=0", *extra])
        scores[name] = scene_scores(train(config).lora_path, "pastel")
    base_stat, base_kept = scene_scores(None, "pastel")
    target = style_target("pastel", style, vae=Mixer.from_base("").components.vae)
    ratio = {name: abs(stat - target) / abs(base_stat - target) for name, (stat, _) in scores.items()}
    kept = {name: k for name, (_, k) in scores.items()}
    print(f"distance ratio {ratio}, content kept {kept}, base {base_kept}")
    assert ratio["reg"] < 0.5, ratio  # the regularised run learned the look on these scenes
    assert kept["reg"] >= kept["plain"] + 0.25, kept  # and kept the content that the plain run loses
