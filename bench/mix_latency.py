"""Mixer preview latency: base alone vs 1/3/5 adapters, fused and unfused, and a weight change.

    python bench/mix_latency.py                     # a random SD-shaped model built offline
    python bench/mix_latency.py --base PATH         # any diffusers SD 1.x/2.x folder
    python bench/mix_latency.py --arch sd15 --size 256 --steps 2 --threads 1
    python bench/mix_latency.py --arch sdxl --dtype bf16 --memory-only

Prints a markdown table of median seconds per preview (and the ratio to the base model alone),
plus the time from a weight change to the next preview and how many files that change read.
`--arch sd15|sdxl` builds a random-weight model from loramix/configs and five random full-layer
kohya LoRAs (kohya's default layer set) and compares the mixer with diffusers' load_lora_weights +
set_adapters, unfused and fused: peak RSS, time to the first preview, after a weight change, x base
(bench/mix_real_shapes.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loramix.core.quiet import quiet_libraries  # noqa: E402
from loramix.embedded.tiny import build_tiny_model  # noqa: E402
from loramix.formats import lora_io  # noqa: E402
from loramix.formats.lora_io import LoraAdapter, LoraLayer, module_table, save_lora  # noqa: E402
from loramix.mix.mixer import Mixer, PreviewRequest  # noqa: E402

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def random_adapter(mixer: Mixer, path: Path, seed: int, rank: int) -> Path:
    """A LoRA on every attention projection of the base UNet, random up and down."""
    g = torch.Generator().manual_seed(seed)
    unet = mixer.components.unet
    modules = dict(unet.named_modules())
    layers = {}
    for name, module_path in module_table(unet, "lora_unet").items():
        if module_path.endswith(TARGETS) and isinstance(modules[module_path], torch.nn.Linear):
            out_f, in_f = modules[module_path].weight.shape
            layers[name] = LoraLayer(torch.randn(rank, in_f, generator=g) * 0.05,
                                     torch.randn(out_f, rank, generator=g) * 0.05, float(rank))
    return save_lora(path, LoraAdapter(layers, {}), "fp16")


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="", help="diffusers folder (default: build a random SD-shaped model)")
    p.add_argument("--size", type=int, default=128, help="image side of the built model")
    p.add_argument("--channels", default="64,128,256", help="UNet block widths of the built model")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--arch", choices=["tiny", "sd15", "sdxl"], default="tiny",
                   help="tiny: the table above; sd15 / sdxl: real shapes, random weights (bench/mix_real_shapes.py)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="real shapes: model dtype")
    p.add_argument("--memory-only", action="store_true", help="real shapes: fuse / load only, no denoising")
    p.add_argument("--threads", type=int, default=1, help="real shapes: torch CPU threads")
    p.add_argument("--probe", type=int, default=0, help="real shapes, --memory-only: also one 1-step preview "
                   "at this size (px, no CFG) for the base and the hooks, to measure what a UNet call adds")
    p.add_argument("--skip-diffusers", action="store_true", help="real shapes: loramix only")
    p.add_argument("--layers", choices=["full", "attn"], default="full",
                   help="real shapes: kohya's default LoRA layers, or the UNet attention projections only")
    args = p.parse_args(argv)
    if args.arch != "tiny":
        from bench.mix_real_shapes import run_real_shapes

        return run_real_shapes(args)
    quiet_libraries()
    work = Path(tempfile.mkdtemp(prefix="mixbench-"))
    base = args.base or str(build_tiny_model(
        work / "model", image_size=args.size, text_dim=256,
        unet_channels=tuple(int(c) for c in args.channels.split(","))))
    mixer = Mixer.from_base(base)
    files = [random_adapter(mixer, work / f"a{i}.safetensors", i, args.rank) for i in range(5)]
    req = PreviewRequest("a red circle", seed=1, steps=args.steps, cfg_scale=6.0)

    base_s = timed(lambda: mixer.generate(req), args.repeats)
    rows = [("base model alone", "-", base_s)]
    for n in (1, 3, 5):
        mixer.set_blend([(f, 0.5, True) for f in files[:n]])
        for mode in ("fused", "unfused"):
            rows.append((f"{n} adapter{'s' * (n > 1)}", mode, timed(lambda m=mode: mixer.generate(req, m),
                                                                     args.repeats)))

    reads = []
    real_open = lora_io.safe_open
    lora_io.safe_open = lambda *a, **k: reads.append(a) or real_open(*a, **k)
    weights = iter([0.1 * i - 1 for i in range(100)])

    def change_and_preview():
        mixer.set_weight(next(iter(mixer.slots)), next(weights))
        mixer.generate(req)

    change_s = timed(change_and_preview, args.repeats)
    lora_io.safe_open = real_open

    device = "cuda" if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nmodel: {base if args.base else f'random SD-shaped, {args.size}px, UNet {args.channels}'}; "
          f"{args.steps} steps, CFG on; rank {args.rank} attention LoRAs; {device}; "
          f"median of {args.repeats}\n")
    print("| adapters | mode | s / preview | × base |")
    print("| --- | --- | ---: | ---: |")
    for label, mode, s in rows:
        print(f"| {label} | {mode} | {s:.3f} | {s / base_s:.2f} |")
    print(f"\nweight change -> next preview (5 adapters, auto mode): {change_s:.3f} s "
          f"({change_s / base_s:.2f} × base), files read: {len(reads)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
