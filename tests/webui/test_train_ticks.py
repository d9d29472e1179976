"""What a watching tab's tick sends, through the functions the page calls (`train_tab.tick`, then `catch_up` for
the parts a tick names): nothing new when nothing changed, and only the parts that changed otherwise."""

from __future__ import annotations

import gradio as gr
import pytest

from loramix.core.config import LoramixConfig
from loramix.core.events import TrainEvent
from tests.webui.test_handlers import Recorder
from webui import train_live, train_tab
from webui.app import build_app
from webui.jobs import Job, JobManager
from webui.state import AppState

SKIP = gr.skip()


@pytest.fixture
def running(tmp_path):
    """(state, job): a running job that the test feeds events by hand."""
    state = AppState.create(tmp_path / "outputs", jobs=JobManager(tmp_path / "jobs.db", Recorder()))
    config = LoramixConfig()
    config.output.output_dir, config.output.output_name = str(tmp_path / "run"), "run"
    config.train.max_steps, config.sample.prompts = 100, ["a red circle"]
    job = Job(1, config, status="running", events=[TrainEvent("start", 0, 100)])
    state.jobs.jobs.append(job)
    return state, job


def steps(job, first, last):
    job.events += [TrainEvent("step", s, 100, loss=1 / s, steps_per_s=8.0) for s in range(first, last + 1)]


def test_a_tick_after_no_new_events_sends_no_plot_samples_or_log(running):
    state, job = running
    steps(job, 1, 8)
    progress, queue, selected, sent, due = train_tab.tick(state, None, None, now=100.0)
    assert selected == job.id and set(due[1]) >= {"plot", "samples", "log", "file"}  # a fresh tab gets it all
    again = train_tab.tick(state, selected, sent, now=101.0)
    assert again[4] == SKIP  # nothing named: the catch-up event (plot, samples, log, file, picker) does not run
    assert again[:2] == (progress, queue) and again[3] == sent
    later = train_tab.tick(state, selected, sent, now=200.0)  # however long after
    assert later[4] == SKIP


def test_a_tick_after_new_events_names_only_the_parts_they_change(running):
    state, job = running
    steps(job, 1, 8)
    *_, selected, sent, due = train_tab.tick(state, None, None, now=100.0)
    steps(job, 9, 16)  # new losses only
    *_, sent, due = train_tab.tick(state, selected, sent, now=100.0 + train_live.PLOT_EVERY_S)
    assert due[1] == ("plot",)
    sent_parts = train_tab.catch_up(state, selected, due, None)
    assert set(sent_parts) == {"plot"} and list(sent_parts["plot"].query("series == 'raw'").step) == list(range(1, 17))

    job.events.append(TrainEvent("sample", 16, 100, paths=("run/samples/run-000016-0.png",)))  # a sample, no loss
    *_, sent, due = train_tab.tick(state, selected, sent, now=106.0)
    assert due[1] == ("samples", "log")
    sent_parts = train_tab.catch_up(state, selected, due, None)
    assert set(sent_parts) == {"samples", "log"}
    assert sent_parts["samples"] == [("run/samples/run-000016-0.png", "step 16 · a red circle")]
    assert sent_parts["log"].endswith("step 16: sample run-000016-0.png")


def test_the_plot_waits_while_the_job_runs_and_comes_at_once_when_it_ends(running):
    state, job = running
    steps(job, 1, 8)
    *_, selected, sent, _ = train_tab.tick(state, None, None, now=100.0)
    steps(job, 9, 10)
    *_, sent, due = train_tab.tick(state, selected, sent, now=101.0)  # new points, but the plot went 1 s ago
    assert due == SKIP
    job.events.append(TrainEvent("done", 10, 100))
    job.status = "done"
    *_, sent, due = train_tab.tick(state, selected, sent, now=101.5)
    assert {"plot", "samples", "log", "file", "picker", "buttons"} <= set(due[1])
    plot = train_tab.catch_up(state, selected, due, None)["plot"]
    assert plot.step.max() == 10


def test_the_timer_event_has_no_output_it_would_skip(running):
    """In Gradio 6 an output left as gr.skip() is rebuilt for the session (config, API schema): the timer's one
    event outputs only what it always sends; everything else goes through the catch-up event."""
    state, _ = running
    demo = build_app(state)
    ticks = [fn for fn in demo.fns.values()
             if any(event == "tick" and demo.blocks[block].active for block, event in fn.targets)]
    assert len(ticks) == 1
    assert [type(block).__name__ for block in ticks[0].outputs] == ["HTML", "HTML", "State", "State", "State"]


def test_parts_whose_catch_up_never_ran_stay_due_until_one_does(running):
    """Gradio runs only the last of several changes of `due` that came while one catch-up ran: the parts of a
    dropped one (here the end of the job: its file, the picker, the Resume button) must come with the next."""
    state, job = running
    steps(job, 1, 8)
    *_, selected, sent, first = train_tab.tick(state, None, None, now=100.0)
    train_tab.catch_up(state, selected, first, None)
    delivered = first[0]
    job.events.append(TrainEvent("done", 8, 100))
    job.status = "done"
    *_, sent, ended = train_tab.tick(state, selected, sent, now=102.0,
                                     pending=train_tab.undelivered(first, delivered))
    assert {"file", "picker", "buttons"} <= set(ended[1])
    # that catch-up is dropped: the next tick, with nothing new, names the same parts again
    *_, sent, again = train_tab.tick(state, selected, sent, now=104.0, pending=train_tab.undelivered(ended, delivered))
    assert again != SKIP and set(again[1]) >= set(ended[1])
    delivered = again[0]  # this one ran: nothing is due any more
    *_, sent, after = train_tab.tick(state, selected, sent, now=106.0, pending=train_tab.undelivered(again, delivered))
    assert after == SKIP


def test_the_catch_up_event_records_what_it_delivered(running):
    """The page's own wiring: the tick reads the last `due` and the time the catch-up recorded, and the catch-up
    event writes that time (so the carry-over above happens in the app, not only in the function)."""
    state, _ = running
    demo = build_app(state)
    tick_fn = next(fn for fn in demo.fns.values()
                   if any(event == "tick" and demo.blocks[block].active for block, event in fn.targets))
    due_state = tick_fn.outputs[4]
    catch = next(fn for fn in demo.fns.values() if any(block == due_state._id for block, _ in fn.targets))
    assert tick_fn.inputs[-2:][0] is due_state  # the tick reads (..., due, delivered)
    delivered = tick_fn.inputs[-1]
    assert delivered in catch.outputs and delivered not in tick_fn.outputs
    out = catch.fn({**{block: None for block in catch.inputs}, due_state: (100.0, ("log",))})
    assert out[delivered] == 100.0
