"""The job queue without a browser: one job at a time, a visible queue, cancel, the error boundary, and a job list
that survives the process (the job store)."""

import threading
import time

import pytest

from loramix.core.config import LoramixConfig
from loramix.core.errors import DatasetError, LoramixError
from loramix.core.events import TrainEvent
from loramix.core.job_store import JobStore
from trainers.lora_trainer import TrainResult
from webui.jobs import JobManager


class FakeTrainer:
    """Stands in for the engine: runs until released, publishing one step event per tick."""

    def __init__(self):
        self.release = threading.Event()
        self.running = []
        self._done = []

    def __call__(self, config, events, cancel):
        self.running.append(config.output.output_name)
        assert len(self.running) - len(self.finished()) == 1, "two jobs ran at once"
        step = 0
        while not self.release.wait(0.01):
            if cancel.cancelled:
                return self._end(config, TrainResult(None, None, step, cancelled=True))
            step += 1
            events(TrainEvent("step", step, 1000, loss=1.0 / step))
        if config.output.output_name == "bad":
            self._done.append(config.output.output_name)
            raise DatasetError("dataset.data_dir: '/nope' is not a folder.")
        if config.output.output_name == "crash":
            self._done.append(config.output.output_name)
            raise RuntimeError("boom")
        return self._end(config, TrainResult(None, None, step))

    def _end(self, config, result):
        self._done.append(config.output.output_name)
        return result

    def finished(self):
        return self._done


def cfg(name, **changes):
    c = LoramixConfig()
    c.output.output_name = name
    c.output.output_dir = f"/tmp/loramix-test-jobs/{name}"
    for key, value in changes.items():
        section, field = key.split("__")
        setattr(getattr(c, section), field, value)
    return c


def until(condition, timeout=10.0):
    """Wait for `condition()` with a deadline (a stuck worker fails the test instead of hanging it)."""
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out waiting"
        time.sleep(0.005)


def test_one_job_at_a_time_with_a_queue_and_cancel(tmp_path):
    fake = FakeTrainer()
    jobs = JobManager(tmp_path / "jobs.db", fake)
    first, second, third = jobs.submit(cfg("one")), jobs.submit(cfg("two")), jobs.submit(cfg("three"))
    until(lambda: first.status == "running")
    assert jobs.current() is first and [j.id for j in jobs.queued()] == [second.id, third.id]
    jobs.cancel(third.id)
    assert third.status == "cancelled"
    until(lambda: first.events)
    jobs.cancel()  # the running one
    jobs.wait(first, timeout=5)
    assert first.status == "cancelled" and first.losses()
    until(lambda: second.status == "running")
    fake.release.set()
    jobs.wait(second, timeout=5)
    assert second.status == "done" and fake.running == ["one", "two"]


def test_errors_are_kept_as_messages_and_the_worker_survives(tmp_path):
    fake = FakeTrainer()
    fake.release.set()
    jobs = JobManager(tmp_path / "jobs.db", fake)
    bad = jobs.wait(jobs.submit(cfg("bad")), timeout=5)
    assert bad.status == "failed" and bad.error == "dataset.data_dir: '/nope' is not a folder."
    crash = jobs.wait(jobs.submit(cfg("crash")), timeout=5)
    assert crash.status == "failed" and crash.error.startswith("Training crashed: RuntimeError: boom")
    ok = jobs.wait(jobs.submit(cfg("fine")), timeout=5)
    assert ok.status == "done"


def test_a_duplicate_job_or_a_busy_folder_is_refused_and_remove_drops_a_queued_job(tmp_path):
    fake = FakeTrainer()
    jobs = JobManager(tmp_path / "jobs.db", fake)
    first = jobs.submit(cfg("one"))
    until(lambda: first.status == "running")
    same = cfg("one")
    same.output.output_dir = str(tmp_path / "elsewhere")  # another folder, but the same training
    with pytest.raises(LoramixError, match="already running as job"):
        jobs.submit(same)
    with pytest.raises(LoramixError, match="already writes into"):
        jobs.submit(cfg("one", train__seed=7))  # other work into the running job's folder
    folder = tmp_path / "queued"
    folder.mkdir()
    queued = cfg("two")
    queued.output.output_dir = str(folder)
    second = jobs.submit(queued)
    assert [j.id for j in jobs.listing()[:2]] == [second.id, first.id]  # newest first
    with pytest.raises(LoramixError, match="is running; cancel it first"):
        jobs.remove(first.id)
    jobs.remove(second.id)
    assert second.status == "removed" and not folder.exists() and jobs.queued() == []
    fake.release.set()
    jobs.wait(first, timeout=5)
    assert fake.running == ["one"]  # the removed job never ran


def test_every_job_and_its_events_survive_a_restart_and_ids_never_repeat(tmp_path):
    fake = FakeTrainer()
    jobs = JobManager(tmp_path / "jobs.db", fake)
    first = jobs.submit(cfg("one"))
    until(lambda: len(first.events) >= 3)
    jobs.cancel(first.id)
    jobs.wait(first, timeout=5)
    fake.release.set()
    second = jobs.wait(jobs.submit(cfg("two")), timeout=5)
    removed = jobs.submit(cfg("three", train__seed=3))
    jobs.remove(removed.id) if removed.status == "queued" else None
    losses = first.losses()
    # a new process on the same file: every job listed, with what the app showed of it
    again = JobManager(tmp_path / "jobs.db", FakeTrainer())
    listed = {j.id: j for j in again.listing()}
    assert [first.id, second.id] == sorted(i for i in listed if i in (first.id, second.id))
    assert listed[first.id].status == "cancelled" and listed[second.id].status == "done"
    assert listed[first.id].losses() == losses and listed[first.id].step() == losses[-1][0]
    new = again.submit(cfg("four"))
    assert new.id > max(first.id, second.id, removed.id)  # never a reused id, removed ones included


def test_a_job_running_when_the_process_died_is_interrupted_and_queued_ones_run_again(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    running = store.add(cfg("was-running"))
    store.update(running.id, status="running", started=1.0)
    queued = store.add(cfg("was-queued"))
    store.close()  # the process died here: nobody marked anything
    fake = FakeTrainer()
    fake.release.set()
    jobs = JobManager(tmp_path / "jobs.db", fake)
    assert jobs.get(running.id).status == "interrupted"
    assert jobs.restored_queue == [queued.id]
    jobs.wait(jobs.get(queued.id), timeout=5)
    assert jobs.get(queued.id).status == "done" and fake.running == ["was-queued"]


def test_shutdown_stops_the_running_job_after_its_step_and_marks_it_interrupted(tmp_path):
    fake = FakeTrainer()
    jobs = JobManager(tmp_path / "jobs.db", fake)
    first, second = jobs.submit(cfg("one")), jobs.submit(cfg("two"))
    until(lambda: first.events)
    assert jobs.shutdown(timeout=5) is first
    assert first.status == "interrupted" and second.status == "queued"
    with pytest.raises(LoramixError, match="stopping"):
        jobs.submit(cfg("three"))
    time.sleep(0.1)
    assert fake.running == ["one"]  # nothing new starts while stopping
    again = JobManager(tmp_path / "jobs.db", FakeTrainer())
    assert again.get(first.id).status == "interrupted"


def test_a_failing_job_list_never_stops_the_worker(tmp_path, monkeypatch):
    import sqlite3

    fake = FakeTrainer()
    fake.release.set()
    jobs = JobManager(tmp_path / "jobs.db", fake)

    def full(*_a, **_k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(jobs.store, "update", full)
    first = jobs.wait(jobs.submit(cfg("one")), timeout=5)
    second = jobs.wait(jobs.submit(cfg("two")), timeout=5)
    assert first.status == "done" and second.status == "done" and fake.running == ["one", "two"]


def test_an_interrupted_job_says_whether_resume_can_continue_it(tmp_path):
    """After a restart, a person looks for Resume: the progress line says it continues the job, or why there is
    none (nothing saved before the server stopped, and how often the run saves)."""
    from types import SimpleNamespace

    from webui.train_live import progress_html

    store = JobStore(tmp_path / "jobs.db")
    ids = []
    for name, every in (("saved", 5), ("unsaved", 100), ("end-only", 0)):
        job = store.add(cfg(name, output__output_dir=str(tmp_path / name), output__save_every_n_steps=every))
        store.update(job.id, status="running", started=1.0, step=12)
        ids.append(job.id)
    store.close()
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "saved-state.safetensors").write_bytes(b"stands in for a state")
    jobs = JobManager(tmp_path / "jobs.db", FakeTrainer())
    state = SimpleNamespace(jobs=jobs)
    saved, unsaved, end_only = (progress_html(jobs.get(i), state) for i in ids)
    assert "the server stopped during this run: Resume continues it" in saved
    assert "no saved state to resume from (it saves every 100 steps)" in unsaved and "Resume continues" not in unsaved
    assert "no saved state to resume from (it saves at the end only" in end_only


def test_a_finished_or_failed_job_gives_its_memory_back(tmp_path, monkeypatch):
    """The allocator keeps freed memory for the next preview or step (loramix.core.allocator); when a job ends,
    what it held goes back to the system, so the app does not sit at a training's peak."""
    trims = []
    monkeypatch.setattr("webui.jobs.give_back_memory", lambda: trims.append(time.time()))
    fake = FakeTrainer()
    fake.release.set()
    jobs = JobManager(tmp_path / "jobs.db", fake)
    ended = jobs.wait(jobs.submit(cfg("fine")), timeout=5)
    until(lambda: len(trims) == 1)
    assert trims[0] >= ended.finished
    jobs.wait(jobs.submit(cfg("crash")), timeout=5)
    until(lambda: len(trims) == 2)
