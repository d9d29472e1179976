"""What glibc's allocator costs a preview made in a worker thread (as the app makes them), with and without
`loramix.core.allocator.tune_allocator()`, and the memory left after the model is dropped.

    python bench/allocator.py --base /tmp/sd15 --adapters 5 --rounds 2

Each round runs two child processes, one with the allocator tuned and one with `LORAMIX_ALLOCATOR=default`,
in alternating order. A child loads `--base` in a Mixer (`--originals memory`: held copies, as for a single-file
base; `--precision`), makes `--adapters` random LoRAs (bench/mix_hooks.py), then in one worker thread times
`--repeats` previews of each case (the base alone; the blend, unchanged; a weight change + preview), 1 DDIM step
with CFG at `--size` px to the latents: process user and system CPU seconds and minor page faults (getrusage,
all threads), medians. Then it drops the mixer and reports the RSS before and after `give_back_memory()`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(args) -> dict:
    from loramix.core.allocator import give_back_memory, tune_allocator

    tuned = tune_allocator()
    import gc

    import psutil

    result = measure(args)  # the model, adapters and pipeline are dropped when it returns
    gc.collect()
    rss = psutil.Process().memory_info().rss
    give_back_memory()
    result["rss"] = [rss / 2 ** 20, psutil.Process().memory_info().rss / 2 ** 20]
    result["tuned"] = tuned
    return result


def measure(args) -> dict:
    from bench.mix_hooks import preview_setup
    from bench.mix_real_shapes import mixer_preview, pipe_preview

    setup = argparse.Namespace(base=args.base, threads=1, counts=str(args.adapters), size=args.size, steps=1,
                               precision=args.precision)
    mixer, _, _, _, files, pipe, req = preview_setup(setup, args.originals, "allocator-")
    mixer.set_blend([(f, 0.5, True) for f in files[:args.adapters]])
    slot, weights = next(iter(mixer.slots)), iter([0.3, 0.7] * 100)
    pool = ThreadPoolExecutor(1)

    def usage():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime, r.ru_stime, r.ru_minflt

    def change():
        mixer.set_weight(slot, next(weights))
        mixer_preview(mixer, pipe, req, "auto")

    cases = {"base": lambda: pipe_preview(pipe, req), "blend": lambda: mixer_preview(mixer, pipe, req, "auto"),
             "weight change + preview": change}
    out = {}
    pool.submit(cases["blend"]).result()  # warm-up
    for r in range(args.repeats):
        for name in (list(cases) if r % 2 == 0 else list(cases)[::-1]):
            if name == "base":
                pool.submit(mixer.restore).result()
            else:
                pool.submit(cases["blend"]).result()  # the blend applied, untimed
            u0, s0, f0 = usage()
            pool.submit(cases[name]).result()
            u1, s1, f1 = usage()
            out.setdefault(name, []).append((u1 - u0, s1 - s0, f1 - f0))
    pool.shutdown()
    mixer.release()
    return {name: [statistics.median(x[i] for x in v) for i in range(3)] for name, v in out.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="a diffusers folder (bench.real_shapes.save_model)")
    p.add_argument("--adapters", type=int, default=5)
    p.add_argument("--originals", default="memory", choices=["memory", "file"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | {"OMP_NUM_THREADS": "1"}
    runs: dict = {"tuned": [], "default": []}
    for r in range(args.rounds):
        for way in (("tuned", "default") if r % 2 == 0 else ("default", "tuned")):
            extra = {"LORAMIX_ALLOCATOR": "default"} if way == "default" else {}
            cmd = [sys.executable, __file__, "--child", *(argv if argv is not None else sys.argv[1:])]
            done = subprocess.run(cmd, env=env | extra, capture_output=True, text=True, check=True, cwd=ROOT)
            runs[way].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(way, runs[way][-1], flush=True)
    print(f"\n{args.base}, {args.adapters} adapters, originals {args.originals}, {args.precision}, {args.size} px, "
          f"1 DDIM step with CFG, 1 thread, a worker thread; medians of {args.repeats} per child, "
          f"{args.rounds} child(ren) each\n")
    print("| allocator | case | user CPU s | system CPU s | minor faults | total CPU s |\n| --- | --- | ---: | ---: | ---: | ---: |")
    for way, results in runs.items():
        for case in ("base", "blend", "weight change + preview"):
            u, s, f = (statistics.median(res[case][i] for res in results) for i in range(3))
            print(f"| {way} | {case} | {u:.2f} | {s:.2f} | {f:,.0f} | {u + s:.2f} |")
    for way, results in runs.items():
        before, after = (statistics.median(res["rss"][i] for res in results) for i in range(2))
        print(f"\n{way}: RSS after dropping the model {before:,.0f} MiB, after give_back_memory() {after:,.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
