"""Write the synthetic caption-image corpus (coloured shapes, plain-English captions) to a folder.

    python tools/make_corpus.py --out /tmp/corpus --count 200 --seed 0

Each picture is NAME.png with its caption in NAME.txt, the layout LoRA training folders use. The grammar
and the renderer live in `loramix.embedded.scenes` (the quality test needs them); `make_corpus` is the
in-memory form `tools/pretrain_tiny.py` trains on. Held-out (colour, shape, position) combinations never
appear, so the quality test can ask for captions the model never saw.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from loramix.embedded.scenes import (
    COLOURS,
    IMAGE_SIZE,
    SUPERSAMPLE,
    VOCABULARY,
    Scene,
    background_array,
    covering_scenes,
    draw_shape,
    held_out_triples,
    render,
    sample_scene,
)

CORPUS_KINDS = ("random", "covering")


def make_corpus(count: int, seed: int = 0, kind: str = "random") -> tuple[np.ndarray, list[str], list[Scene]]:
    """`count` training pictures as a uint8 array (N, 64, 64, 3), their captions and ground truths.
    `kind` "random" draws each scene independently (the v1 corpus, 70% neutral backgrounds); "covering"
    runs through every (background, colour, shape, position) combination in turn (`covering_scenes`)."""
    rng = random.Random(seed)
    exclude = held_out_triples()
    if kind == "covering":
        scenes = covering_scenes(count, rng, exclude)
        return np.stack([np.asarray(render(s)) for s in scenes]), [s.caption for s in scenes], scenes
    if kind != "random":
        raise ValueError(f"corpus kind must be one of {CORPUS_KINDS}, not {kind!r}")
    images, captions, scenes = [], [], []
    for _ in range(count):
        image, caption, scene = sample_scene(rng, exclude)
        images.append(np.asarray(image))
        captions.append(caption)
        scenes.append(scene)
    return np.stack(images), captions, scenes


def detail_variant(scene: Scene, rng: random.Random) -> np.ndarray:
    """`scene` drawn with fine detail the plain corpus never has, as uint8 (64, 64, 3): colours washed toward
    white (a third of the time), outlines 1-3 px wide in black, white or a palette colour (three quarters),
    and bands of 2-8 px in one of four directions laid over the whole picture (two fifths). The VAE's
    decoder stage trains on these so that it can draw thin lines and bands back (`tools/pretrain_tiny.py`).
    Generic on purpose: no shipped style's exact look (ink's paper and 2-px black outline, stripes' white
    8-px diagonal bands inside the shapes, pastel's 55% wash) is singled out."""
    wash = rng.uniform(0.2, 0.7) if rng.random() < 1 / 3 else 0.0
    palette = {n: tuple(int(v + (255 - v) * wash) for v in rgb) for n, rgb in COLOURS.items()}
    big = IMAGE_SIZE * SUPERSAMPLE
    image = Image.fromarray(background_array(scene, big, palette).round().astype(np.uint8))
    draw = ImageDraw.Draw(image)
    width = rng.choice((0, 1, 2, 3))
    outline = rng.choice(((15, 15, 15), (240, 240, 240), *COLOURS.values()))
    for spec in scene.shapes:
        draw_shape(draw, spec, palette[spec.colour], outline=outline if width else None, width=width * SUPERSAMPLE,
                   scale=SUPERSAMPLE)
    array = np.asarray(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX), dtype=np.float32)
    if rng.random() < 0.4:
        y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
        half_period = rng.choice((2, 3, 4, 6, 8))
        along = rng.choice((x + y, x - y + IMAGE_SIZE, y, x))
        band = ((along // half_period) % 2 == 0).astype(np.float32) * rng.uniform(0.3, 0.8)
        colour = np.array(rng.choice(list(COLOURS.values())), dtype=np.float32)
        array = array * (1 - band[..., None]) + colour * band[..., None]
    return array.round().clip(0, 255).astype(np.uint8)


def colour_variant(scene: Scene, rng: random.Random) -> np.ndarray:
    """`scene` with every palette colour, background included, replaced by a random RGB colour (uniform in the
    cube, so dull, pale and dark tones as often as bright ones), as uint8 (64, 64, 3). The VAE's decoder stage
    trains on these so that it draws any flat colour back as it was, not only the nine of the corpus: the
    first decoder drew pale red back as beige and dark green as gray. No style's palette is singled out."""
    palette = {n: tuple(rng.randrange(256) for _ in range(3)) for n in COLOURS}
    return np.asarray(render(scene, palette), dtype=np.uint8)


def write_corpus(out: Path, count: int, seed: int = 0) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    exclude = held_out_triples()
    for i in range(count):
        image, caption, _ = sample_scene(rng, exclude)
        image.save(out / f"{i:05d}.png")
        (out / f"{i:05d}.txt").write_text(caption + "\n", encoding="utf-8")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write PNG + TXT pairs into")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocabulary", action="store_true", help="print every caption word and exit")
    args = parser.parse_args(argv)
    if args.vocabulary:
        print("\n".join(VOCABULARY))
        return
    write_corpus(args.out, args.count, args.seed)
    print(f"wrote {args.count} captioned pictures to {args.out}")


if __name__ == "__main__":
    main()
