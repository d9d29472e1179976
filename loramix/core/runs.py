"""One run folder per training job: claim a fresh folder, refuse another run's folder, lock it while training.

* `new_run_folder(outputs, name)` claims `outputs/<name>`, else `<name>-2`, `<name>-3`, … (mkdir is the
  claim, so two jobs started at once never get the same folder);
* `check_run_folder(config)` refuses, before any model loads, an output folder that is a file or that
  holds another run's files, unless this run resumes that folder's own state;
* `RunLock` is held by the training process (CLI and web app alike) for the whole run; a second writer
  gets a sentence naming the running process. The lock is `fcntl.flock` on `.loramix.lock`: the kernel
  drops it when the process dies, so a kill -9 never leaves a folder locked;
* `remove_stale_temps` deletes the `.…tmp` files a killed run left (safe once the lock is held);
* `confine_config` applies the `loramix.core.paths` rule to every path field of a training config, and keeps a run
  out of the app's own folders (presets, mixes, loras, uploads, baked).

Every folder and file here is made through `loramix.core.writer`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path

from loramix.core import writer
from loramix.core.config import LoramixConfig
from loramix.core.errors import ConfigError, LoramixError
from loramix.core.paths import Confinement, is_within, plain_name

LOCK_NAME = ".loramix.lock"
RUN_FILES = ("log.jsonl",)  # with <name>.safetensors and *-state.safetensors: what marks a folder as a run's


def new_run_folder(outputs: str | os.PathLike, name: str) -> Path:
    """Create and return a folder for a new run: `outputs/<name>` if free, else `<name>-2`, `<name>-3`, …"""
    name = plain_name("output.output_name", name)
    return writer.claim_folder(outputs, name, within=outputs, field="output.output_name")


def drop_if_empty(folder: str | os.PathLike) -> None:
    """Give back a run folder that `new_run_folder` claimed but no job used (never one holding a file)."""
    writer.remove_empty_folder(folder)


def run_files(folder: Path) -> list[Path]:
    """Files in `folder` that belong to a training run (LoRA files, states, logs)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.name in RUN_FILES or p.name.endswith(".safetensors") and not p.name.startswith("."))


def check_run_folder(config: LoramixConfig) -> Path:
    """The output folder, if this run may write there; else a sentence. Runs before any model loads."""
    out = config.output
    plain_name("output.output_name", out.output_name)
    folder = Path(out.output_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError("output.output_dir", f"{folder} is a file; give a folder (a new one is created).")
    resume = config.train.resume_from
    if resume:
        state = Path(resume).expanduser().resolve()
        if state.parent == folder.resolve():
            return folder  # continuing this folder's own run
    existing = run_files(folder) + [p for p in (folder / f"{out.output_name}.toml",) if p.exists() or p.is_symlink()]
    if existing:
        raise ConfigError("output.output_dir", f"{folder} already holds another run ({existing[0].name}); loramix "
                                               "never overwrites a run. Pick a new folder, or resume that run "
                                               "with train.resume_from=<its …-state.safetensors>.")
    return folder


class RunLock:
    """An exclusive lock on a run folder for as long as a training process writes there."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._file = None

    def acquire(self) -> RunLock:
        import fcntl

        writer.make_folder(self.folder)
        existed = self.path.exists()
        f = writer.open_lock_file(self.path, within=self.folder, field="output.output_dir")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise LoramixError(f"{self.folder} is in use by a running loramix training ({holder}); wait for it to "
                               "end or pick another output folder.") from None
        try:
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
            f.flush()
        except OSError as e:  # a full disk: no empty lock file is left behind
            f.close()
            if not existed:
                writer.remove_file(self.path, within=self.folder)
            if writer.is_disk_full(e):
                raise writer.disk_full_error(self.path, written=0, expected_bytes=80) from e
            raise
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                writer.remove_file(self.path, within=self.folder)
            self._file.close()  # closing drops the flock
            self._file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete temp files and folders that an interrupted write left in a run folder (call with the lock held)."""
    return writer.remove_stale_temps(folder, subfolders=("samples",))


def confine_config(config: LoramixConfig, confinement: Confinement, reserved: Iterable[Path] = ()) -> LoramixConfig:
    """Check every path in a training config against the confinement rule (web app and API); `reserved` are the
    app's own folders (presets, mixes, …), never a run folder."""
    d = config.dataset
    d.data_dir = str(confinement.readable_folder("dataset.data_dir", d.data_dir))
    if d.reg_data_dir:
        d.reg_data_dir = str(confinement.readable_folder("dataset.reg_data_dir", d.reg_data_dir))
    if d.validation_dir:
        d.validation_dir = str(confinement.readable_folder("dataset.validation_dir", d.validation_dir))
    config.model.base_model = confinement.readable_base("model.base_model", config.model.base_model)
    if config.train.resume_from:
        config.train.resume_from = str(confinement.readable("train.resume_from", config.train.resume_from))
    plain_name("output.output_name", config.output.output_name)
    config.output.output_dir = str(confinement.writable("output.output_dir", config.output.output_dir))
    for folder in reserved:
        if is_within(config.output.output_dir, [folder]):
            raise ConfigError("output.output_dir", f"{Path(folder).name} is the app's own folder of "
                                                   f"{Path(folder).name}, never a run folder; leave the output "
                                                   "folder empty to get a new one.")
    return config


def folder_is_locked(folder: Path) -> bool:
    """A training process holds this run folder's lock right now (never follows a linked lock file)."""
    import fcntl

    lock = folder / LOCK_NAME
    if lock.is_symlink() or not lock.is_file():
        return False
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we took
    return False


def clean_app_folders(outputs: Path, app_folders: list[Path]) -> list[Path]:
    """At app start: remove the temp files a killed writer left in the app's folders and in every run folder
    under `outputs` that no training holds (a killed bake or export leaves `.name.xxxx.tmp` folders)."""
    removed = writer.remove_stale_temps(outputs)
    for folder in app_folders:
        removed += writer.remove_stale_temps(folder)
    for run in sorted(outputs.iterdir()) if outputs.is_dir() else []:
        if run.is_dir() and not run.is_symlink() and run not in app_folders and not folder_is_locked(run):
            removed += writer.remove_stale_temps(run, subfolders=("samples",))
    return removed
