"""Measure the embedded model's colour-in-place accuracy on held-out captions, and save a contact sheet.

    python tools/eval_tiny.py --model loramix/embedded/tiny-sd --sheet /tmp/tiny-eval.png

The metric lives in `loramix.embedded.quality` (the integration test uses the same code).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from PIL import Image

from loramix.embedded import EMBEDDED_MODEL
from loramix.embedded.quality import held_out_scenes, measure


def contact_sheet(pipe, count: int, steps: int, guidance: float, seed: int, columns: int = 10) -> Image.Image:
    scenes = held_out_scenes(count)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(count)]
    images = pipe([s.caption for s in scenes], num_inference_steps=steps, guidance_scale=guidance,
                  generator=generators, height=64, width=64).images
    rows = (count + columns - 1) // columns
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
    parser.add_argument("--seed", type=int, default=0)
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
    rate, verdicts = measure(pipe, args.count, args.steps, args.guidance, args.seed)
    if args.verbose:
        for v in verdicts:
            print(f"{'ok  ' if v.ok else 'MISS'} wanted {v.wanted:7s} found {v.found:7s} | {v.caption}")
    print(f"{args.model}: colour in the named place for {sum(v.ok for v in verdicts)}/{len(verdicts)} "
          f"held-out prompts = {rate:.0%} (chance ~17%; {time.time() - began:.0f}s, unet {pipe.unet.dtype})")
    if args.sheet:
        contact_sheet(pipe, args.count, args.steps, args.guidance, args.seed).save(args.sheet)
        print(f"contact sheet: {args.sheet}")


if __name__ == "__main__":
    main()
