"""The job queue without a browser: one job at a time, a visible queue, cancel, and the error boundary."""

import threading

from loramix.config import LoramixConfig
from loramix.errors import DatasetError
from loramix.events import TrainEvent
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


def cfg(name):
    c = LoramixConfig()
    c.output.output_name = name
    return c


def test_one_job_at_a_time_with_a_queue_and_cancel():
    fake = FakeTrainer()
    jobs = JobManager(fake)
    first, second, third = jobs.submit(cfg("one")), jobs.submit(cfg("two")), jobs.submit(cfg("three"))
    while first.status != "running":
        pass
    assert jobs.current() is first and [j.id for j in jobs.queued()] == [second.id, third.id]
    jobs.cancel(third.id)
    assert third.status == "cancelled"
    while not first.events:
        pass
    jobs.cancel()  # the running one
    jobs.wait(first, timeout=5)
    assert first.status == "cancelled" and first.losses()
    while second.status != "running":
        pass
    fake.release.set()
    jobs.wait(second, timeout=5)
    assert second.status == "done" and fake.running == ["one", "two"]


def test_errors_are_kept_as_messages_and_the_worker_survives():
    fake = FakeTrainer()
    fake.release.set()
    jobs = JobManager(fake)
    bad = jobs.wait(jobs.submit(cfg("bad")), timeout=5)
    assert bad.status == "failed" and bad.error == "dataset.data_dir: '/nope' is not a folder."
    crash = jobs.wait(jobs.submit(cfg("crash")), timeout=5)
    assert crash.status == "failed" and crash.error.startswith("Training crashed: RuntimeError: boom")
    ok = jobs.wait(jobs.submit(cfg("fine")), timeout=5)
    assert ok.status == "done"
