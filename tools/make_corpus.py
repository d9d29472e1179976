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

from loramix.embedded.scenes import VOCABULARY, Scene, covering_scenes, held_out_triples, render, sample_scene

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
