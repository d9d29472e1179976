"""Previews with N adapters in each way the mixer can apply a blend, as x the base preview.

    python bench/mix_preview_modes.py --base /tmp/sd15 --counts 1,5,10 --repeats 3

`--base` is a diffusers folder (build one offline with `bench.real_shapes.save_model("sd15", PATH)`).
Each adapter is a random kohya LoRA, rank 16, alpha 8, on kohya's default layers (every Linear of the
UNet's transformer blocks, the text encoder's attention and MLP) plus LoCon on every ResNet 3x3 conv
(`bench/mix_hooks.py`). The ways, for each N:

* hooks: `mode="unfused"`, stacked hooks on every adapted module, nothing held;
* auto, originals in memory: `mode="auto"` with `fuse_budget` 0.10, per module (UNet first, highest
  hook cost per byte first), host copies of the fused modules' originals held;
* auto, originals from file: `mode="auto"` with `originals="file"`: originals read back from the
  base's safetensors files, nothing held, so only the cost model decides what is fused.

Per way: an unchanged-blend preview, and a weight change (the first adapter's slider) + preview. A
preview is `--steps` DDIM steps (default 1) with CFG at `--size` px to the latents (no VAE decode). Times are this
process's CPU seconds (`resource.getrusage` via `time.process_time`), medians over rounds; each round
runs the ways in turn, every other round in reverse order. "Held" is what the way keeps beside the
model and the adapters (`Mixer.held_bytes()`: originals and stacks), as % of the model's parameters.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.mix_hooks import preview_setup  # noqa: E402
from bench.mix_real_shapes import mixer_preview, pipe_preview, trim  # noqa: E402

GiB = 1024 ** 3


def cpu_s(fn) -> float:
    c0 = time.process_time()
    fn()
    return time.process_time() - c0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="a diffusers folder (SD 1.5 shapes: bench.real_shapes.save_model)")
    p.add_argument("--counts", default="1,5,10")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=1, help="DDIM steps per preview, with CFG (the Mix tab's slider "
                   "previews: 8)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                   help="what the model is held and previews computed in, the base's too (Mixer.from_base)")
    p.add_argument("--ways", default="", help="comma list of the ways to run beside the base: hooks, auto, auto-file "
                   "(default: all)")
    args = p.parse_args(argv)
    mixer, model_bytes, targets, counts, files, pipe, req = preview_setup(args, "file", "mixmodes-")
    on_disk = mixer.file_originals
    adapted_bytes = sum(m.weight.numel() * m.weight.element_size() for m in set(targets.values()))
    print(f"{args.base}: {model_bytes / GiB:.2f} GiB of parameters; {len(targets)} adapted layers per adapter "
          f"({adapted_bytes / GiB:.2f} GiB of weights, {100 * adapted_bytes / model_bytes:.0f}% of the model); "
          f"{args.size} px, {args.steps} DDIM step(s) with CFG, {args.threads} thread(s), {mixer.dtype}", flush=True)

    def into(originals):
        """Put every base weight back and drop what is held, then read originals from `originals`."""
        def run():
            mixer.release()
            mixer.file_originals = originals
        return run

    ways = {"hooks": (None, "unfused"), "auto, originals in memory": (None, "auto"),
            "auto, originals from file": (on_disk, "auto")}
    if args.ways:
        ways = {k: v for k, v in ways.items() if k.split(",")[0] + ("-file" if "file" in k else "")
                in args.ways.split(",")}
    rows = []
    for n in counts:
        mixer.file_originals = on_disk
        mixer.release()
        mixer.set_blend([(f, 0.5, True) for f in files[:n]])
        slot = next(iter(mixer.slots))
        weights = iter([0.3, 0.7] * 100)
        times = {"base": []}
        held, picked = {}, {}
        for r in range(args.repeats):
            order = ["base", *ways] if r % 2 == 0 else ["base", *ways][::-1]
            for way in order:
                if way == "base":
                    into(on_disk)()
                    times["base"].append(cpu_s(lambda: pipe_preview(pipe, req)))
                    continue
                originals, mode = ways[way]
                into(originals)()
                with mixer.applied(mode, mixer.unet_calls_of(req)) as how:
                    # untimed: the blend applied once, as after a first preview
                    picked[way] = how
                times.setdefault(way, []).append(cpu_s(lambda mode=mode: mixer_preview(mixer, pipe, req, mode)))
                held[way] = mixer.held_bytes()

                def change(mode=mode, slot=slot, weights=weights):
                    mixer.set_weight(slot, next(weights))
                    mixer_preview(mixer, pipe, req, mode)
                times.setdefault(f"{way}: weight change + preview", []).append(cpu_s(change))
        into(on_disk)()
        trim()
        base = statistics.median(times["base"])
        for k, v in times.items():
            way = k.split(":")[0]
            extra = f"{held[way] / GiB:.2f} ({100 * held[way] / model_bytes:.1f}%)" if way in held else ""
            rows.append(f"| {n} | {k} | {picked.get(way, '')} | {statistics.median(v):.2f} | "
                        f"{statistics.median(v) / base:.3f} | {extra} |")
            print(rows[-1], f"runs {[round(t, 2) for t in v]}", flush=True)
    print("\n| adapters | case | auto picked | CPU s / preview (median) | x base | held, GiB (% of model) |\n"
          "| ---: | --- | --- | ---: | ---: | ---: |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
