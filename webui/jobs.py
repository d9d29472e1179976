"""Jobs for the app — trainings and captionings — one runs at a time in a worker thread, the rest wait in a
visible queue.

Every job and every event it publishes are recorded in the job store (`loramix.core.job_store`, SQLite in
outputs/loramix.db) the moment they exist, so the list survives a restart or a kill -9: a job that was running
then is *interrupted* (resumable from its state file), and queued jobs start again by themselves, in order.
Any number of browser tabs read a job by polling (a viewer never holds a worker slot). Cancel is the engine's
cancel flag; `shutdown` stops the running job after its step (Ctrl-C, SIGTERM). Errors are caught here and kept
as the engine's one-sentence message. No gradio in this module.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from loramix.core.allocator import give_back_memory
from loramix.core.config import CaptionConfig, LoramixConfig
from loramix.core.errors import LoramixError
from loramix.core.events import CancelToken, TrainEvent
from loramix.core.job_store import JobRecord, JobStore, kind_of
from loramix.core.runs import drop_if_empty

FINISHED = ("done", "cancelled", "failed", "interrupted")


@dataclass
class Job:
    id: int
    config: LoramixConfig | CaptionConfig  # a training, or a captioning (kind "caption")
    status: str = "queued"  # queued | running | done | cancelled | failed | interrupted | removed
    events: list[TrainEvent] = field(default_factory=list)
    error: str = ""
    lora_path: Path | None = None
    state_path: Path | None = None
    cancel: CancelToken = field(default_factory=CancelToken)
    submitted: float = field(default_factory=time.time)
    started: float = 0.0
    finished: float = 0.0
    stored_step: int = 0  # the last step the store recorded (before the events are read back)
    event_times: list[float] = field(default_factory=list)  # time.monotonic() of each event this process saw

    @property
    def kind(self) -> str:
        return kind_of(self.config)

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running")

    @property
    def folder(self) -> Path:
        """The run folder of a training; the image folder of a captioning."""
        if self.kind == "caption":
            return Path(self.config.data_dir)
        return Path(self.config.output.output_dir)

    @property
    def name(self) -> str:
        return f"captions of {self.folder.name}" if self.kind == "caption" else self.config.output.output_name

    def latest(self, kind: str) -> TrainEvent | None:
        return next((e for e in reversed(list(self.events)) if e.kind == kind), None)

    def step(self) -> int:
        event = self.latest("step") or self.latest("start")
        return event.step if event else self.stored_step

    def total(self) -> int:
        event = self.latest("step") or self.latest("start")
        return event.total if event else (0 if self.kind == "caption" else self.config.train.max_steps)

    def losses(self) -> list[tuple[int, float]]:
        return [(e.step, e.loss) for e in list(self.events) if e.kind == "step" and e.loss is not None]

    def samples(self) -> list[tuple[str, int]]:
        """(path, step) of every sample image so far."""
        return [(p, e.step) for e in list(self.events) if e.kind == "sample" for p in e.paths]

    def resumable_state(self) -> Path | None:
        """The state file to continue this job from, after a cancel, a crash, a NaN stop or a server stop."""
        if self.status not in ("cancelled", "failed", "interrupted") or self.kind == "caption":
            return None
        state = self.folder / f"{self.name}-state.safetensors"
        return state if state.is_file() else None


def _same_work(a: LoramixConfig | CaptionConfig, b: LoramixConfig | CaptionConfig) -> bool:
    """Two configs that would train the same thing (the run folder aside), or caption the same folder."""
    if kind_of(a) != kind_of(b):
        return False
    if kind_of(a) == "caption":
        return Path(a.data_dir).expanduser().resolve() == Path(b.data_dir).expanduser().resolve()
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d["output"] = {k: v for k, v in d["output"].items() if k != "output_dir"}
    return da == db


def _job_of(record: JobRecord) -> Job:
    return Job(record.id, record.config, record.status, error=record.error,
               lora_path=Path(record.lora_path) if record.lora_path else None,
               state_path=Path(record.state_path) if record.state_path else None, submitted=record.submitted,
               started=record.started, finished=record.finished, stored_step=record.step)


class JobManager:
    """Owns the queue, the single worker thread and the job store. `train_fn` / `caption_fn` run a job's config
    with (config, event sink, cancel token) and return a result with `lora_path`, `cancelled` (and `state_path`)."""

    def __init__(self, store: JobStore | str | Path, train_fn=None, caption_fn=None):
        if train_fn is None:
            from trainers.lora_trainer import train as train_fn
        if caption_fn is None:
            from trainers.captioner import caption_folder as caption_fn
        self._runners = {"train": train_fn, "caption": caption_fn}
        self.store = store if isinstance(store, JobStore) else JobStore(store)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self.jobs: list[Job] = [_job_of(r) for r in self.store.jobs()]
        for job in self.jobs:  # the events of earlier jobs, as the app showed them
            job.events = self.store.events(job.id)
        self.restored_queue = [j.id for j in self.jobs if j.status == "queued"]
        self._worker = threading.Thread(target=self._run_forever, name="loramix-train", daemon=True)
        self._worker.start()

    def submit(self, config: LoramixConfig | CaptionConfig) -> Job:
        """Queue a job; a job identical to a queued or running one, or a training into a busy folder, is refused."""
        config.validate()
        with self._lock:
            if self._stopping:
                raise LoramixError("The app is stopping; start the job again after the restart.")
            for other in self.jobs:
                if not other.active:
                    continue
                if _same_work(other.config, config):
                    what = "A captioning of this folder" if kind_of(config) == "caption" else "The same training"
                    raise LoramixError(f"{what} is already {other.status} as job {other.id} "
                                       f"({other.folder}); change a setting or wait for it.")
                if kind_of(config) == kind_of(other.config) == "train" and \
                        Path(other.config.output.output_dir).resolve() == Path(config.output.output_dir).resolve():
                    raise LoramixError(f"Job {other.id} already writes into {other.folder}; pick another folder.")
            record = self.store.add(config)
            job = Job(record.id, config, submitted=record.submitted)
            self.jobs.append(job)
            self._wake.notify()
        return job

    def _set(self, job: Job, **values) -> None:
        """Change a job in memory and in the store together. A store that fails (a full disk) is reported in the
        server log and never stops the worker: the app goes on with what it has in memory."""
        for key, value in values.items():
            setattr(job, key, value)
        try:
            self.store.update(job.id, **values)
        except Exception:
            traceback.print_exc()

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
        """Every job but removed ones, newest first."""
        with self._lock:
            return [j for j in reversed(self.jobs) if j.status != "removed"]

    def cancel(self, job_id: int | None = None) -> Job | None:
        """Stop a running job after its current step, or drop a queued one."""
        job = self.get(job_id) if job_id else self.current()
        if job and job.active:
            job.cancel.cancel()
            with self._lock:
                if job.status == "queued":
                    self._set(job, status="cancelled", finished=time.time())
        return job

    def remove(self, job_id: int) -> Job:
        """Take a queued job out of the queue (its empty run folder goes too), or a finished one off the list
        (its files stay in its run folder)."""
        job = self.get(job_id)
        if job is None or job.status == "removed":
            raise LoramixError(f"There is no job {job_id}.")
        with self._lock:
            if job.status == "running":
                raise LoramixError(f"Job {job_id} is running; cancel it first.")
            was_queued = job.status == "queued"
            self._set(job, status="removed", finished=job.finished or time.time())
        if was_queued:
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

    def shutdown(self, timeout: float | None = None) -> Job | None:
        """Stop taking jobs; the running one stops after its current step, saves its state and is marked
        interrupted (queued jobs stay queued for the next start). Returns the job that was running."""
        with self._lock:
            self._stopping = True
            running = next((j for j in self.jobs if j.status == "running"), None)
            self._wake.notify_all()
        if running is not None:
            running.cancel.cancel()
            deadline = None if timeout is None else time.time() + timeout
            while running.status == "running" and (deadline is None or time.time() < deadline):
                time.sleep(0.05)
        return running

    def _run_forever(self) -> None:
        while True:
            with self._lock:
                while self._stopping or not any(j.status == "queued" for j in self.jobs):
                    self._wake.wait()
                job = next(j for j in self.jobs if j.status == "queued")
                self._set(job, status="running", started=time.time())
            self._run(job)

    def _record(self, job: Job, event: TrainEvent) -> None:
        if len(job.event_times) != len(job.events):  # events read back from the store carry no time
            job.event_times = [float("nan")] * len(job.events)
        job.event_times.append(time.monotonic())
        job.events.append(event)
        try:
            self.store.add_event(job.id, len(job.events) - 1, event)
        except Exception:  # the job list failing to record must not stop the training
            traceback.print_exc()

    def _run(self, job: Job) -> None:
        values: dict = {}
        try:
            run = self._runners[job.kind]
            result = run(job.config, lambda event: self._record(job, event), job.cancel)
            values = dict(lora_path=result.lora_path, state_path=getattr(result, "state_path", None),
                          status="cancelled" if result.cancelled else "done")
            if result.cancelled and self._stopping:
                values["status"] = "interrupted"
        except LoramixError as e:
            values = dict(error=str(e), status="failed")
        except Exception as e:  # the error boundary: the app stays up and shows what happened
            what = "Captioning" if job.kind == "caption" else "Training"
            values = dict(error=f"{what} crashed: {type(e).__name__}: {e}. Details are in the server log.",
                          status="failed")
            traceback.print_exc()
        finally:
            values["finished"] = time.time()
            self._set(job, **values)
            give_back_memory()  # the job's models and optimizer (the allocator keeps freed memory for the next step)
