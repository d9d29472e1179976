"""An exponential moving average (EMA) of the adapter's trained weights, kept beside them during a run.

After each optimizer step whose weights are finite, ema <- ema + (1 - d) * (weights - ema), where
d = min(train.ema_decay, k / (9 + k)) at the k-th step: diffusers' `EMAModel` warm-up, so a short run's
average is not dominated by the zero-initialised start. The average is fp32, on the weights' device or
on the CPU (`train.ema_on_cpu`); it is saved in the training state, so a resumed run continues it bit
for bit. `applied()` swaps it into the live weights (to save a file, draw samples or validate) and
puts the raw weights back exactly.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from loramix.core.errors import TrainingError


class AdapterEMA:
    def __init__(self, params: list[torch.Tensor], decay: float, on_cpu: bool = False):
        self.decay = decay
        with torch.no_grad():
            self.shadow = [p.detach().to("cpu" if on_cpu else p.device, torch.float32, copy=True) for p in params]

    def decay_at(self, step: int) -> float:
        """The decay used by the update after optimizer step `step` (1-based)."""
        return min(self.decay, step / (9 + step))

    @torch.no_grad()
    def update(self, params: list[torch.Tensor], step: int) -> None:
        weight = 1.0 - self.decay_at(step)
        for shadow, p in zip(self.shadow, params):
            shadow.lerp_(p.detach().to(shadow.device, torch.float32), weight)

    @contextmanager
    def applied(self, params: list[torch.Tensor]):
        """The live weights hold the average inside the block; the raw weights, bit for bit, after it."""
        with torch.no_grad():
            raw = [p.detach().clone() for p in params]
            for p, shadow in zip(params, self.shadow):
                p.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, r in zip(params, raw):
                    p.copy_(r)

    def state(self) -> dict[str, torch.Tensor]:
        return {str(i): s for i, s in enumerate(self.shadow)}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        if len(tensors) != len(self.shadow) or any(tensors[str(i)].shape != s.shape
                                                   for i, s in enumerate(self.shadow)):
            raise TrainingError("train.resume_from: the state's EMA weights do not fit this network; resume with "
                                "the network settings it was trained with.")
        with torch.no_grad():
            for i, shadow in enumerate(self.shadow):
                shadow.copy_(tensors[str(i)])
