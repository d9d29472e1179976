"""Captioning runs as a job in the training queue: one at a time with trainings, in order, cancellable, recorded in
the job store (kind and config survive a restart), a second captioning of the same folder refused; a job list
from before captioning jobs opens."""

import sqlite3

import pytest

from loramix.core.config import CaptionConfig
from loramix.core.errors import LoramixError
from loramix.core.job_store import JobStore
from loramix.embedded.tiny import build_tiny_captioner
from tests.conftest import make_folder
from tests.webui.test_jobs import FakeTrainer, cfg, until
from webui.jobs import JobManager


def test_a_real_captioning_and_a_training_share_the_queue_in_order(tmp_path):
    model = build_tiny_captioner(tmp_path / "blip", "blip")
    data = make_folder(tmp_path / "data", n=3, captions=False)
    fake = FakeTrainer()
    jobs = JobManager(tmp_path / "jobs.db", fake)
    training = jobs.submit(cfg("first"))
    until(lambda: training.status == "running")
    caption = jobs.submit(CaptionConfig(data_dir=str(data), model=str(model), max_new_tokens=4, batch_size=2))
    assert caption.kind == "caption" and caption.status == "queued"  # waits for the training
    with pytest.raises(LoramixError, match="captioning of this folder is already queued"):
        jobs.submit(CaptionConfig(data_dir=str(data), model=str(model)))
    fake.release.set()
    jobs.wait(caption, timeout=120)
    assert caption.status == "done", caption.error
    assert sorted(p.name for p in data.glob("*.txt")) == ["img0.txt", "img1.txt", "img2.txt"]
    assert (caption.step(), caption.total()) == (3, 3) and caption.name == "captions of data"
    assert caption.resumable_state() is None
    again = JobManager(tmp_path / "jobs.db", FakeTrainer())
    stored = again.get(caption.id)
    assert stored.kind == "caption" and stored.config.data_dir == str(data) and stored.status == "done"
    assert stored.step() == 3 and again.get(training.id).kind == "train"


def test_a_captioning_is_cancelled_like_a_training(tmp_path):
    data = make_folder(tmp_path / "data", n=2, captions=False)
    started = []

    def slow_caption(config, events, cancel):
        started.append(config.data_dir)
        until(lambda: cancel.cancelled)
        from trainers.captioner import CaptionResult

        return CaptionResult(cancelled=True)

    jobs = JobManager(tmp_path / "jobs.db", FakeTrainer(), caption_fn=slow_caption)
    job = jobs.submit(CaptionConfig(data_dir=str(data)))
    until(lambda: job.status == "running")
    from types import SimpleNamespace

    from webui.train_tab import progress_html

    assert "<b>Captioning</b> job" in progress_html(job, SimpleNamespace(jobs=jobs))  # the Train tab's job view
    jobs.cancel(job.id)
    jobs.wait(job, timeout=5)
    assert job.status == "cancelled" and started == [str(data)]


def test_a_job_list_from_before_captioning_opens(tmp_path):
    db = sqlite3.connect(tmp_path / "jobs.db")
    db.executescript("""CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, config TEXT NOT NULL,
        status TEXT NOT NULL, folder TEXT NOT NULL, name TEXT NOT NULL, submitted REAL NOT NULL,
        started REAL NOT NULL DEFAULT 0, finished REAL NOT NULL DEFAULT 0, step INTEGER NOT NULL DEFAULT 0,
        total INTEGER NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '', lora_path TEXT NOT NULL DEFAULT '',
        state_path TEXT NOT NULL DEFAULT '');""")
    db.execute("INSERT INTO jobs (config, status, folder, name, submitted) VALUES (?, 'done', '/x', 'old', 1)",
               (cfg("old").to_json(),))
    db.commit()
    db.close()
    store = JobStore(tmp_path / "jobs.db")
    (record,) = store.jobs()
    assert record.kind == "train" and record.config.output.output_name == "old"
    assert store.add(CaptionConfig(data_dir="/d")).kind == "caption"
