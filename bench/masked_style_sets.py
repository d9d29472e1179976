"""Copies of the shipped style sets with a loss mask per picture (`<stem>.mask.png`: white on the shapes),
for measuring `train.masked_loss` with bench/time_to_style.py:

    python bench/masked_style_sets.py /tmp/tts-masked
    python bench/time_to_style.py --styles pastel --train-sets /tmp/tts-masked --set train.masked_loss=true

The scenes are drawn again from the seeds tools/make_styles.py used (checked: the pictures come out equal
to the shipped ones, else this stops), and each mask is the scene's shapes drawn white, supersampled and
box-filtered as the pictures are, grown by `--grow` pixels.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from make_styles import STYLES  # noqa: E402

from loramix.core.writer import write_bytes, write_text  # noqa: E402
from loramix.embedded import STYLE_SETS  # noqa: E402
from loramix.embedded.scenes import IMAGE_SIZE, SUPERSAMPLE, draw_shape, random_scene  # noqa: E402


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_masked_set(name: str, out: Path, grow: int = 1, count: int = 12, seed: int = 0) -> Path:
    folder = out / name
    rng = random.Random(f"{name}-{seed}")  # as tools/make_styles.py's write_style
    for i in range(count):
        scene = random_scene(rng, coloured_background=0.25)
        if name == "ink":
            scene = dataclasses.replace(scene, background="white", gradient=False)
        shipped = STYLE_SETS / name / f"{name}_{i:02d}.png"
        picture = STYLES[name](scene)
        if not np.array_equal(np.asarray(picture), np.asarray(Image.open(shipped).convert("RGB"))):
            raise SystemExit(f"{shipped} is not the picture its seed draws; run tools/make_styles.py first.")
        big = IMAGE_SIZE * SUPERSAMPLE
        mask = Image.new("L", (big, big), 0)
        for spec in scene.shapes:
            draw_shape(ImageDraw.Draw(mask), spec, 255, scale=SUPERSAMPLE)
        mask = mask.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
        if grow:
            mask = mask.filter(ImageFilter.MaxFilter(2 * grow + 1))
        write_bytes(folder / shipped.name, shipped.read_bytes(), replace=True)
        write_text(folder / f"{name}_{i:02d}.txt", shipped.with_suffix(".txt").read_text(encoding="utf-8"), replace=True)
        write_bytes(folder / f"{name}_{i:02d}.mask.png", _png(mask), replace=True)
    return folder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--styles", default="pastel,ink,stripes")
    parser.add_argument("--grow", type=int, default=1, help="grow each mask by this many pixels")
    args = parser.parse_args(argv)
    for name in args.styles.split(","):
        folder = write_masked_set(name, args.out, args.grow)
        cover = np.mean([np.asarray(Image.open(p)).mean() / 255 for p in folder.glob("*.mask.png")])
        print(f"wrote {folder}: masks cover {cover:.0%} of the pictures on average")


if __name__ == "__main__":
    main()
