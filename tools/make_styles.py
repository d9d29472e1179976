"""Write the sample style sets shipped in loramix/embedded/styles/<name>/ (12 captioned PNGs each).

    python tools/make_styles.py            # rewrites stripes/, pastel/, ink/ and ../reg/
    python tools/make_styles.py --held-out /tmp/held-out-styles     # dusk/, the style no preset is tuned on

Captions use the corpus grammar unchanged ("a small red circle on the left, blue background"), so a
LoRA trained on a set learns the look (stripes, washed-out colours, inked outlines), not new content.

`loramix/embedded/reg/` holds 12 regularisation pictures for `dataset.reg_data_dir`: other scenes (none
held out) drawn plainly, as the base was pretrained on them, captioned without a trigger word.
presets/demo-cpu.toml trains with them (docs/benchmarks.md, time to a style).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from loramix.embedded import REG_SET, STYLE_SETS
from loramix.embedded.scenes import (
    COLOURS,
    IMAGE_SIZE,
    SUPERSAMPLE,
    Scene,
    draw_shape,
    random_scene,
    regularisation_scenes,
    render,
)
from loramix.embedded.style_metrics import PAPER, styled_colour


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


def write_style(name: str, out: Path, count: int = 12, seed: int = 0) -> Path:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{name}-{seed}")
    for i in range(count):
        scene = random_scene(rng, coloured_background=0.25)
        if name == "ink":
            scene = dataclasses.replace(scene, background="white", gradient=False)
        {**STYLES, **HELD_OUT_STYLES}[name](scene).save(folder / f"{name}_{i:02d}.png", optimize=True)
        (folder / f"{name}_{i:02d}.txt").write_text(scene.caption + "\n", encoding="utf-8")
    return folder


def write_reg(folder: Path, count: int = 12, seed: int = 7) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(regularisation_scenes(count, seed)):
        render(scene).save(folder / f"reg_{i:02d}.png", optimize=True)
        (folder / f"reg_{i:02d}.txt").write_text(scene.caption + "\n", encoding="utf-8")
    return folder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=STYLE_SETS)
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--held-out", type=Path, help="write only the held-out styles (dusk) into this folder")
    args = parser.parse_args(argv)
    if args.held_out:
        for name in HELD_OUT_STYLES:
            print(f"wrote {write_style(name, args.held_out, args.count, args.seed)}")
        return
    for name in STYLES:
        print(f"wrote {write_style(name, args.out, args.count, args.seed)}")
    print(f"wrote {write_reg(args.out.parent / REG_SET.name if args.out != STYLE_SETS else REG_SET, args.count)}")


if __name__ == "__main__":
    main()
