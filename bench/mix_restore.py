"""Putting fused layers back: originals held in memory against re-reading them from the base's safetensors files.

    python bench/mix_restore.py --base /tmp/sd15 --repeats 5

`--base` is a diffusers folder with safetensors weights (build one offline with
`bench.real_shapes.save_model("sd15", PATH)`). The adapted set is kohya's default LoRA layers
(bench.real_shapes.kohya_targets: SD 1.5, 264 layers, 1.31 GiB in fp32). Cases, alternated:

* held: the mixer's way today: a copy of every adapted weight kept on the host; restoring is a copy_;
* mmap: nothing kept; each weight is read back through `safetensors.safe_open` (a memory map of the
  file) and copied in: `get_tensor` per layer.

It reports the CPU seconds to restore all layers, the resident memory each way keeps between
previews, the one-time cost of taking the copies, and checks that both give the loaded weights back
bit for bit. The file pages are in the page cache after the model was loaded (a cold read would
add the disk's time; caches were not dropped on this shared machine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.mix_real_shapes import trim  # noqa: E402
from bench.real_shapes import kohya_targets  # noqa: E402
from loramix.core.quiet import quiet_libraries  # noqa: E402
from loramix.formats.base_model import load_base_model  # noqa: E402

GiB = 1024 ** 3
FILES = {"unet": "unet/diffusion_pytorch_model.safetensors", "text_encoder": "text_encoder/model.safetensors"}


def file_keys(components, base: Path, modules) -> dict:
    """module -> (file, key) for every module whose weight is stored under its parameter name."""
    where = {}
    for part, rel in FILES.items():
        model = getattr(components, part)
        names = {m: n for n, m in model.named_modules()}
        for m in modules:
            if m in names:
                where[m] = (base / rel, f"{names[m]}.weight")
    return where


def cpu(fn) -> float:
    c0 = time.process_time()
    fn()
    return time.process_time() - c0


def main(argv=None) -> int:
    from safetensors import safe_open

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    quiet_libraries()
    torch.set_num_threads(args.threads)
    base = Path(args.base)
    c = load_base_model(str(base))
    for m in c.models():
        m.float().eval().requires_grad_(False)
    modules = list(dict.fromkeys(kohya_targets(c).values()))
    where = file_keys(c, base, modules)
    missing = [m for m in modules if m not in where]
    nbytes = sum(m.weight.numel() * m.weight.element_size() for m in modules)
    model_bytes = sum(p.numel() * p.element_size() for m in c.models() for p in m.parameters())
    print(f"{base}: {len(modules)} adapted layers, {nbytes / GiB:.2f} GiB ({100 * nbytes / model_bytes:.0f}% of "
          f"the {model_bytes / GiB:.2f} GiB model); {len(missing)} without a file key", flush=True)
    loaded = {m: m.weight.detach().clone() for m in modules}  # the reference, for the bit check only
    start = trim()
    held = {}
    take_s = cpu(lambda: held.update({m: m.weight.detach().to("cpu", copy=True) for m in modules}))
    held_rss = trim() - start
    handles = {path: safe_open(str(path), framework="pt") for path in {f for f, _ in where.values()}}

    def scramble():
        with torch.no_grad():
            for m in modules:
                m.weight.add_(1.0)

    def from_memory():
        with torch.no_grad():
            for m in modules:
                m.weight.copy_(held[m])

    def from_file():
        with torch.no_grad():
            for m in modules:
                path, key = where[m]
                m.weight.copy_(handles[path].get_tensor(key).to(m.weight.dtype))

    times = {"held": [], "mmap": []}
    exact = {}
    for r in range(args.repeats):
        for name, fn in ((("held", from_memory), ("mmap", from_file)) if r % 2 == 0 else
                         (("mmap", from_file), ("held", from_memory))):
            scramble()
            times[name].append(cpu(fn))
            exact[name] = all(torch.equal(m.weight, loaded[m]) for m in modules)
    held.clear()
    after_drop = trim()
    from_file()
    mmap_rss = trim() - after_drop
    print("\n| originals | kept resident between previews | one-time copy, CPU s | restore all layers, CPU s (median) "
          "| bit-identical |")
    print("| --- | ---: | ---: | ---: | --- |")
    print(f"| held in memory | {held_rss / GiB:.2f} GiB ({100 * held_rss / model_bytes:.0f}%) | {take_s:.2f} | "
          f"{statistics.median(times['held']):.2f} | {exact['held']} |")
    print(f"| re-read from the safetensors file (mmap) | {mmap_rss / GiB:.2f} GiB | 0 | "
          f"{statistics.median(times['mmap']):.2f} | {exact['mmap']} |")
    print(f"\nruns: held {[round(t, 2) for t in times['held']]}, mmap {[round(t, 2) for t in times['mmap']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
