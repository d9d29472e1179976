"""The one writer: every file and folder loramix creates goes through this module (STYLE rule 17).

Its rules, each checked here and nowhere else:

* **Confinement at the final path.** The target's folder is resolved (links followed); the target itself must
  not be a link; with `within`, the resolved target must lie inside one of those folders (compared by path
  components, so `outputs-evil` is not inside `outputs`).
* **Never replace unasked.** An existing target is refused unless the caller passes `replace=True` (the UI
  only when the user ticks *replace*, the CLI only with `--replace`). Without `replace` the new file is
  hard-linked into place, which fails if another writer got there first, so the check has no race.
* **Atomic.** Content goes to a temp file (or folder) beside the target, named `.<name>.<random>.tmp`,
  fsynced, then renamed onto the target: a crash leaves the old file or nothing, never half a file.
* **Disk full** (ENOSPC, EDQUOT, or a Rust writer's "os error 28") becomes `DiskFullError`: which file, how
  much it needed, how much is free, and that the previous file is unchanged.
* **Folders are claimed with mkdir** (`claim_folder`): two jobs or uploads in the same second get two folders.
* **Stale temps** that a killed writer left (`.….tmp`) are removed by `remove_stale_temps`, which never follows
  a link and never touches a name the writer does not make.

`ledger()` lists what this process wrote: the test that finds write sites around the writer compares it with
what appeared on disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from loramix.core.errors import LoramixError
from loramix.core.paths import is_within

# How writers that do not raise OSError (safetensors' Rust writer) report ENOSPC in their message.
_DISK_FULL_WORDS = ("no space left on device", "storagefull", "os error 28", "code: 28")
TEMP_PATTERN = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")  # what _temp_name makes, and only that

Roots = Path | str | Iterable[Path | str] | None


class DiskFullError(LoramixError):
    """The disk filled up while a file was being written; the previous file is unchanged."""


class WriteRefused(LoramixError):
    """The writer's rules refuse this target (outside the allowed folders, a link, or exists unasked)."""


_ledger: set[Path] = set()
_ledger_lock = threading.Lock()


def ledger() -> set[Path]:
    """Every final path (file or folder) this process has written or claimed through the writer."""
    with _ledger_lock:
        return set(_ledger)


def _record(path: Path) -> None:
    with _ledger_lock:
        _ledger.add(path)


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


def disk_full_error(target: Path, *, written: int = 0, expected_bytes: int | None = None,
                    existed: bool = False) -> DiskFullError:
    """The disk-full sentence: which file, what it needs, what is free, what was kept."""
    needed = max(expected_bytes or 0, written)
    try:
        free = human_bytes(shutil.disk_usage(target.parent).free)
    except OSError:
        free = "no space"
    need_text = (f"about {human_bytes(needed)}" if expected_bytes else
                 f"more than the {human_bytes(written)} written before the disk filled")
    kept = f"the previous {target.name} is unchanged" if existed else f"no {target.name} was written"
    return DiskFullError(f"The disk is full: saving {target} needs {need_text}, and {target.parent} has "
                         f"{free} free; {kept}. Free some space and save again.")


def _as_roots(within: Roots) -> list[Path] | None:
    if within is None:
        return None
    if isinstance(within, (str, os.PathLike)):
        return [Path(within)]
    return [Path(r) for r in within]


def check_target(target: str | os.PathLike, *, replace: bool = False, within: Roots = None,
                 field: str = "path") -> Path:
    """The final path to write, after links in its folder are resolved; else `WriteRefused` naming `field`.

    Refused: a target outside `within` (when given), a target that is a link (writing through or over a link
    is never what a user asked for), an existing folder where a file goes, and an existing file unless
    `replace`.
    """
    target = Path(target).expanduser()
    if not target.name or target.name in (".", ".."):
        raise WriteRefused(f"{field}: {str(target)!r} does not name a file.")
    final = final_path(target)
    roots = _as_roots(within)
    if roots is not None and not is_within(final.parent, roots):
        raise WriteRefused(f"{field}: loramix writes only inside {_names(roots)}; {target.name} would land "
                           "outside them.")
    if final.is_symlink():
        raise WriteRefused(f"{field}: {_shown(final)} is a link; loramix never writes through or over a link. "
                           "Give another name.")
    if final.exists() and not replace:
        raise WriteRefused(f"{field}: {_shown(final)} already exists; loramix does not replace a file unless you "
                           "ask (tick replace, or --replace on the command line).")
    return final


def _shown(path: Path) -> str:
    """A path as a refusal names it: the file and its folder's name, never the server's folder layout (a
    refusal may go to a remote client of `--listen`)."""
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _names(roots: list[Path]) -> str:
    return ", ".join(f"{Path(r).name or r}/" for r in roots) or "(no folder)"


def final_path(target: str | os.PathLike) -> Path:
    """Where a write to `target` lands: its folder with links resolved, its own name not followed."""
    target = Path(target).expanduser()
    return target.parent.resolve() / target.name


def _temp_name(target: Path) -> str:
    return f".{target.name}."


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, replace: bool = False, within: Roots = None, field: str = "path",
                expected_bytes: int | None = None, make_parents: bool = True) -> Iterator[Path]:
    """Yield a temp file path beside `target`; when the block ends without error it becomes `target`.

    `expected_bytes`, when the caller knows it, is what a disk-full sentence says the file needs.
    """
    target = Path(target).expanduser()
    if make_parents:
        _make_parents(target.parent, within)
    final = check_target(target, replace=replace, within=within, field=field)
    existed = final.exists()
    fd, tmp = tempfile.mkstemp(prefix=_temp_name(final), suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
            _commit(tmp_path, final, replace, field)
        except Exception as e:
            if is_disk_full(e):
                written = tmp_path.stat().st_size if tmp_path.exists() else 0
                raise disk_full_error(final, written=written, expected_bytes=expected_bytes,
                                      existed=existed) from e
            raise
        _record(final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _commit(tmp: Path, final: Path, replace: bool, field: str) -> None:
    check_target(final, replace=replace, field=field)  # again: a link may have appeared meanwhile
    if replace:
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)  # fails if `final` appeared since the check: never replaces
    except FileExistsError:
        raise WriteRefused(f"{field}: {_shown(final)} appeared while loramix was writing it; nothing was "
                           "replaced.") from None
    except OSError as e:  # a file system without hard links: rename after a last check
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if final.exists() or final.is_symlink():
            raise WriteRefused(f"{field}: {_shown(final)} already exists; nothing was replaced.") from None
        os.replace(tmp, final)
        return
    tmp.unlink()


def write_bytes(target: str | os.PathLike, data: bytes, **rules) -> Path:
    """Write `data` to `target` under the writer's rules (`replace`, `within`, `field`); returns the final path."""
    with atomic_path(target, expected_bytes=len(data), **rules) as tmp:
        tmp.write_bytes(data)
    return final_path(target)


def write_text(target: str | os.PathLike, text: str, **rules) -> Path:
    return write_bytes(target, text.encode("utf-8"), **rules)


def copy_file(source: str | os.PathLike, target: str | os.PathLike, **rules) -> Path:
    """Copy a file's bytes (an upload) to `target` under the writer's rules."""
    size = Path(source).stat().st_size
    with atomic_path(target, expected_bytes=size, **rules) as tmp, open(source, "rb") as src, \
            open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return final_path(target)


def save_png(image, target: str | os.PathLike, **rules) -> Path:
    """A PIL image as a PNG file under the writer's rules."""
    with atomic_path(target, **rules) as tmp:
        image.save(tmp, format="PNG")
    return final_path(target)


def write_zip(target: str | os.PathLike, folder: str | os.PathLike, **rules) -> Path:
    """Zip `folder`'s files (links skipped, never followed) into `target` under the writer's rules."""
    import zipfile

    folder = Path(folder)
    with atomic_path(target, **rules) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for root, dirs, files in os.walk(folder):  # os.walk does not descend into linked folders
            dirs[:] = sorted(d for d in dirs if not (Path(root) / d).is_symlink())
            for name in sorted(files):
                path = Path(root) / name
                if not path.is_symlink():
                    archive.write(path, path.relative_to(folder).as_posix())
    return final_path(target)


def append_line(target: str | os.PathLike, line: str, *, within: Roots = None, field: str = "path") -> None:
    """Append one line to a log file (created if missing), never through a link, inside `within`."""
    target = Path(target)
    final = check_target(target, replace=True, within=within, field=field)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    try:
        fd = os.open(final, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as e:
        if is_disk_full(e):
            raise disk_full_error(final, expected_bytes=len(data), existed=True) from e
        raise
    _record(final)


def open_lock_file(target: str | os.PathLike, *, within: Roots = None, field: str = "path"):
    """Open (creating if needed) a lock file for reading and writing, never through a link."""
    final = check_target(target, replace=True, within=within, field=field)
    fd = os.open(final, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    _record(final)
    return os.fdopen(fd, "r+", encoding="utf-8")


def _make_parents(folder: Path, within: Roots) -> None:
    """Create `folder` and its missing parents, each inside `within` after links."""
    roots = _as_roots(within)
    missing = []
    current = folder
    while not current.exists() and not current.is_symlink() and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        if roots is not None and not is_within(path, roots):
            raise WriteRefused(f"loramix writes only inside {_names(roots)}; {path.name} would land outside "
                               "them.")
        _mkdir(path)
        _record(path.resolve())


def _mkdir(path: Path) -> bool:
    """Create one folder: True if this call made it, False if it was there; a full disk is the sentence."""
    try:
        path.mkdir()
    except FileExistsError:
        return False
    except OSError as e:
        if is_disk_full(e):
            raise disk_full_error(path) from e
        raise
    return True


def make_folder(folder: str | os.PathLike, *, within: Roots = None) -> Path:
    """An app folder (outputs, presets…): created if missing, never a link out of `within`."""
    folder = Path(folder).expanduser()
    _make_parents(folder, within)
    resolved = folder.resolve()
    roots = _as_roots(within)
    if roots is not None and not is_within(resolved, roots):
        raise WriteRefused(f"{folder.name} leads outside {_names(roots)}; loramix does not write there.")
    if not resolved.is_dir():
        raise WriteRefused(f"{folder} is not a folder.")
    return resolved


def claim_folder(parent: str | os.PathLike, name: str, *, within: Roots = None, field: str = "path",
                 limit: int = 10_000) -> Path:
    """Create and return `parent/name`, else `name-2`, `name-3`, …: mkdir is the claim, so two callers at the
    same moment never get the same folder."""
    parent = make_folder(parent, within=within)
    for n in range(1, limit):
        folder = parent / (name if n == 1 else f"{name}-{n}")
        if not _mkdir(folder):
            continue
        _record(folder)
        return folder
    raise LoramixError(f"{field}: {parent} already holds {limit - 1} folders named {name}; pick another name.")


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike, *, replace: bool = False, within: Roots = None,
                  field: str = "path", replaceable: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temp folder beside `target`; when the block ends without error it becomes `target`.

    With `replace`, an existing folder is swapped out and removed only if `replaceable(folder)` says it is one
    loramix made (a bake's marker file); the old one stays until the new one is in place.
    """
    target = Path(target).expanduser()
    _make_parents(target.parent, within)
    final = final_path(target)
    if final.exists() and not final.is_symlink() and final.is_dir():
        if not replace:
            raise WriteRefused(f"{field}: {_shown(final)} already exists; loramix does not replace it unless you "
                               "ask (tick replace, or --replace on the command line).")
        if replaceable is not None and not replaceable(final):
            raise WriteRefused(f"{field}: {_shown(final)} is a folder loramix did not make; it is never "
                               "replaced. Give another name.")
    else:
        check_target(target, replace=replace, within=within, field=field)
    roots = _as_roots(within)
    if roots is not None and not is_within(final.parent, roots):
        raise WriteRefused(f"{field}: loramix writes only inside {_names(roots)}.")
    tmp = Path(tempfile.mkdtemp(prefix=_temp_name(final), suffix=".tmp", dir=final.parent))
    old = None
    try:
        try:
            yield tmp
        except Exception as e:
            if is_disk_full(e):
                raise disk_full_error(final, written=_folder_size(tmp), existed=final.exists()) from e
            raise
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=_temp_name(final), suffix=".tmp", dir=final.parent))
            final.rename(old / final.name)
        tmp.rename(final)
        _record(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:  # the swap failed half-way: put the old folder back
                (old / final.name).rename(final)
                old.rmdir()


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def remove_stale_temps(folder: str | os.PathLike, *, subfolders: tuple[str, ...] = ()) -> list[Path]:
    """Delete the temp files and folders a killed writer left in `folder` (and its named `subfolders`).

    Only names the writer makes (`.<name>.<random>.tmp`) are removed; a linked folder is not entered, and a
    linked temp name is unlinked itself (its target is never touched). Call it where no writer is running in
    that folder (a run folder with its lock held, the app's folders at start).
    """
    removed = []
    base = Path(folder)
    for root in (base, *(base / s for s in subfolders)):
        if root.is_symlink() or not root.is_dir():
            continue
        for path in root.iterdir():
            if not TEMP_PATTERN.match(path.name):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def prune_files(folder: str | os.PathLike, pattern: str, keep: int) -> list[Path]:
    """Delete all but the newest `keep` files matching `pattern` in one of the app's own scratch folders (API
    previews); links are never followed or counted."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return []
    files = sorted((p for p in folder.glob(pattern) if p.is_file() and not p.is_symlink()),
                   key=lambda p: p.stat().st_mtime)
    old = files[:-keep] if keep else files
    for path in old:
        path.unlink(missing_ok=True)
    return old


def remove_file(path: str | os.PathLike, *, within: Roots = None) -> None:
    """Remove a file loramix made (a lock file at the end of a run): never through a link, only inside `within`."""
    path = final_path(path)
    roots = _as_roots(within)
    if roots is not None and not is_within(path.parent, roots):
        raise WriteRefused(f"loramix removes files only inside {_names(roots)}.")
    path.unlink(missing_ok=True)  # unlink removes a link itself, never its target


def remove_empty_folder(folder: str | os.PathLike) -> bool:
    """Give back a folder loramix claimed and nothing used (never one holding a file, never a link)."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir() or any(folder.iterdir()):
        return False
    folder.rmdir()
    return True
