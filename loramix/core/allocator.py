"""glibc's allocator set for a process that makes the same large temporaries again and again (previews, steps).

By default glibc gives every freed block over its mmap threshold (128 KiB, rising to at most 32 MiB) straight back
to the system, and a thread other than the main one allocates from an arena of at most 64 MiB heaps, so a block
larger than that is always mapped anew. The app computes previews and trains in worker threads: each preview
mapped its activations afresh and faulted every page in again. Measured at SD 1.5 shapes (docs/benchmarks.md,
"The allocator"): a 1-step preview in a worker thread made ~470,000 minor page faults and spent 0.8 CPU-s in the
kernel; with `tune_allocator()` none, and the preview cost 14% less CPU.

`tune_allocator()` puts every thread on the main arena (M_ARENA_MAX 1: no 64 MiB heap limit), serves blocks up to
1 GiB from it (M_MMAP_THRESHOLD) and keeps up to 2 GiB of freed memory at its top (M_TRIM_THRESHOLD), so freed
activations are reused. What is kept is given back by `give_back_memory()` (malloc_trim), which the app calls when
a job ends and the mixer after a bake's fp32 twin, so memory does not stay at a job's peak.

No library offers this (PyTorch leaves the host allocator to the C library; jemalloc/tcmalloc would be a native
dependency to preload), so it is a few `mallopt` calls here. It applies on Linux with glibc only, and not when
the environment already sets a MALLOC_ variable (the person's own setting wins) or LORAMIX_ALLOCATOR=default.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, 1 << 30), (M_TRIM_THRESHOLD, 2 << 30))


@functools.cache
def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def tune_allocator(environ=os.environ) -> bool:
    """Set glibc's allocator as the module docstring says; call it first thing, before threads start. Returns
    whether it did (False: not glibc, or the environment chose its own allocator settings)."""
    if environ.get("LORAMIX_ALLOCATOR", "") == "default" or any(k.startswith("MALLOC_") for k in environ):
        return False
    libc = _glibc()
    if libc is None:
        return False
    return all(libc.mallopt(option, value) == 1 for option, value in SETTINGS)


def give_back_memory() -> None:
    """Collect what is garbage now (a dropped model in a reference cycle), then hand the memory freed back to the
    system (glibc's malloc_trim; elsewhere only the collection)."""
    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
