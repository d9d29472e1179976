"""Atomic file writes: write to a temporary file beside the target, fsync, then rename over it.

A crash or cancel mid-write leaves the previous file (or nothing), never a half-written one. A full
disk becomes `DiskFullError`: which file, how much it needed, how much is free.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from loramix.errors import LoramixError

# How writers that do not raise OSError (safetensors' Rust writer) report ENOSPC in their message.
_DISK_FULL_WORDS = ("no space left on device", "storagefull", "os error 28", "code: 28")


class DiskFullError(LoramixError):
    """The disk filled up while a file was being written; the previous file is unchanged."""


def is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error).lower()
    return any(words in text for words in _DISK_FULL_WORDS)


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


def _disk_full(target: Path, tmp: Path, expected_bytes: int | None, existed: bool) -> DiskFullError:
    written = tmp.stat().st_size if tmp.exists() else 0
    needed = max(expected_bytes or 0, written)
    free = shutil.disk_usage(target.parent).free
    need_text = (f"about {human_bytes(needed)}" if expected_bytes else
                 f"more than the {human_bytes(written)} written before the disk filled")
    kept = f"the previous {target.name} is unchanged" if existed else f"no {target.name} was written"
    return DiskFullError(f"The disk is full: saving {target} needs {need_text}, and {target.parent} has "
                         f"{human_bytes(free)} free; {kept}. Free some space and save again.")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, expected_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it is renamed onto `target`.

    `expected_bytes`, when the caller knows it, is what a disk-full message says the file needs.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    existed = target.exists()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
        except Exception as e:
            if is_disk_full(e):
                raise _disk_full(target, tmp_path, expected_bytes, existed) from e
            raise
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(target: str | os.PathLike, text: str) -> None:
    data = text.encode("utf-8")
    with atomic_path(target, expected_bytes=len(data)) as tmp:
        tmp.write_bytes(data)


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target, expected_bytes=len(data)) as tmp:
        tmp.write_bytes(data)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
