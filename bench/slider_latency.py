"""Time from a slider release to the preview image, as the Mix tab draws it (issue 15 §1).

    python bench/slider_latency.py                       # the embedded model, 2 random adapters
    python bench/slider_latency.py --draft 8 --repeats 7 --threads 2
    python bench/slider_latency.py --arch sd15 --size 256 --repeats 3   # random SD 1.5 built offline

Runs the Mix tab's own preview handler (`webui.mix_tab.Previewer`) without a browser: each "release"
sets one adapter's weight and draws the blend at the draft step count; the base image (all adapters
off) comes from the cache after the first draw. Reports medians of: the first preview (base and blend
drawn), a release (blend only), and a Generate at full steps. The browser and network add to this;
`tests/webui/test_browser.py` checks the journey end to end, not its time.
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

from bench.mix_latency import random_adapter  # noqa: E402
from loramix.core.quiet import quiet_libraries  # noqa: E402
from webui.jobs import JobManager  # noqa: E402
from webui.mix_tab import MixValues, Previewer  # noqa: E402
from webui.state import AppState  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--draft", type=int, default=8, help="preview steps for a slider release")
    p.add_argument("--steps", type=int, default=20, help="steps of Generate")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--arch", choices=["embedded", "sd15"], default="embedded",
                   help="sd15: a random-weight SD 1.5 from loramix/configs, built once into /tmp (about 4 GB)")
    p.add_argument("--size", type=int, default=0, help="image side (0 = the model's own)")
    args = p.parse_args(argv)
    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="loramix-slider-"))
    state = AppState.create(root / "outputs", jobs=JobManager(root / "jobs.db", lambda *a: None))
    base = ""
    if args.arch == "sd15":
        from bench.real_shapes import save_model

        base = str(save_model("sd15", Path(tempfile.gettempdir()) / "loramix-real-shapes" / "sd15-model"))
    mixer = state.mixer(base)
    files = [random_adapter(mixer, state.lora_dir / f"a{i}.safetensors", i, 16) for i in range(2)]
    previewer = Previewer(state)

    def values(weight: float, seed: int) -> MixValues:
        return MixValues(base, [(str(files[0]), weight, True, None), (str(files[1]), 0.5, True, None)],
                         "a large red circle on the left, white background", "", seed, args.steps, 6.0, args.size,
                         "ddim")

    first, release, generate = [], [], []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        previewer.preview(values(1.0, 100 + r), steps=args.draft, ticket=previewer.ticket())  # new seed: base too
        first.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        previewer.preview(values(0.25 * (r % 4) - 0.5, 100 + r), steps=args.draft, ticket=previewer.ticket())
        release.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        previewer.preview(values(1.5, 100 + r), ticket=previewer.ticket())
        generate.append(time.perf_counter() - t0)
    med = statistics.median
    print(f"{args.arch} model, 2 adapters, {args.size or 'native'} px, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print("| case | seconds |\n| --- | --- |")
    print(f"| first preview of a prompt/seed ({args.draft} steps, base + blend) | {med(first):.3f} |")
    print(f"| slider release ({args.draft} steps, blend only, base cached) | {med(release):.3f} |")
    print(f"| Generate ({args.steps} steps, blend + base) | {med(generate):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
