"""One run folder per training job: claim a fresh folder, refuse another run's folder, lock it while training.

* `new_run_folder(outputs, name)` claims `outputs/<name>`, else `<name>-2`, `<name>-3`, … (mkdir is the
  claim, so two jobs started at once never get the same folder);
* `check_run_folder(config)` refuses, before any model loads, an output folder that is a file or that
  holds another run's files, unless this run resumes that folder's own state;
* `RunLock` is held by the training process (CLI and web app alike) for the whole run; a second writer
  gets a sentence naming the running process. The lock is `fcntl.flock` on `.loramix.lock`: the kernel
  drops it when the process dies, so a kill -9 never leaves a folder locked;
* `remove_stale_temps` deletes the `.…tmp` files a killed run left (safe once the lock is held);
* `confine_config` applies the `loramix.paths` rule to every path field of a training config.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from pathlib import Path

from loramix.config import LoramixConfig
from loramix.errors import ConfigError, LoramixError
from loramix.paths import Confinement, plain_name

LOCK_NAME = ".loramix.lock"
RUN_FILES = ("log.jsonl",)  # with <name>.safetensors and *-state.safetensors: what marks a folder as a run's


def new_run_folder(outputs: str | os.PathLike, name: str) -> Path:
    """Create and return a folder for a new run: `outputs/<name>` if free, else `<name>-2`, `<name>-3`, …"""
    outputs = Path(outputs)
    name = plain_name("output.output_name", name)
    outputs.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        folder = outputs / (name if n == 1 else f"{name}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise LoramixError(f"{outputs} already holds 9999 runs named {name}; pick another output name.")


def drop_if_empty(folder: str | os.PathLike) -> None:
    """Give back a run folder that `new_run_folder` claimed but no job used (never one holding a file)."""
    folder = Path(folder)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


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
    existing = run_files(folder)
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

        self.folder.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the whole run
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise LoramixError(f"{self.folder} is in use by a running loramix training ({holder}); wait for it to "
                               "end or pick another output folder.") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self._file.close()  # closing drops the flock
            self._file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete temp files and folders that an interrupted write left in `folder` (call with the lock held)."""
    removed = []
    for root in (Path(folder), Path(folder) / "samples"):
        if not root.is_dir():
            continue
        for p in root.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def confine_config(config: LoramixConfig, confinement: Confinement) -> LoramixConfig:
    """Check every path in a training config against the confinement rule (web app and API)."""
    d = config.dataset
    d.data_dir = str(confinement.readable("dataset.data_dir", d.data_dir))
    if d.reg_data_dir:
        d.reg_data_dir = str(confinement.readable("dataset.reg_data_dir", d.reg_data_dir))
    config.model.base_model = confinement.readable_base("model.base_model", config.model.base_model)
    if config.train.resume_from:
        config.train.resume_from = str(confinement.readable("train.resume_from", config.train.resume_from))
    plain_name("output.output_name", config.output.output_name)
    config.output.output_dir = str(confinement.writable("output.output_dir", config.output.output_dir))
    return config
