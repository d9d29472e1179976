"""The job store: every training job and its events, on disk from the moment they exist (STYLE rule 18).

One SQLite file (`outputs/loramix.db`, the standard library's sqlite3) holds a row per job — its config, status,
run folder, times and last step — and every event the engine published for it (loss points, samples, log
lines), each committed as it happens, so a kill -9 loses at most the event being written. The run folder stays
the home of the job's files; the store only remembers what the app showed.

Ids come from `AUTOINCREMENT`, so a job id is never used twice, even after jobs are removed. A job that was
`running` when the process died is `interrupted` the next time the store opens.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from pathlib import Path

from loramix.core.config import CaptionConfig, LoramixConfig, from_dict
from loramix.core.errors import LoramixError
from loramix.core.events import TrainEvent

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    folder TEXT NOT NULL,
    name TEXT NOT NULL,
    submitted REAL NOT NULL,
    started REAL NOT NULL DEFAULT 0,
    finished REAL NOT NULL DEFAULT 0,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    lora_path TEXT NOT NULL DEFAULT '',
    state_path TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT 'train'
);
CREATE TABLE IF NOT EXISTS events (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
"""
STATUSES = ("queued", "running", "done", "cancelled", "failed", "interrupted", "removed")
FIELDS = ("status", "started", "finished", "step", "total", "error", "lora_path", "state_path")
KINDS = ("train", "caption")  # what a job runs: a LoramixConfig training, or a CaptionConfig captioning


@dataclasses.dataclass
class JobRecord:
    """A job as the store holds it."""

    id: int
    config: LoramixConfig
    status: str
    folder: str
    name: str
    submitted: float
    started: float = 0.0
    finished: float = 0.0
    step: int = 0
    total: int = 0
    error: str = ""
    lora_path: str = ""
    state_path: str = ""
    kind: str = "train"


def kind_of(config: LoramixConfig | CaptionConfig) -> str:
    return "caption" if isinstance(config, CaptionConfig) else "train"


def _folder_and_name(config: LoramixConfig | CaptionConfig) -> tuple[str, str, int]:
    """(folder, name, total steps) as the job list shows a job: a captioning's folder is the image folder."""
    if isinstance(config, CaptionConfig):
        return config.data_dir, f"captions of {Path(config.data_dir).name}", 0
    return config.output.output_dir, config.output.output_name, config.train.max_steps


def event_to_json(event: TrainEvent) -> str:
    return json.dumps(dataclasses.asdict(event))


def event_from_json(text: str) -> TrainEvent:
    data = json.loads(text)
    data["paths"] = tuple(data.get("paths", ()))
    return TrainEvent(**data)


class JobStore:
    """One SQLite file; safe to use from the worker thread and the request threads together."""

    def __init__(self, path: str | Path):
        from loramix.core.writer import check_target, make_folder

        # SQLite keeps its own file atomic (journal); the writer's rule still decides where: not through a link.
        make_folder(Path(path).expanduser().parent)
        self.path = check_target(path, replace=True, within=Path(path).expanduser().parent, field="job list")
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the worker's commits
            self._db.execute("PRAGMA synchronous=NORMAL")  # durable across a killed process
            self._db.executescript(SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
            if "kind" not in columns:  # a job list from before captioning jobs: every job was a training
                self._db.execute("ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'train'")
        except sqlite3.DatabaseError as e:
            raise LoramixError(f"The job list {self.path} cannot be opened ({e}); move it aside to start a new "
                               "one (the run folders keep every trained file).") from e
        self.interrupted_at_open = self._mark_interrupted()

    def _mark_interrupted(self) -> list[int]:
        """Jobs that were running when the last process died are interrupted (resumable from their state)."""
        with self._lock:
            ids = [row[0] for row in self._db.execute("SELECT id FROM jobs WHERE status = 'running'")]
            if ids:
                self._db.execute("UPDATE jobs SET status = 'interrupted', finished = ? WHERE status = 'running'",
                                 (time.time(),))
        return ids

    def add(self, config: LoramixConfig | CaptionConfig, status: str = "queued") -> JobRecord:
        """Record a new job (a training or a captioning) the moment it is submitted; returns it with its id."""
        now = time.time()
        folder, name, total = _folder_and_name(config)
        kind = kind_of(config)
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO jobs (config, status, folder, name, submitted, total, kind) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (config.to_json(), status, folder, name, now, total, kind))
        return JobRecord(cursor.lastrowid, config, status, folder, name, now, total=total, kind=kind)

    def update(self, job_id: int, **values) -> None:
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise ValueError(f"not job fields: {sorted(unknown)}")
        if "status" in values and values["status"] not in STATUSES:
            raise ValueError(f"not a job status: {values['status']}")
        values = {k: "" if v is None else (str(v) if isinstance(v, Path) else v) for k, v in values.items()}
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                             (*values.values(), job_id))

    def add_event(self, job_id: int, seq: int, event: TrainEvent) -> None:
        """Record one engine event; a step event also moves the job's last step."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("INSERT OR REPLACE INTO events (job_id, seq, event) VALUES (?, ?, ?)",
                             (job_id, seq, event_to_json(event)))
            if event.kind in ("step", "start"):
                self._db.execute("UPDATE jobs SET step = ?, total = ? WHERE id = ?", (event.step, event.total, job_id))
            self._db.execute("COMMIT")

    def events(self, job_id: int) -> list[TrainEvent]:
        with self._lock:
            rows = self._db.execute("SELECT event FROM events WHERE job_id = ? ORDER BY seq", (job_id,)).fetchall()
        return [event_from_json(text) for (text,) in rows]

    def jobs(self) -> list[JobRecord]:
        """Every job, oldest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT id, kind, config, folder, name, submitted, {', '.join(FIELDS)} FROM "
                                    "jobs ORDER BY id").fetchall()
        records = []
        for job_id, kind, config, folder, name, submitted, *rest in rows:
            values = dict(zip(FIELDS, rest))
            stored = _caption_config(config, folder) if kind == "caption" else _config(config, folder, name)
            records.append(JobRecord(job_id, stored, folder=folder, name=name, submitted=submitted, kind=kind,
                                     **values))
        return records

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _config(text: str, folder: str, name: str) -> LoramixConfig:
    """A stored job's config; one a later loramix cannot read (a removed field) keeps its folder and name."""
    try:
        return from_dict(json.loads(text))
    except (LoramixError, ValueError):
        config = LoramixConfig()
        config.output.output_dir, config.output.output_name = folder, name
        return config


def _caption_config(text: str, folder: str) -> CaptionConfig:
    """A stored captioning's config; one a later loramix cannot read keeps its folder."""
    try:
        return CaptionConfig.from_dict(json.loads(text))
    except (LoramixError, ValueError, TypeError):
        return CaptionConfig(data_dir=folder)
