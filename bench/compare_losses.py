"""Two training runs' loss curves side by side: do they learn alike? (e.g. fp32 against bf16)

    python bench/compare_losses.py RUN_A RUN_B [--windows 1,26,51,101,201,301]

RUN_A and RUN_B are run folders (or their log.jsonl files), as `loramix train` or
`bench/time_to_style.py` write them. Prints, over the steps both logged: the Pearson correlation of the
per-step losses, the mean and largest |difference|, and the mean loss of each run in step windows
(a window starts at each value of --windows and ends before the next). One thread and the same seed
give the same batches and noise in both runs, so the per-step losses are comparable one to one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def losses(path: Path) -> dict[int, float]:
    log = path / "log.jsonl" if path.is_dir() else path
    rows = (json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip())
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def compare(a: dict[int, float], b: dict[int, float], starts: list[int]) -> str:
    steps = sorted(set(a) & set(b))
    if len(steps) < 2:
        raise SystemExit("The runs share fewer than two logged steps.")
    xa, xb = [a[s] for s in steps], [b[s] for s in steps]
    diffs = [abs(x - y) for x, y in zip(xa, xb)]
    lines = [f"steps compared: {len(steps)} ({steps[0]}..{steps[-1]}); correlation "
             f"{statistics.correlation(xa, xb):.4f}; mean |diff| {statistics.fmean(diffs):.2e}, "
             f"largest {max(diffs):.2e}", "", "| steps | mean loss A | mean loss B |", "| --- | ---: | ---: |"]
    bounds = [s for s in starts if s <= steps[-1]] + [steps[-1] + 1]
    for lo, hi in zip(bounds, bounds[1:]):
        window = [s for s in steps if lo <= s < hi]
        if window:
            lines.append(f"| {lo}–{hi - 1} | {statistics.fmean(a[s] for s in window):.4f} | "
                         f"{statistics.fmean(b[s] for s in window):.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--windows", default="1,26,51,101,201,301", help="first step of each window")
    args = p.parse_args(argv)
    print(f"A: {args.run_a}\nB: {args.run_b}")
    print(compare(losses(args.run_a), losses(args.run_b), [int(x) for x in args.windows.split(",")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
