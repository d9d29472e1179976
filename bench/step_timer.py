"""Per-step wall times of any torch training loop, taken at every optimizer.step() through a global hook.

The same hook times loramix and the diffusers reference script, so both are measured the same way:
the time between two consecutive optimizer steps is one whole training iteration (data, forward,
backward, clipping, optimizer, logging). Nothing in either trainer is edited.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path


class StepTimer:
    """Records `time.perf_counter()` after every optimizer step of the process."""

    def __init__(self) -> None:
        self.step_ends: list[float] = []
        self.step_cpu_ends: list[float] = []  # process CPU time (all threads) at the same moments
        self.step_rss: list[int] = []  # resident bytes at the same moments (between steps)
        self.first_step_wall: float | None = None

    def install(self) -> StepTimer:
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._cuda = torch.cuda.is_available()
        register_optimizer_step_post_hook(self._after_step)
        return self

    def _after_step(self, _optimizer, _args, _kwargs) -> None:
        if self._cuda:
            import torch

            torch.cuda.synchronize()  # a step is over when its kernels are, not when they are queued
        self.step_ends.append(time.perf_counter())
        self.step_cpu_ends.append(time.process_time())
        with open("/proc/self/statm") as f:
            self.step_rss.append(int(f.read().split()[1]) * resource.getpagesize())
        if self.first_step_wall is None:
            self.first_step_wall = time.time()

    def write(self, path: str | Path) -> None:
        """Write the step end times, the peak VRAM (CUDA only) and the process's own peak RSS as JSON."""
        import torch

        report = {
            "step_ends": self.step_ends,
            "step_cpu_ends": self.step_cpu_ends,
            "step_rss": self.step_rss,
            "first_step_wall": self.first_step_wall,
            "end_wall": time.time(),
            "torch_threads": torch.get_num_threads(),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "peak_vram_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
            "self_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }
        Path(path).write_text(json.dumps(report), encoding="utf-8")
