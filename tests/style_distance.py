"""How far a LoRA moves the embedded model's pictures toward a style set, for the style-learning tests.

Held-out prompts are generated on the unquantized embedded base at each slider weight; the distance at
a weight is |mean statistic of the pictures - the set's value| (`loramix.embedded.style_metrics`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loramix.embedded.quality import held_out_scenes
from loramix.embedded.style_metrics import style_statistic, style_target
from loramix.mixer import Mixer, PreviewRequest


def style_distances(lora_path: Path, style: str = "pastel", weights=(0.0, 0.5, 1.0),
                    prompts: int = 8) -> tuple[dict[float, float], dict[float, float]]:
    """(mean statistic per weight, distance to the set per weight) over `prompts` held-out prompts, seed i."""
    target = style_target(style)
    mixer = Mixer.from_base("")
    mixer.load(lora_path, name=style)
    captions = [scene.caption for scene in held_out_scenes(prompts)]
    stats = {}
    for weight in weights:
        mixer.set_weight(style, weight)
        images = [mixer.generate(PreviewRequest(p, seed=i, steps=20, cfg_scale=6.0)) for i, p in enumerate(captions)]
        stats[weight] = float(np.mean([style_statistic(style, im) for im in images]))
    print(f"{style} set statistic {target:.3f}; generated {stats}")
    return stats, {w: abs(s - target) for w, s in stats.items()}
