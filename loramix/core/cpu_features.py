"""What this CPU computes natively: bf16 matrix products (AVX-512-bf16 or AMX) or not."""

from __future__ import annotations

import functools


@functools.cache
def native_bf16() -> bool:
    """Does this CPU multiply bf16 matrices in hardware (AVX-512-bf16 or AMX tiles), as oneDNN uses them?

    Without either, torch emulates bf16 on a CPU and a bf16 product is slower than fp32's."""
    import torch

    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        try:
            if getattr(cpu, probe)():
                return True
        except (AttributeError, RuntimeError):
            pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags
