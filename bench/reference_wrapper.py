"""Run diffusers' `train_text_to_image_lora.py` unedited, with its optimizer steps timed.

    python bench/reference_wrapper.py --timings steps.json [--threads N] SCRIPT [script arguments...]

The script refuses to run unless diffusers is at least the dev version it was written against
(`check_min_version`); that check is made a no-op here before the script is run with runpy, so the
script file itself stays a pristine copy. The script is never part of this repository: pass a path
to a local copy (see docs/benchmarks.md for where it comes from).
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_timer import StepTimer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timings", required=True, help="JSON file for the step times and peak memory.")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default).")
    parser.add_argument("script", help="Path to a local copy of train_text_to_image_lora.py.")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="Arguments passed on to the script.")
    args = parser.parse_args()

    import diffusers.utils
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    diffusers.utils.check_min_version = lambda *_a, **_k: None  # the script imports it by name from here
    timer = StepTimer().install()
    sys.argv = [args.script, *args.script_args]
    try:
        runpy.run_path(args.script, run_name="__main__")
    finally:
        timer.write(args.timings)


if __name__ == "__main__":
    main()
