"""Does the embedded model draw what it is told? Two judges, on captions it never saw.

- `judge` (colour in place): the dominant hue of the named region is the caption's colour (chance: 1 in
  6). The style benchmarks' content check uses it, with thresholds lowered for washed-out styles.
- `judge_slots` (every slot): the picture is read back into a scene (background colour; per shape its
  colour, shape, size and position) and each slot is compared with the caption's. `measure_slots`
  runs it on held-out prompts at several seeds; a (prompt, seed) pair passes when every slot is right.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from loramix.embedded.scenes import (
    COLOURS,
    POSITIONS,
    SHAPE_COLOURS,
    SHAPES,
    SIZES,
    Scene,
    ShapeSpec,
    held_out_triples,
    outline_in_box,
)

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


# ---- every slot ---------------------------------------------------------------------------------------

SLOTS = ("background", "colour", "shape", "size", "position")
# The Mix tab's default prompt as a scene, and its default seed, steps and CFG (webui/mix_panels.py
# `request_panel`, loramix.mix.request.PreviewRequest; a test keeps them equal): the first picture a newcomer sees.
MIX_DEFAULT = Scene((ShapeSpec("circle", "red", "center", "large"),), "blue")
MIX_DEFAULT_SEED, MIX_DEFAULT_STEPS, MIX_DEFAULT_CFG = 1, 20, 6.0
FOREGROUND_DISTANCE = 40.0  # RGB distance from the background that makes a pixel part of a shape (the
# closest two palette colours, orange and yellow, are 80 apart)
SIZE_SPLIT = (SIZES["small"] + SIZES["large"]) / 2
MAX_ASPECT = 2.0  # every shape of the grammar is about as wide as tall (a star: 0.95); a blob twice as long
# as wide is none of them


@dataclass(frozen=True)
class DrawnShape:
    """One shape read back from a picture: its slots as the picture shows them."""
    colour: str
    shape: str
    size: str
    position: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of its pixels (x1, y1 exclusive)


@dataclass(frozen=True)
class SlotVerdict:
    caption: str
    wanted: dict  # slot -> word (per shape: "colour", "shape", ... of the first; "colour 2", ... of a second)
    found: dict

    @property
    def right(self) -> dict:
        return {slot: self.found.get(slot) == word for slot, word in self.wanted.items()}

    @property
    def ok(self) -> bool:
        return all(self.right.values())


def nearest_colour(rgb, names=COLOURS) -> str:
    ref = np.array([COLOURS[n] for n in names], dtype=np.float32)
    return list(names)[int(np.linalg.norm(ref - np.asarray(rgb, dtype=np.float32), axis=1).argmin())]


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, largest first, as boolean masks."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    sizes = []
    h, w = mask.shape
    for y, x in zip(*np.nonzero(mask)):
        if labels[y, x]:
            continue
        label = len(sizes) + 1
        labels[y, x], stack, count = label, [(y, x)], 0
        while stack:
            cy, cx = stack.pop()
            count += 1
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    stack.append((ny, nx))
        sizes.append(count)
    order = np.argsort(sizes)[::-1]
    return [labels == i + 1 for i in order]


def _template(shape: str, box: tuple[int, int, int, int], size: int, scale: int = 4) -> np.ndarray:
    """Boolean mask of `shape` fitted to the pixel box, drawn as `render` draws (supersampled, half covered)."""
    x0, y0, x1, y1 = box
    canvas = Image.new("L", (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(canvas)
    outline = outline_in_box(shape, (0.0, 0.0, 1.0, 1.0))
    if outline is None:
        draw.ellipse([x0 * scale, y0 * scale, x1 * scale, y1 * scale], fill=255)
    else:  # stretch the shape's own outline so that its extent is the box
        xs, ys = [p[0] for p in outline], [p[1] for p in outline]
        sx, sy = (x1 - x0) / (max(xs) - min(xs)), (y1 - y0) / (max(ys) - min(ys))
        draw.polygon([((px - min(xs)) * sx * scale + x0 * scale, (py - min(ys)) * sy * scale + y0 * scale)
                      for px, py in outline], fill=255)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX)) >= 128


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _best_overlap(shape: str, mask: np.ndarray, box: tuple[int, int, int, int], shift: int = 1) -> float:
    """Intersection over union of `mask` with `shape` stretched to `box`, best over shifts of the box's
    edges by up to `shift` px (a blurred edge may sit a pixel off)."""
    best = 0.0
    x0, y0, x1, y1 = box
    for dx0, dy0, dx1, dy1 in {(a, b, c, d) for a in (-shift, 0, shift) for b in (-shift, 0, shift)
                               for c in (-shift, 0, shift) for d in (-shift, 0, shift)}:
        if x1 + dx1 - x0 - dx0 < 1 or y1 + dy1 - y0 - dy0 < 1:
            continue  # a blob a pixel thin: the shifted box would turn inside out
        template = _template(shape, (x0 + dx0, y0 + dy0, x1 + dx1, y1 + dy1), mask.shape[0])
        best = max(best, (template & mask).sum() / max(1, (template | mask).sum()))
    return best


def _read_shape(component: np.ndarray, arr: np.ndarray, background_rgb: np.ndarray) -> DrawnShape:
    core = component.copy()  # away from the anti-aliased edge, where colours mix with the background
    core[1:-1, 1:-1] &= component[:-2, 1:-1] & component[2:, 1:-1] & component[1:-1, :-2] & component[1:-1, 2:]
    pixels = arr[core] if core.sum() >= 4 else arr[component]
    shape_rgb = np.median(pixels, axis=0)
    colour = nearest_colour(shape_rgb)
    # The outline where a pixel is half shape colour, half background (as `render` draws an edge): the
    # first mask, cut at a fixed distance from the background, also takes in a blurred halo.
    towards = shape_rgb - background_rgb
    half = ((arr - background_rgb) @ towards) / max(float(towards @ towards), 1e-6) > 0.5
    parts = _components(half & _dilate(component, 2))
    mask = parts[0] if parts and parts[0].sum() >= 4 else component
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    position = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)
    size = "large" if max(box[2] - box[0], box[3] - box[1]) > SIZE_SPLIT else "small"
    width, height = box[2] - box[0], box[3] - box[1]
    if max(width, height) > MAX_ASPECT * min(width, height):
        return DrawnShape(colour, "none", size, position, box)  # the outlines would fit any bar or line
    overlap = {shape: _best_overlap(shape, mask, box) for shape in SHAPES}
    return DrawnShape(colour, max(overlap, key=overlap.get), size, position, box)


def read_background(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the background's RGB, the foreground mask) of an RGB array: pixels further than FOREGROUND_DISTANCE
    from the 2-px border's median colour are foreground, the median of the rest is the background."""
    border = np.concatenate([arr[:2].reshape(-1, 3), arr[-2:].reshape(-1, 3), arr[:, :2].reshape(-1, 3),
                             arr[:, -2:].reshape(-1, 3)])
    first = np.median(border, axis=0)
    foreground = np.linalg.norm(arr - first, axis=2) > FOREGROUND_DISTANCE
    return (np.median(arr[~foreground], axis=0) if (~foreground).any() else first), foreground


def read_scene(image, shapes: int = 1) -> tuple[str, list[DrawnShape]]:
    """(background colour, up to `shapes` shapes) as the picture shows them; plain backgrounds only.

    Pixels further than FOREGROUND_DISTANCE from the border's median colour are foreground; the rest give
    the background (their median, nearest palette colour). The largest 4-connected foreground blobs are the
    shapes (two touching shapes, of two colours, are split by colour), each read for its colour (median of its inner pixels, nearest palette colour), size (its
    extent against 22 px), position (nearest named centre to its box's centre) and shape (the outline,
    stretched to its box, that overlaps it best)."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    background_rgb, foreground = read_background(arr)
    background = nearest_colour(background_rgb)
    blobs = [c for c in _components(foreground)[:shapes] if c.sum() >= 4]
    if len(blobs) < shapes and blobs:  # two shapes touching: split the largest blob by colour
        names = [n for n in COLOURS if n != background]
        ref = np.array([COLOURS[n] for n in names], dtype=np.float32)
        label = np.linalg.norm(arr[:, :, None, :] - ref, axis=3).argmin(2)
        parts = [c for i in range(len(names)) for c in _components(blobs[0] & (label == i))]
        parts = sorted(parts, key=lambda c: -c.sum())[:shapes - len(blobs) + 1]
        blobs = [c for c in parts + blobs[1:] if c.sum() >= 4]
    return background, [_read_shape(blob, arr, background_rgb) for blob in blobs]


def judge_slots(image, scene: Scene) -> SlotVerdict:
    """Every slot of `scene`'s caption against what `image` shows. Each caption shape is matched with the
    drawn shape nearest its named place; a missing shape gets "none" in all its slots."""
    if scene.gradient:
        raise ValueError("judge_slots reads plain backgrounds only; the scene has a gradient.")
    background, drawn = read_scene(image, len(scene.shapes))
    wanted, found = {"background": scene.background}, {"background": background}
    left = list(drawn)
    for i, spec in enumerate(scene.shapes):
        suffix = "" if i == 0 else f" {i + 1}"
        px, py = POSITIONS[spec.position]
        match = min(left, key=lambda d: ((d.box[0] + d.box[2]) / 2 - px) ** 2 + ((d.box[1] + d.box[3]) / 2 - py) ** 2,
                    default=None)
        if match is not None:
            left.remove(match)
        for slot in SLOTS[1:]:
            wanted[slot + suffix] = getattr(spec, slot)
            found[slot + suffix] = getattr(match, slot) if match else "none"
    return SlotVerdict(scene.caption, wanted, found)


def fidelity_scenes() -> list[Scene]:
    """One single-shape scene per held-out (colour, shape, position) triple, plain backgrounds going round
    all nine colours (never the shape's), sizes alternating."""
    scenes, backgrounds = [], list(COLOURS)
    for i, (colour, shape, position) in enumerate(sorted(held_out_triples())):
        choices = [b for b in backgrounds if b != colour]
        scenes.append(Scene((ShapeSpec(shape, colour, position, list(SIZES)[i % 2]),), choices[i % len(choices)]))
    return scenes


def generate(pipe, scenes: list[Scene], seed: int, steps: int = 25, guidance: float = 6.0,
             suffix: str = "") -> list:
    """One picture per scene, all with generator seed `seed` (the Mix tab's habit: one seed, one prompt)."""
    import torch

    generators = [torch.Generator().manual_seed(seed) for _ in scenes]
    return pipe([s.caption + suffix for s in scenes], num_inference_steps=steps, guidance_scale=guidance,
                generator=generators, height=64, width=64).images


def measure_slots(pipe, seeds=(0, 1, 2, 3), steps: int = 25, guidance: float = 6.0,
                  scenes: list[Scene] | None = None, images: list | None = None) -> list[SlotVerdict]:
    """`judge_slots` on every fidelity scene (or `scenes`) at every seed; the pictures are appended to
    `images` when given."""
    scenes = scenes if scenes is not None else fidelity_scenes()
    verdicts = []
    for seed in seeds:
        drawn = generate(pipe, scenes, seed, steps, guidance)
        verdicts += [judge_slots(image, scene) for image, scene in zip(drawn, scenes)]
        if images is not None:
            images += drawn
    return verdicts


def slot_rates(verdicts: list[SlotVerdict]) -> dict[str, float]:
    """Share right per slot (a second shape's slots counted with the first's) and "every slot"."""
    right: dict[str, list[bool]] = {slot: [] for slot in SLOTS}
    for v in verdicts:
        for key, ok in v.right.items():
            right[key.split(" ")[0]].append(ok)
    rates = {slot: sum(r) / len(r) for slot, r in right.items() if r}
    rates["every slot"] = sum(v.ok for v in verdicts) / len(verdicts)
    return rates
