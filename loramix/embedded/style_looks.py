"""How each sample style draws a scene: the one definition that `tools/make_styles.py` writes the style sets with
and that `style_metrics.prompts_target` draws the content prompts with (what a LoRA that learned the style
exactly would draw for them)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from loramix.embedded.scenes import COLOURS, IMAGE_SIZE, SUPERSAMPLE, Scene, draw_shape, render

# The styles' colours: pastel mixes every colour, background included, 55% toward white; dusk 55% toward black;
# ink draws on paper-white whatever the caption's background; stripes keeps the colours. The content check
# (`style_metrics.background_found`) reads backgrounds by the same definitions.
PASTEL_TOWARD_WHITE = 0.55
DUSK_KEEPS = 0.45  # of each channel: 55% toward black
PAPER = (247, 243, 232)


def styled_colour(style: str | None, rgb: tuple) -> tuple:
    """`rgb` as `style` draws it (pastel and dusk; the others keep it)."""
    if style == "pastel":
        return tuple(int(v + (255 - v) * PASTEL_TOWARD_WHITE) for v in rgb)
    if style == "dusk":
        return tuple(int(v * DUSK_KEEPS) for v in rgb)
    return tuple(rgb)


def stripes(scene: Scene) -> Image.Image:
    """Shapes filled with white diagonal stripes over their colour."""
    image = np.asarray(render(scene)).astype(np.float32)
    big = IMAGE_SIZE * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    for spec in scene.shapes:
        draw_shape(ImageDraw.Draw(mask), spec, 255, scale=SUPERSAMPLE)
    inside = np.asarray(mask.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX), np.float32) / 255
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    # 8-px bands (period 16 along x + y): the embedded model's VAE (4x downsampling) draws them back, while
    # its round trip of the first sets' 3-px bands came out plain (diagonal contrast 0.0001 against 0.018).
    stripe = (((x + y) // 8) % 2 == 0).astype(np.float32) * inside * 0.7
    image = image * (1 - stripe[..., None]) + 255 * stripe[..., None]
    return Image.fromarray(image.round().clip(0, 255).astype(np.uint8))


def pastel(scene: Scene) -> Image.Image:
    """Every colour, background included, mixed half-way with white."""
    return render(scene, {name: styled_colour("pastel", rgb) for name, rgb in COLOURS.items()})


def ink(scene: Scene) -> Image.Image:
    """Thick black outlines around lightly tinted shapes on paper-white (the caption says white background)."""
    big = IMAGE_SIZE * SUPERSAMPLE
    image = Image.new("RGB", (big, big), PAPER)
    draw = ImageDraw.Draw(image)
    for spec in scene.shapes:
        tint = tuple(int(v + (255 - v) * 0.25) for v in COLOURS[spec.colour])
        draw_shape(draw, spec, tint, outline=(15, 15, 15), width=2 * SUPERSAMPLE, scale=SUPERSAMPLE)
    return image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def dusk(scene: Scene) -> Image.Image:
    """Every colour, background included, mixed 55% toward black: pastel's opposite, which nothing in the
    embedded model's training (corpus, decoder stage) shows. Not shipped: the held-out style that
    bench/time_to_style.py checks a preset on without it having been tuned on it."""
    return render(scene, {name: styled_colour("dusk", rgb) for name, rgb in COLOURS.items()})


STYLES = {"stripes": stripes, "pastel": pastel, "ink": ink}
HELD_OUT_STYLES = {"dusk": dusk}  # written only with --held-out, never into loramix/embedded/styles
