"""Unfused previews with N adapters at real shapes: stacked hooks against the per-adapter hooks and fusing.

    python bench/mix_hooks.py --base /tmp/sd15 --counts 1,5,10 --repeats 3      # a saved SD 1.5 folder
    python bench/mix_hooks.py --micro                                           # one Linear, no model

`--base` is a diffusers folder (build one offline with `bench.real_shapes.save_model("sd15", PATH)`).
Each adapter is a random kohya LoRA, rank 16, alpha 8, on kohya's default layers (every Linear of the
UNet's transformer blocks and the text encoder's attention and MLP) plus LoCon on every ResNet 3x3
conv of the UNet. Per count N the cases run in turns, each round in the opposite order: the base
alone, the stacked hooks (`Mixer`'s unfused path), the per-adapter hooks it replaced (kept here as
`per_adapter_hooked`), the fused weights (an unchanged blend), and a weight change followed by a
stacked-hook preview. A preview is 1 DDIM step with CFG to the latents (no VAE decode). Times are
this process's CPU seconds, medians over the rounds; x base is over the base preview's median of
the same N.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import tempfile
import time
import types
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.mix_real_shapes import mixer_preview, pipe_preview, trim  # noqa: E402
from bench.real_shapes import PeakRSS, kohya_targets  # noqa: E402
from loramix.core.quiet import quiet_libraries  # noqa: E402
from loramix.formats.lora_io import LoraAdapter, LoraLayer, module_table, save_lora  # noqa: E402
from loramix.mix.mixer import Mixer  # noqa: E402
from loramix.mix.request import PreviewRequest

GiB = 1024 ** 3


def locon_targets(components) -> dict[str, torch.nn.Module]:
    """kohya name -> module for every 3x3 conv of the UNet's ResNet blocks (LoCon's extra layers)."""
    family, unet = components.family, components.unet
    modules = dict(unet.named_modules())
    table = module_table(unet, family.unet_prefix, partial(family.kohya_path, family.unet_prefix, model=unet))
    return {name: modules[path] for name, path in table.items()
            if ".resnets." in f".{path}" and path.endswith((".conv1", ".conv2"))}


def random_adapter(targets: dict, path: Path, seed: int, rank: int = 16) -> Path:
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for name, m in targets.items():
        w = m.weight
        fan_in = w[0].numel()
        down = torch.randn(rank, *w.shape[1:], generator=g) / math.sqrt(fan_in)
        up = torch.randn(w.shape[0], rank, *([1, 1] if w.dim() == 4 else []), generator=g) * 0.02
        layers[name] = LoraLayer(down, up, rank / 2)
    return save_lora(path, LoraAdapter(layers, {"ss_network_module": "networks.lora"}), "fp16")


@contextlib.contextmanager
def per_adapter_hooked(self, active):
    """The unfused path before stacking: per layer up(down(x)) * scale * coefficient, summed, added."""
    per_module: dict = {}
    for layer, coef in active:
        per_module.setdefault(layer.module, []).append((layer, coef))

    def hook(module, args, output):
        return output + sum(layer.branch(args[0]) * coef for layer, coef in per_module[module])

    handles = [m.register_forward_hook(hook) for m in per_module]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def cpu_s(fn) -> float:
    c0 = time.process_time()
    fn()
    return time.process_time() - c0


def preview_setup(args, originals: str, prefix: str):
    """What the preview benches share: the base of `args.base` in a Mixer (torch on `args.threads`), the
    adapted layers (kohya's default Linear layers and LoCon on every 3x3 conv), max(`args.counts`) random
    adapters on them in a temporary folder, the pipeline and a preview request (`args.steps`, default 1) at
    `args.size` px, the model held and computing in `args.precision` (default fp32).
    Returns (mixer, model bytes, targets, counts, adapter files, pipeline, request)."""
    quiet_libraries()
    torch.set_num_threads(args.threads)
    mixer = Mixer.from_base(args.base, originals=originals, precision=getattr(args, "precision", "fp32"))
    comps = mixer.components
    model_bytes = sum(p.numel() * p.element_size() for m in comps.models() for p in m.parameters())
    targets = {**kohya_targets(comps), **locon_targets(comps)}
    work = Path(tempfile.mkdtemp(prefix=prefix))
    counts = [int(c) for c in args.counts.split(",")]
    files = [random_adapter(targets, work / f"lora{i}.safetensors", i) for i in range(max(counts))]
    req = PreviewRequest("a red circle on the left", seed=1, steps=getattr(args, "steps", 1), cfg_scale=6.0,
                         width=args.size, height=args.size)
    return mixer, model_bytes, targets, counts, files, mixer.pipeline(), req


def run_model(args) -> int:
    mixer, model_bytes, targets, counts, files, pipe, req = preview_setup(args, args.originals, "mixhooks-")
    comps = mixer.components
    print(f"{args.base}: {model_bytes / GiB:.2f} GiB of parameters; {len(targets)} adapted layers per adapter "
          f"({len(targets) - len(locon_targets(comps))} Linear, {len(locon_targets(comps))} LoCon 3x3); "
          f"{args.size} px, 1 DDIM step with CFG, {args.threads} thread(s), originals: {args.originals}", flush=True)
    stacked_hooked = Mixer._hooked.__get__(mixer)
    old_hooked = types.MethodType(per_adapter_hooked, mixer)
    rows = []
    for n in counts:
        mixer.set_blend([(f, 0.5, True) for f in files[:n]])
        weights = iter([0.3, 0.7] * 50)

        def preview(mode, hooked=stacked_hooked):
            def run():
                mixer._hooked = hooked
                mixer_preview(mixer, pipe, req, mode)
            return run

        def change(weights=weights):
            mixer.set_weight(next(iter(mixer.slots)), next(weights))
            mixer_preview(mixer, pipe, req, "unfused")

        def change_fused(weights=weights):
            mixer.set_weight(next(iter(mixer.slots)), next(weights))
            mixer_preview(mixer, pipe, req, "fused")

        def fuse():
            with mixer.applied("fused"):
                pass

        def stack():  # fused previews free the stacks: build them again, off the clock
            mixer._hooked = stacked_hooked
            with mixer.applied("unfused"):
                pass

        # case -> (untimed setup, timed preview); putting fused weights back is a mode switch, not timed
        cases = {"base": (mixer.restore, lambda: pipe_preview(pipe, req)),
                 "stacked hooks": (stack, preview("unfused")),
                 "per-adapter hooks (before)": (mixer.restore, preview("unfused", old_hooked)),
                 "fused (unchanged blend)": (fuse, preview("fused")),
                 "weight change + stacked preview": (stack, change),
                 "weight change + fused preview": (fuse, change_fused)}
        if args.cases:
            cases = {k: v for k, v in cases.items() if k in args.cases.split(",")}
        for setup, fn in cases.values():  # warm-up: the first fuse copies the originals, the first stack is built
            setup and setup()
            fn()
        times = {k: [] for k in cases}
        for r in range(args.repeats):
            for k in (list(cases) if r % 2 == 0 else list(cases)[::-1]):
                setup, fn = cases[k]
                setup and setup()
                times[k].append(cpu_s(fn))
        mixer.restore()
        held_originals = mixer.held_bytes()
        mixer.release()
        trim()
        mixer._hooked = stacked_hooked
        with PeakRSS() as peak:
            cpu_s(preview("unfused"))
        held = mixer.held_bytes()  # originals released above: the stacks alone
        base = statistics.median(times["base"])
        for k, v in times.items():
            rows.append(f"| {n} | {k} | {statistics.median(v):.2f} | {statistics.median(v) / base:.3f} |")
            print(rows[-1], f"runs {[round(t, 2) for t in v]}", flush=True)
        print(f"N={n}: fused originals held {held_originals / GiB:.2f} GiB; stacks hold {held / GiB:.3f} GiB ({100 * held / model_bytes:.1f}% of the model) beyond the "
              f"adapters' tensors; a stacked preview's peak RSS +{(peak.peak - peak.start) / GiB:.2f} GiB", flush=True)
        del mixer._hooked
    print("\n| adapters | case | CPU s / preview (median) | x base |\n| ---: | --- | ---: | ---: |")
    print("\n".join(rows))
    return 0


def run_micro(args) -> int:
    """One Linear of width 320 over 1,024 tokens (SD 1.5's first block at 256 px): x a plain Linear."""
    torch.set_num_threads(args.threads)
    width, tokens, rank = 320, 1024, 16
    lin = torch.nn.Linear(width, width).requires_grad_(False)
    x = torch.randn(2, tokens, width)
    print("| adapters | per-adapter hooks | stacked, out + up(down(x)) | stacked, addmm into the output |")
    print("| ---: | ---: | ---: | ---: |")
    for n in (1, 5, 10):
        med = micro_row(lin, x, n, rank, args.repeats * 10)
        print(f"| {n} | " + " | ".join(f"{m / med[0]:.2f}x" for m in med[1:]) + " |")
    return 0


def micro_row(lin, x, n, rank, rounds) -> list[float]:
    """Median CPU s of a plain Linear, then of it with n adapters: per adapter, stacked + add, stacked addmm."""
    width = lin.in_features
    downs = [torch.randn(rank, width) for _ in range(n)]
    ups = [torch.randn(width, rank) for _ in range(n)]
    down, up = torch.cat(downs), torch.cat([u * 0.25 for u in ups], 1)

    def per_adapter():
        o = lin(x)
        return o + sum(F.linear(F.linear(x, d), u) * 0.5 * 0.5 for d, u in zip(downs, ups))

    def stacked_add():
        o = lin(x)
        return o + F.linear(F.linear(x, down), up)

    def stacked_addmm():
        o = lin(x)
        h = F.linear(x, down).reshape(-1, down.shape[0])
        return o.reshape(-1, width).addmm_(h, up.t()).view(o.shape)
    fns = [lambda: lin(x), per_adapter, stacked_add, stacked_addmm]
    times = [[] for _ in fns]
    with torch.no_grad():
        for r in range(rounds):
            for i in (range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))):
                times[i].append(cpu_s(fns[i]))
    return [statistics.median(t) for t in times]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="", help="a diffusers folder (SD 1.5 shapes: bench.real_shapes.save_model)")
    p.add_argument("--counts", default="1,5,10")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--originals", choices=["memory", "file"], default="memory",
                   help="fused cases: originals held in memory, or read back from the base's files")
    p.add_argument("--cases", default="", help="comma list of the case names to run (default: all)")
    p.add_argument("--micro", action="store_true", help="one Linear layer only, x a plain Linear")
    args = p.parse_args(argv)
    return run_micro(args) if args.micro or not args.base else run_model(args)


if __name__ == "__main__":
    sys.exit(main())
