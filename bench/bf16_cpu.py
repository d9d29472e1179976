"""bf16 against fp32 on this CPU: does it have native bf16, and what a preview costs in each.

    python bench/bf16_cpu.py --base /tmp/sd15 --repeats 3

Prints whether torch sees AVX-512-bf16 / AMX on this CPU, a matrix product and a 3x3 conv in each
dtype, then one preview (1 DDIM step with CFG, to the latents) of the base model in fp32 and in bf16,
alternated, in this process's CPU seconds (medians). The training step in each precision is measured
end to end by `bench/train_speed.py --variant bf16=train.mixed_precision=bf16`.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.mix_real_shapes import pipe_preview  # noqa: E402
from loramix.core.cpu_features import native_bf16  # noqa: E402
from loramix.core.quiet import quiet_libraries  # noqa: E402
from loramix.formats.base_model import load_base_model  # noqa: E402
from loramix.mix.mixer import PreviewRequest  # noqa: E402


def cpu(fn) -> float:
    c0 = time.process_time()
    fn()
    return time.process_time() - c0


def alternated(fns: dict, rounds: int) -> dict:
    times = {k: [] for k in fns}
    for r in range(rounds):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            times[k].append(cpu(fns[k]))
    return {k: statistics.median(v) for k, v in times.items()}


def kernels(rounds: int) -> None:
    a, b = torch.randn(4096, 1280), torch.randn(1280, 1280)
    conv, x = torch.nn.Conv2d(320, 320, 3, padding=1).requires_grad_(False), torch.randn(1, 320, 32, 32)
    conv16 = copy.deepcopy(conv).to(torch.bfloat16)
    t = alternated({"mm fp32": lambda: a @ b, "mm bf16": lambda: a.bfloat16() @ b.bfloat16(),
                    "conv fp32": lambda: conv(x), "conv bf16": lambda: conv16(x.bfloat16())}, rounds * 5)
    print(f"4096x1280 @ 1280x1280: fp32 {t['mm fp32'] * 1e3:.1f} ms, bf16 {t['mm bf16'] * 1e3:.1f} ms "
          f"({t['mm fp32'] / t['mm bf16']:.2f}x); 3x3 conv 320 ch at 32x32: fp32 {t['conv fp32'] * 1e3:.1f} ms, "
          f"bf16 {t['conv bf16'] * 1e3:.1f} ms ({t['conv fp32'] / t['conv bf16']:.2f}x)", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="", help="a diffusers folder (SD 1.5 shapes: bench.real_shapes.save_model)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    quiet_libraries()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}; native bf16 (AVX-512-bf16 or AMX): {native_bf16()}; "
          f"capability {torch.backends.cpu.get_cpu_capability()}; {args.threads} thread(s)", flush=True)
    with torch.no_grad():
        kernels(args.repeats)
    if not args.base:
        return 0
    req = PreviewRequest("a red circle on the left", seed=1, steps=1, cfg_scale=6.0, width=args.size, height=args.size)
    pipes = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        c = load_base_model(args.base)
        for m in c.models():
            m.to(dtype=dtype).eval().requires_grad_(False)
        pipes[name] = c.family.pipeline(c)
        pipes[name].set_progress_bar_config(disable=True)
    for pipe in pipes.values():
        pipe_preview(pipe, req)  # warm-up
    t = alternated({k: (lambda pipe=pipe: pipe_preview(pipe, req)) for k, pipe in pipes.items()}, args.repeats)
    with torch.no_grad():
        lat = {k: pipe_preview(pipe, req).float() for k, pipe in pipes.items()}
    err = ((lat["bf16"] - lat["fp32"]).norm() / lat["fp32"].norm()).item()
    print(f"\n| SD 1.5 shapes, {args.size} px, 1 DDIM step with CFG | fp32 | bf16 |\n| --- | ---: | ---: |")
    print(f"| CPU s per preview (median of {args.repeats}) | {t['fp32']:.2f} | {t['bf16']:.2f} "
          f"({t['fp32'] / t['bf16']:.2f}x faster) |")
    print(f"\nrelative difference of the bf16 latents from fp32: {err:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
