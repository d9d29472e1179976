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

from loramix.embedded import REG_SET, STYLE_SETS
from loramix.embedded.scenes import (
    COLOURS,
    Scene,
    held_out_triples,
    random_scene,
    regularisation_scenes,
    render,
)
from loramix.embedded.style_looks import (  # noqa: F401  (the tests draw with them through here)
    HELD_OUT_STYLES,
    STYLES,
    dusk,
    ink,
    pastel,
    stripes,
    styled_colour,
)

# The styles that redraw the background (pastel and dusk recolour it, ink puts paper under every caption): their
# sets caption every background colour, or a LoRA has no example of how the style draws the one a prompt asks.
# Pastel's first set had no blue or green background, and its LoRAs drew the Mix tab's "blue background" dusty
# pink; with every colour they keep 11-12 of 12 held-out scenes where the first set's kept 7-10. Ink's first set
# captioned every picture "white background", so its LoRAs learned outlines on white and kept a blue or gray
# background: 0.52 of the way at best, never reached; captioned with the scene's background it is reached by
# step 50-100 at four seeds (docs/benchmarks.md, 2026-12-06). tests/unit/test_style_metrics.py finds a style
# that redraws the background and is not here.
COVERING = {"pastel", "dusk", "ink"}


def style_scenes(rng: random.Random, count: int, covering: bool = False) -> list[Scene]:
    """The scenes of a style set. `covering`: every background colour comes up (the nine in turn, shuffled, then
    again), shapes never in the background's colour, and no held-out (colour, shape, position) combination, so
    the content check's prompts stay unseen."""
    if not covering:
        return [random_scene(rng, coloured_background=0.25) for _ in range(count)]
    held_out = held_out_triples()
    backgrounds: list[str] = []
    while len(backgrounds) < count:
        backgrounds += rng.sample(list(COLOURS), len(COLOURS))
    scenes = []
    for background in backgrounds[:count]:
        while True:
            scene = random_scene(rng, exclude=held_out)
            if background not in {shape.colour for shape in scene.shapes}:
                break
        scenes.append(dataclasses.replace(scene, background=background))
    return scenes


def write_style(name: str, out: Path, count: int = 12, seed: int = 0) -> Path:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{name}-{seed}")
    for i, scene in enumerate(style_scenes(rng, count, covering=name in COVERING)):
        if name == "ink":  # paper is flat: no "gradient" in an ink caption (the one variant measured)
            scene = dataclasses.replace(scene, gradient=False)
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
