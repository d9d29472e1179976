"""Measure how faithfully the embedded model draws held-out captions, and save a contact sheet.

    python tools/eval_tiny.py --model loramix/embedded/tiny-sd --sheet /tmp/tiny-eval.png

Three measurements, all from `loramix.embedded.quality` (the integration tests use the same code):
- every slot (`measure_slots`): the 20 held-out single-shape prompts on all nine backgrounds, 4 seeds
  each, DDIM 25 steps, CFG 6; a table of the share right per slot and the share of (prompt, seed) pairs
  with every slot right;
- the Mix tab's default prompt at its default seed, steps and CFG: each slot;
- colour in place (`measure`, the older metric): 40 held-out prompts on white or gray, one seed each.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from PIL import Image

from loramix.embedded import EMBEDDED_MODEL
from loramix.embedded.quality import (
    MIX_DEFAULT,
    MIX_DEFAULT_CFG,
    MIX_DEFAULT_SEED,
    MIX_DEFAULT_STEPS,
    SLOTS,
    generate,
    judge_slots,
    measure,
    measure_slots,
    slot_rates,
)


def contact_sheet(images: list, columns: int = 20) -> Image.Image:
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (64 * columns, 64 * rows), "white")
    for i, image in enumerate(images):
        sheet.paste(image, ((i % columns) * 64, (i // columns) * 64))
    return sheet.resize((128 * columns, 128 * rows), Image.Resampling.NEAREST)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=EMBEDDED_MODEL)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=0, help="first seed of the colour-in-place prompts")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per prompt of the every-slot measure")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sheet", type=Path, help="also save the generated pictures as one PNG here")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every prompt's verdict")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    pipe = StableDiffusionPipeline.from_pretrained(args.model, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    began = time.time()
    drawn: list = []
    slots = measure_slots(pipe, tuple(range(args.seeds)), args.steps, args.guidance, images=drawn)
    rates = slot_rates(slots)
    print(f"{args.model}: every slot of {len(slots)} held-out (prompt, seed) pairs ({time.time() - began:.0f}s)")
    print("| " + " | ".join((*SLOTS, "every slot")) + " |")
    print("|" + " --- |" * (len(SLOTS) + 1))
    print("| " + " | ".join(f"{rates[k]:.0%}" for k in (*SLOTS, "every slot")) + " |")
    if args.verbose:
        for v in slots:
            wrong = {k: v.found[k] for k, ok in v.right.items() if not ok}
            print(f"{'ok  ' if v.ok else 'MISS'} {v.caption}" + (f"  drawn: {wrong}" if wrong else ""))
    image = generate(pipe, [MIX_DEFAULT], MIX_DEFAULT_SEED, MIX_DEFAULT_STEPS, MIX_DEFAULT_CFG)[0]
    default = judge_slots(image, MIX_DEFAULT)
    print(f"Mix tab default ({MIX_DEFAULT.caption!r}, seed {MIX_DEFAULT_SEED}): "
          + ", ".join(f"{k} {default.found[k]}{'' if ok else ' (WRONG)'}" for k, ok in default.right.items()))
    if args.sheet:
        image.resize((256, 256), Image.Resampling.NEAREST).save(args.sheet.with_name(args.sheet.stem + "-mix.png"))
    began = time.time()
    rate, verdicts = measure(pipe, args.count, args.steps, args.guidance, args.seed)
    if args.verbose:
        for v in verdicts:
            print(f"{'ok  ' if v.ok else 'MISS'} wanted {v.wanted:7s} found {v.found:7s} | {v.caption}")
    print(f"{args.model}: colour in the named place for {sum(v.ok for v in verdicts)}/{len(verdicts)} "
          f"held-out prompts = {rate:.0%} (chance ~17%; {time.time() - began:.0f}s, unet {pipe.unet.dtype})")
    if args.sheet:
        contact_sheet(drawn).save(args.sheet)
        print(f"contact sheet of the every-slot pictures (a row per seed): {args.sheet}")


if __name__ == "__main__":
    main()
