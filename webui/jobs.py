"""Training jobs for the app: one runs at a time in a worker thread, the rest wait in a visible queue.

A job collects the engine's events; any number of browser tabs read them by polling (a viewer never
holds a worker slot). Cancel is the engine's cancel flag. Errors are caught here and kept as the
engine's one-sentence message. Each job has its own run folder. No gradio in this module.
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
from loramix.runs import drop_if_empty

KEEP_FINISHED = 20  # finished jobs kept in the list (the files stay on disk)


@dataclass
class Job:
    id: int
    config: LoramixConfig
    status: str = "queued"  # queued | running | done | cancelled | failed | removed
    events: list[TrainEvent] = field(default_factory=list)
    error: str = ""
    lora_path: Path | None = None
    state_path: Path | None = None
    cancel: CancelToken = field(default_factory=CancelToken)
    submitted: float = field(default_factory=time.time)
    started: float = 0.0
    finished: float = 0.0

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running")

    @property
    def folder(self) -> Path:
        return Path(self.config.output.output_dir)

    @property
    def name(self) -> str:
        return self.config.output.output_name

    def latest(self, kind: str) -> TrainEvent | None:
        return next((e for e in reversed(list(self.events)) if e.kind == kind), None)

    def step(self) -> int:
        event = self.latest("step") or self.latest("start")
        return event.step if event else 0

    def total(self) -> int:
        event = self.latest("step") or self.latest("start")
        return event.total if event else self.config.train.max_steps

    def losses(self) -> list[tuple[int, float]]:
        return [(e.step, e.loss) for e in list(self.events) if e.kind == "step" and e.loss is not None]

    def samples(self) -> list[tuple[str, int]]:
        """(path, step) of every sample image so far."""
        return [(p, e.step) for e in list(self.events) if e.kind == "sample" for p in e.paths]

    def resumable_state(self) -> Path | None:
        """The state file to continue this job from, after a cancel, a crash or a NaN stop."""
        if self.status not in ("cancelled", "failed"):
            return None
        state = self.folder / f"{self.name}-state.safetensors"
        return state if state.is_file() else None


def _same_work(a: LoramixConfig, b: LoramixConfig) -> bool:
    """Two configs that would train the same thing (the run folder aside)."""
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d["output"] = {k: v for k, v in d["output"].items() if k != "output_dir"}
    return da == db


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
        """Queue a job; a job identical to a queued or running one, or one into a busy folder, is refused."""
        config.validate()
        with self._lock:
            for other in self.jobs:
                if not other.active:
                    continue
                if _same_work(other.config, config):
                    raise LoramixError(f"The same training is already {other.status} as job {other.id} "
                                       f"({other.folder}); change a setting or wait for it.")
                if Path(other.config.output.output_dir).resolve() == Path(config.output.output_dir).resolve():
                    raise LoramixError(f"Job {other.id} already writes into {other.folder}; pick another folder.")
            job = Job(next(self._ids), config)
            self.jobs.append(job)
            self._forget_old()
            self._wake.notify()
        return job

    def _forget_old(self) -> None:
        finished = [j for j in self.jobs if not j.active]
        for job in finished[:-KEEP_FINISHED]:
            self.jobs.remove(job)

    def current(self) -> Job | None:
        """The running job, else the next queued one, else the most recent one."""
        with self._lock:
            for status in ("running", "queued"):
                job = next((j for j in self.jobs if j.status == status), None)
                if job:
                    return job
            finished = [j for j in self.jobs if j.status != "removed"]
            return finished[-1] if finished else None

    def queued(self) -> list[Job]:
        with self._lock:
            return [j for j in self.jobs if j.status == "queued"]

    def listing(self) -> list[Job]:
        """Running and queued jobs first (in order), then finished ones, newest first."""
        with self._lock:
            active = [j for j in self.jobs if j.active]
            done = [j for j in reversed(self.jobs) if not j.active and j.status != "removed"]
            return active + done

    def cancel(self, job_id: int | None = None) -> Job | None:
        """Stop a running job after its current step, or drop a queued one."""
        job = self.get(job_id) if job_id else self.current()
        if job and job.active:
            job.cancel.cancel()
            with self._lock:
                if job.status == "queued":
                    job.status = "cancelled"
                    job.finished = time.time()
        return job

    def remove(self, job_id: int) -> Job:
        """Take a queued job out of the queue (its empty run folder goes too)."""
        job = self.get(job_id)
        if job is None:
            raise LoramixError(f"There is no job {job_id}.")
        with self._lock:
            if job.status != "queued":
                raise LoramixError(f"Job {job_id} is {job.status}; only a queued job can be removed (cancel a "
                                   "running one).")
            job.status = "removed"
            job.finished = time.time()
        drop_if_empty(job.folder)
        return job

    def get(self, job_id: int | None) -> Job | None:
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
            job.state_path = getattr(result, "state_path", None)
            job.status = "cancelled" if result.cancelled else "done"
        except LoramixError as e:
            job.error, job.status = str(e), "failed"
        except Exception as e:  # the error boundary: the app stays up and shows what happened
            job.error = f"Training crashed: {type(e).__name__}: {e}. Details are in the server log."
            job.status = "failed"
            traceback.print_exc()
        finally:
            job.finished = time.time()
