"""How far a LoRA moves the embedded model's pictures toward a style set, for the style-learning tests.

Held-out prompts, with the LoRA's trigger word where it was trained (a user writes it in the prompt), are
generated on the unquantized embedded base at each slider weight; the distance at
a weight is |mean statistic of the pictures - the target|, the target being the style's own drawing of the same
prompts as the base's VAE draws it back (`style_metrics.prompts_target`, the time-to-style bench's measure).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loramix.embedded.quality import held_out_scenes
from loramix.embedded.style_metrics import prompts_target, style_statistic
from loramix.formats.adapter_info import adapter_info
from loramix.mix.mixer import Mixer
from loramix.mix.request import PreviewRequest
from trainers.dataset import with_trigger


def trigger_of(lora_path: Path) -> tuple[str, str]:
    """The trigger word a LoRA was trained with and where it goes, as its card in the Mix tab shows them."""
    info = adapter_info(lora_path)
    return info.trigger, info.trigger_position


def style_distances(lora_path: Path, style: str = "pastel", weights=(0.0, 0.5, 1.0),
                    prompts: int = 8) -> tuple[dict[float, float], dict[float, float]]:
    """(mean statistic per weight, distance to the target per weight) over `prompts` held-out prompts, seed i."""
    mixer = Mixer.from_base("")
    scenes = held_out_scenes(prompts)
    target = prompts_target(style, scenes, vae=mixer.components.vae)
    mixer.load(lora_path, name=style)
    captions = [with_trigger(scene.caption, *trigger_of(lora_path)) for scene in scenes]
    stats = {}
    for weight in weights:
        mixer.set_weight(style, weight)
        images = [mixer.generate(PreviewRequest(p, seed=i, steps=20, cfg_scale=6.0)) for i, p in enumerate(captions)]
        stats[weight] = float(np.mean([style_statistic(style, im) for im in images]))
    print(f"{style} target {target:.3f} (its drawing of the prompts); generated {stats}")
    return stats, {w: abs(s - target) for w, s in stats.items()}


def scene_scores(lora_path: Path | None, style: str, prompts: int = 12) -> tuple[float, float]:
    """(mean style statistic, share of content kept) over the held-out content scenes (a third on coloured
    backgrounds) at weight 1, the prompts carrying the LoRA's trigger word: the time-to-style bench's measure.
    None: the base alone."""
    from loramix.embedded.style_metrics import content_scenes, style_and_content

    mixer = Mixer.from_base("")
    word, position = "", "start"
    if lora_path is not None:
        mixer.load(lora_path, name="style", weight=1.0)
        word, position = trigger_of(lora_path)
    scenes = content_scenes(prompts)
    images = [mixer.generate(PreviewRequest(with_trigger(s.caption, word, position), seed=i, steps=20, cfg_scale=6.0))
              for i, s in enumerate(scenes)]
    return style_and_content(style, images, scenes)
