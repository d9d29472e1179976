"""Style learning is real: the demo preset on the embedded model moves generations toward a style set.

Statistic (documented in loramix/embedded/README.md): the 90th percentile of HSV saturation, i.e. how
colourful the most colourful tenth of the picture (the shapes) is. The *pastel* set is washed out
while the base model draws saturated shapes; a LoRA that learned the style brings held-out prompts
toward the set's value, and weight 0.5 lies between.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from loramix.config import load_config
from loramix.embedded import STYLE_SETS
from loramix.embedded.quality import held_out_scenes
from loramix.mixer import Mixer, PreviewRequest
from trainers.lora_trainer import train

pytestmark = pytest.mark.slow


def saturation(image: Image.Image) -> float:
    return float(np.percentile(np.asarray(image.convert("HSV"), dtype=np.float32)[..., 1], 90) / 255.0)


def test_demo_preset_learns_the_pastel_style(tmp_path):
    style = STYLE_SETS / "pastel"
    config = load_config("presets/demo-cpu.toml", overrides=[
        f"dataset.data_dir={style}", f"output.output_dir={tmp_path}", "sample.sample_every_n_steps=0",
        "output.save_every_n_steps=0"])
    result = train(config)
    target = np.mean([saturation(Image.open(p)) for p in sorted(style.glob("*.png"))])

    mixer = Mixer.from_base("")
    mixer.load(result.lora_path, name="pastel")
    prompts = [scene.caption for scene in held_out_scenes(8)]
    stats = {}
    for weight in (0.0, 0.5, 1.0):
        mixer.set_weight("pastel", weight)
        images = [mixer.generate(PreviewRequest(p, seed=i, steps=20, cfg_scale=6.0)) for i, p in enumerate(prompts)]
        stats[weight] = float(np.mean([saturation(im) for im in images]))
    distance = {w: abs(s - target) for w, s in stats.items()}
    print(f"pastel set saturation {target:.3f}; generated {stats}; distance {distance}")
    assert distance[1.0] < 0.5 * distance[0.0], distance
    assert min(stats[0.0], stats[1.0]) <= stats[0.5] <= max(stats[0.0], stats[1.0]), stats
