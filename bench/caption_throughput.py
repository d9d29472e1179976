"""Captioning throughput of the default captioner's architecture (BLIP large: ViT-L/16 at 384 px, a BERT-base
decoder, 30,524-word vocabulary) with random weights, on this CPU: images/s and CPU seconds per image, peak RSS.

Random weights never stop early, so every caption is exactly --tokens tokens long (min = max new tokens): the
time is that of a caption of that length. Run it alone (it measures one process):

    OMP_NUM_THREADS=2 python bench/caption_throughput.py --images 8 --batch 1 --tokens 20
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="", help="a model folder (default: build BLIP-large shapes in a temp folder)")
    args = p.parse_args()

    import torch

    from loramix.embedded.tiny import build_tiny_captioner
    from tests.conftest import draw_image
    from trainers.captioner import Captioner

    torch.set_num_threads(args.threads)
    folder = Path(args.model) if args.model else build_tiny_captioner(
        Path(tempfile.mkdtemp(prefix="blip-large-")), "blip", real_size=True)
    captioner = Captioner(str(folder), max_new_tokens=args.tokens, min_new_tokens=args.tokens)
    n_params = sum(t.numel() for t in captioner.model.parameters())
    images = [draw_image(i, (768, 512)).convert("RGB") for i in range(args.images)]
    captioner.caption(images[:1])  # warm-up
    walls, cpus = [], []
    for start in range(0, len(images), args.batch):
        batch = images[start:start + args.batch]
        c0, w0 = time.process_time(), time.perf_counter()
        texts = captioner.caption(batch)
        walls.append((time.perf_counter() - w0) / len(batch))
        cpus.append((time.process_time() - c0) / len(batch))
        assert all(texts)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"BLIP-large shapes: {n_params / 1e6:.1f} M parameters, fp32, {args.threads} threads, batch {args.batch}, "
          f"{args.tokens} tokens per caption, {args.images} images")
    print(f"wall s/image median {statistics.median(walls):.2f} -> {1 / statistics.median(walls):.3f} images/s; "
          f"CPU s/image median {statistics.median(cpus):.2f}; peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
