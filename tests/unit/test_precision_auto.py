"""train.mixed_precision=auto: bf16 where the CPU multiplies bf16 natively, fp32 elsewhere."""

from __future__ import annotations

import pytest

from loramix.core import cpu_features
from trainers.speed import resolve_precision


@pytest.mark.parametrize("native, cuda, want", [(True, False, "bf16"), (False, False, "no"), (True, True, "no")])
def test_auto_follows_the_cpu(monkeypatch, native, cuda, want):
    monkeypatch.setattr(cpu_features, "native_bf16", lambda: native)
    monkeypatch.setattr("torch.cuda.is_available", lambda: cuda)
    assert resolve_precision("auto") == want
    for given in ("no", "fp16", "bf16"):
        assert resolve_precision(given) == given
