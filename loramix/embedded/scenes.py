"""The caption grammar and renderer of the embedded model's world: coloured shapes on plain backgrounds.

`sample_scene(rng)` returns (PIL image, caption, Scene): the picture, its plain-English caption and the
ground truth (which shape, colour, where, in which pixel box). The corpus tool, the style-set tool and
the quality test all draw from here, so the captions the model was trained on are the ones it is tested on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SUPERSAMPLE = 4

SHAPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35), "orange": (245, 135, 20), "yellow": (240, 215, 25),
    "green": (35, 160, 60), "blue": (35, 75, 220), "purple": (135, 45, 175),
}
NEUTRALS: dict[str, tuple[int, int, int]] = {"white": (245, 245, 240), "gray": (128, 128, 128), "black": (20, 20, 22)}
COLOURS = {**SHAPE_COLOURS, **NEUTRALS}
SHAPES = ["circle", "square", "triangle", "star", "diamond"]
# Centre of each named position, in pixels of a 64x64 image.
POSITIONS: dict[str, tuple[int, int]] = {"left": (16, 32), "right": (48, 32), "top": (32, 16),
                                         "bottom": (32, 48), "center": (32, 32)}
PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
           "center": "in the center"}
SIZES = {"small": 16, "large": 28}
PAIRS = [("left", "right"), ("top", "bottom")]
STYLE_WORDS = ["stripes", "pastel", "ink", "style"]

VOCABULARY: list[str] = sorted(
    {"a", "and", "on", "at", "in", "the", "background", "gradient", *SIZES, *COLOURS, *SHAPES,
     *POSITIONS, *STYLE_WORDS})
"""Every word a caption can use (plus style trigger words): each is one token of the model's tokenizer."""


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    colour: str
    position: str
    size: str
    offset: tuple[int, int] = (0, 0)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) pixel box the shape is drawn in."""
        cx, cy = POSITIONS[self.position]
        cx, cy = cx + self.offset[0], cy + self.offset[1]
        half = SIZES[self.size] // 2
        return cx - half, cy - half, cx + half, cy + half

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} {PHRASES[self.position]}"


@dataclass(frozen=True)
class Scene:
    shapes: tuple[ShapeSpec, ...]
    background: str = "white"
    gradient: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def caption(self) -> str:
        bg = f"{self.background} gradient background" if self.gradient else f"{self.background} background"
        return " and ".join(s.phrase() for s in self.shapes) + ", " + bg


def held_out_triples(seed: int = 1234, count: int = 20) -> set[tuple[str, str, str]]:
    """(colour, shape, position) combinations never shown in training: the quality test asks for these."""
    triples = [(c, s, p) for c in SHAPE_COLOURS for s in SHAPES for p in POSITIONS]
    rng = random.Random(seed)
    rng.shuffle(triples)
    return set(triples[:count])


def _triple(spec: ShapeSpec) -> tuple[str, str, str]:
    return spec.colour, spec.shape, spec.position


def random_shape(rng: random.Random, position: str, exclude=frozenset(), colours=None) -> ShapeSpec:
    """A random shape at `position` avoiding the excluded (colour, shape, position) triples."""
    while True:
        spec = ShapeSpec(rng.choice(SHAPES), rng.choice(colours or list(SHAPE_COLOURS)), position,
                         rng.choice(list(SIZES)), (rng.randint(-3, 3), rng.randint(-3, 3)))
        if _triple(spec) not in exclude:
            return spec


def random_scene(rng: random.Random, exclude=frozenset(), two_shapes: float = 0.4,
                 coloured_background: float = 0.3) -> Scene:
    """One or two shapes, never overlapping, on a plain or gradient background of another colour."""
    if rng.random() < two_shapes:
        first, second = rng.choice(PAIRS)
        a = random_shape(rng, first, exclude)
        b = random_shape(rng, second, exclude, [c for c in SHAPE_COLOURS if c != a.colour])
        shapes = (a, b) if rng.random() < 0.5 else (b, a)
    else:
        shapes = (random_shape(rng, rng.choice(list(POSITIONS)), exclude),)
    used = {s.colour for s in shapes}
    if rng.random() < coloured_background:
        background = rng.choice([c for c in SHAPE_COLOURS if c not in used])
    else:
        background = rng.choice(list(NEUTRALS))
    return Scene(shapes, background, gradient=rng.random() < 0.3)


def covering_scenes(count: int, rng: random.Random, exclude=frozenset(), two_shapes: float = 0.4) -> list[Scene]:
    """`count` scenes whose first shape runs through every (background, colour, shape, position) combination
    not excluded, in shuffled rounds, so each background meets each coloured shape equally often (in
    `random_scene` a coloured background comes up 30% of the time, each of the six 5%); size, offset,
    gradient and the optional second shape are random."""
    combos = [(bg, c, s, p) for bg in COLOURS for c in SHAPE_COLOURS for s in SHAPES for p in POSITIONS
              if c != bg and (c, s, p) not in exclude]
    scenes: list[Scene] = []
    while len(scenes) < count:
        rng.shuffle(combos)
        for bg, colour, shape, position in combos[:count - len(scenes)]:
            first = ShapeSpec(shape, colour, position, rng.choice(list(SIZES)),
                              (rng.randint(-3, 3), rng.randint(-3, 3)))
            shapes: tuple[ShapeSpec, ...] = (first,)
            pair = next((pr for pr in PAIRS if position in pr), None)
            if pair and rng.random() < two_shapes:
                other = pair[1 - pair.index(position)]
                second = random_shape(rng, other, exclude, [c for c in SHAPE_COLOURS if c not in (colour, bg)])
                shapes = (first, second) if rng.random() < 0.5 else (second, first)
            scenes.append(Scene(shapes, bg, gradient=rng.random() < 0.3))
    return scenes


def shape_outline(spec: ShapeSpec, scale: int = 1) -> list[tuple[float, float]] | None:
    """Polygon points of the shape (None for a circle, drawn as an ellipse), in pixels * scale."""
    return outline_in_box(spec.shape, tuple(v * scale for v in spec.box))


def outline_in_box(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]] | None:
    """Polygon points of `shape` drawn in `box` (x0, y0, x1, y1); None for a circle (an ellipse)."""
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        return [(cx + rr * np.cos(a), cy - rr * np.sin(a) + r * 0.1) for a, rr in zip(angles, radii)]
    return None


def draw_shape(draw: ImageDraw.ImageDraw, spec: ShapeSpec, fill, outline=None, width: int = 0, scale: int = 1):
    points = shape_outline(spec, scale)
    if points is None:
        draw.ellipse([v * scale for v in spec.box], fill=fill, outline=outline, width=width)
    else:
        draw.polygon(points, fill=fill, outline=outline, width=width)


def background_array(scene: Scene, size: int, palette=COLOURS) -> np.ndarray:
    """HxWx3 float array: the plain colour, or a top-to-bottom fade from it to a darker (or lighter) shade."""
    base = np.array(palette[scene.background], dtype=np.float32)
    if not scene.gradient:
        return np.broadcast_to(base, (size, size, 3)).copy()
    other = base * 0.45 if base.mean() > 90 else base + (255 - base) * 0.45
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    return np.broadcast_to(base * (1 - t) + other * t, (size, size, 3)).copy()


def render(scene: Scene, palette=COLOURS) -> Image.Image:
    """Draw the scene at 64x64 (supersampled, so edges are smooth)."""
    big = IMAGE_SIZE * SUPERSAMPLE
    image = Image.fromarray(background_array(scene, big, palette).round().astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for spec in scene.shapes:
        draw_shape(draw, spec, palette[spec.colour], scale=SUPERSAMPLE)
    return image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def sample_scene(rng: random.Random, exclude=frozenset()) -> tuple[Image.Image, str, Scene]:
    """(image, caption, ground truth) of one random training picture."""
    scene = random_scene(rng, exclude)
    return render(scene), scene.caption, scene


def regularisation_scenes(count: int = 12, seed: int = 7) -> list[Scene]:
    """Random scenes, none of them held out, for regularisation pictures: drawn plainly (`render`) they are the
    kind of picture the base was pretrained on, captioned in its grammar with no trigger word."""
    rng = random.Random(seed)
    held_out = held_out_triples()
    return [random_scene(rng, exclude=held_out) for _ in range(count)]
