"""Does the embedded model draw what it is told? Colour-in-place accuracy on captions it never saw.

The prompts ask for held-out (colour, shape, position) combinations; a prompt passes when the dominant
hue of the named region of the generated image is the caption's colour. Chance is 1 in 6.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from loramix.embedded.scenes import SHAPE_COLOURS, SIZES, Scene, ShapeSpec, held_out_triples

MIN_COLOURED_FRACTION = 0.15


@dataclass(frozen=True)
class Verdict:
    caption: str
    wanted: str
    found: str  # a colour name, or "none" when the region has too few saturated pixels

    @property
    def ok(self) -> bool:
        return self.wanted == self.found


def held_out_scenes(count: int = 40) -> list[Scene]:
    """`count` single-shape scenes on neutral backgrounds built from the held-out combinations."""
    scenes = []
    triples = sorted(held_out_triples())
    for i in range(count):
        colour, shape, position = triples[i % len(triples)]
        size = list(SIZES)[(i // len(triples) + i) % len(SIZES)]
        scenes.append(Scene((ShapeSpec(shape, colour, position, size),), ["white", "gray"][i % 2]))
    return scenes


def _hue(rgb) -> float:
    return colorsys.rgb_to_hsv(*(np.asarray(rgb) / 255.0))[0]


HUES = {name: _hue(rgb) for name, rgb in SHAPE_COLOURS.items()}


def dominant_colour(pixels: np.ndarray, min_saturation: float = 0.35, min_fraction: float = MIN_COLOURED_FRACTION,
                    background: str | None = None) -> str:
    """Name of the palette hue most of the saturated pixels are nearest to, or "none" when fewer than
    `min_fraction` of the pixels reach `min_saturation` (lower both for washed-out or striped styles).
    Pixels nearest to a coloured `background`'s hue are not counted: the background is no evidence of the
    shape, and a region painted over in the background colour finds "none"."""
    rgb = pixels.reshape(-1, 3).astype(np.float32) / 255.0
    high, low = rgb.max(1), rgb.min(1)
    saturation = (high - low) / np.maximum(high, 1e-6)
    coloured = rgb[(saturation > min_saturation) & (high > 0.25)]
    names = list(HUES)
    nearest = np.zeros(0, dtype=np.int64)
    if len(coloured):
        hues = np.array([colorsys.rgb_to_hsv(*p)[0] for p in coloured])
        ref = np.array([HUES[n] for n in names])
        distance = np.abs(hues[:, None] - ref[None, :])
        nearest = np.minimum(distance, 1 - distance).argmin(1)
    if background in HUES:
        nearest = nearest[nearest != names.index(background)]
    if len(nearest) < min_fraction * len(rgb):
        return "none"
    return names[int(np.bincount(nearest, minlength=len(names)).argmax())]


def judge(image, scene: Scene, margin: int = 2, **thresholds) -> Verdict:
    """Compare the dominant colour of the first shape's box (plus a margin) with the caption.
    `thresholds` go to `dominant_colour`."""
    spec = scene.shapes[0]
    x0, y0, x1, y1 = spec.box
    arr = np.asarray(image.convert("RGB"))
    h, w = arr.shape[:2]
    region = arr[max(0, y0 - margin):min(h, y1 + margin), max(0, x0 - margin):min(w, x1 + margin)]
    return Verdict(scene.caption, spec.colour, dominant_colour(region, background=scene.background, **thresholds))


def measure(pipe, count: int = 40, steps: int = 25, guidance: float = 6.0, seed: int = 0,
            batch: int = 20) -> tuple[float, list[Verdict]]:
    """Generate one image per held-out prompt (seed + i) and return (pass rate, verdicts)."""
    import torch

    scenes = held_out_scenes(count)
    verdicts = []
    for start in range(0, count, batch):
        chunk = scenes[start:start + batch]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        images = pipe([s.caption for s in chunk], num_inference_steps=steps, guidance_scale=guidance,
                      generator=generators, height=64, width=64).images
        verdicts += [judge(im, s) for im, s in zip(images, chunk)]
    return sum(v.ok for v in verdicts) / len(verdicts), verdicts
