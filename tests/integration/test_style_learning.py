"""Style learning is real: the demo preset on the embedded model moves generations toward a style set.

Statistic (documented in loramix/embedded/README.md): the 90th percentile of HSV saturation, i.e. how
colourful the most colourful tenth of the picture (the shapes) is. The *pastel* set is washed out
while the base model draws saturated shapes; a LoRA that learned the style brings held-out prompts
toward the set's value, and weight 0.5 lies between.
"""

from __future__ import annotations

import pytest

from loramix.config import load_config
from loramix.embedded import STYLE_SETS
from tests.style_distance import style_distances
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
