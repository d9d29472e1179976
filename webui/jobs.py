"""Training jobs for the app: one runs at a time in a worker thread, the rest wait in a visible queue.

A job collects the engine's events; any number of browser tabs read them (a refresh reattaches to
the running job instead of starting another). Cancel is the engine's cancel flag. Errors are caught
here and kept as the engine's one-sentence message. No gradio in this module.
"""

from __future__ import annotations

import itertools
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from loramix.config import LoramixConfig
from loramix.errors import LoramixError
from loramix.events import CancelToken, TrainEvent


@dataclass
class Job:
    id: int
    config: LoramixConfig
    status: str = "queued"  # queued | running | done | cancelled | failed
    events: list[TrainEvent] = field(default_factory=list)
    error: str = ""
    lora_path: Path | None = None
    cancel: CancelToken = field(default_factory=CancelToken)
    started: float = 0.0
    finished: float = 0.0

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running")

    def latest(self, kind: str) -> TrainEvent | None:
        return next((e for e in reversed(self.events) if e.kind == kind), None)

    def losses(self) -> list[tuple[int, float]]:
        return [(e.step, e.loss) for e in list(self.events) if e.kind == "step" and e.loss is not None]

    def sample_paths(self) -> list[str]:
        return [p for e in list(self.events) if e.kind == "sample" for p in e.paths]


class JobManager:
    """Owns the queue and the single worker thread."""

    def __init__(self, train_fn=None):
        if train_fn is None:
            from trainers.lora_trainer import train as train_fn
        self._train = train_fn
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._ids = itertools.count(1)
        self.jobs: list[Job] = []
        self._worker = threading.Thread(target=self._run_forever, name="loramix-train", daemon=True)
        self._worker.start()

    def submit(self, config: LoramixConfig) -> Job:
        config.validate()
        with self._lock:
            job = Job(next(self._ids), config)
            self.jobs.append(job)
            self._wake.notify()
        return job

    def current(self) -> Job | None:
        """The running job, else the next queued one, else the most recent one."""
        with self._lock:
            for status in ("running", "queued"):
                job = next((j for j in self.jobs if j.status == status), None)
                if job:
                    return job
            return self.jobs[-1] if self.jobs else None

    def queued(self) -> list[Job]:
        with self._lock:
            return [j for j in self.jobs if j.status == "queued"]

    def cancel(self, job_id: int | None = None) -> Job | None:
        job = self.get(job_id) if job_id else self.current()
        if job and job.active:
            job.cancel.cancel()
            with self._lock:
                if job.status == "queued":
                    job.status = "cancelled"
        return job

    def get(self, job_id: int) -> Job | None:
        with self._lock:
            return next((j for j in self.jobs if j.id == job_id), None)

    def wait(self, job: Job, timeout: float = 600) -> Job:
        deadline = time.time() + timeout
        while job.active and time.time() < deadline:
            time.sleep(0.05)
        return job

    def _run_forever(self) -> None:
        while True:
            with self._lock:
                while not any(j.status == "queued" for j in self.jobs):
                    self._wake.wait()
                job = next(j for j in self.jobs if j.status == "queued")
                job.status, job.started = "running", time.time()
            self._run(job)

    def _run(self, job: Job) -> None:
        try:
            result = self._train(job.config, job.events.append, job.cancel)
            job.lora_path = result.lora_path
            job.status = "cancelled" if result.cancelled else "done"
        except LoramixError as e:
            job.error, job.status = str(e), "failed"
        except Exception as e:  # the error boundary: the app stays up and shows what happened
            job.error = f"Training crashed: {type(e).__name__}: {e}. Details are in the server log."
            job.status = "failed"
            traceback.print_exc()
        finally:
            job.finished = time.time()
