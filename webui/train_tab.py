"""The Train tab: the form column (`train_form`), the dataset panel beside it (`train_data`), the job list and its
actions (`train_jobs`) and the live view of one job (`train_live`), laid out and joined by one timer.

Every open tab polls with one `gr.Timer` event every POLL_S seconds (a viewer never holds a worker slot); a hidden
page (a background browser tab) skips its ticks (Gradio's Timer checks `document.visibilityState`) and catches up
at its first tick once shown. Each event costs the page's browser about 85 ms of CPU on a 2-core box (Gradio
refreshes every component's loading status), on the cores the training uses: hence 2 s, not 1. A tick sends the
progress line and the queue table (a few hundred bytes) and names what else changed since that tab's last tick;
only then does a second event (`catch_up`) send those parts. In Gradio 6 an output left as `gr.skip()` is not
free: the server rebuilds that component for the session (its config and API schema), so the timer's event has
only outputs it always sends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import gradio as gr

from webui import train_data, train_form, train_jobs, train_live
from webui.state import AppState

POLL_S = 2.0


@dataclass(frozen=True)
class Sent:
    """What a tab last received from its ticks: its live view's parts and the picker's choices."""

    view: train_live.Shown | None = None
    choices: tuple = ()


def tick(state: AppState, selected: int | None, sent: Sent | None, about: tuple | None = None,
         now: float | None = None, pending: tuple | None = None):
    """One tick of a tab: (progress line, queue table, the job it shows, the new `Sent`, what is due). The two
    lines are small and always sent; `due` is (time, names of the parts that changed) or gr.skip() when none did.
    A new `due` starts `catch_up`, which sends those parts alone: a tick sends no plot, samples, log, file,
    picker, button or sentence that the tab already has.

    `pending` is the last `due` whose catch-up has not delivered yet (slow, failed, or dropped: Gradio runs only
    the last of several changes that came while one ran). Its parts stay due until one arrives, so that a part
    named once (the Resume button after a restart, the file when a job ends) is never lost."""
    sent = sent or Sent()
    job = train_jobs.shown_job(state, selected)
    shown_id = job.id if job else None
    parts, shown = train_live.changed_parts(job, sent.view, now)
    choices = tuple(train_jobs.job_choices(state))
    if sent.view is None or (sent.view.job, sent.view.status) != (shown.job, shown.status):
        parts += ("picker", "buttons")
    elif choices != sent.choices:
        parts += ("picker",)
    if choices != sent.choices:
        parts += ("estimate",)  # a job that ended may have measured this machine's pace
    if train_jobs.stale_message(state, about) != (gr.skip(), gr.skip()):
        parts += ("message",)
    if pending:
        parts = tuple(dict.fromkeys((*pending[1], *parts)))
    due = (time.monotonic() if now is None else now, parts) if parts else gr.skip()  # a new value: catch_up runs
    # The job id goes back only when it differs from the one this tick read (a tab pinning its first job, or its
    # job removed): a tick still running when the person picks a job or starts one must not put the old id back.
    return (train_live.progress_html(job, state), train_jobs.queue_html(state, shown_id),
            shown_id if shown_id != selected else gr.skip(), Sent(shown, choices), due)


def undelivered(due, delivered: float | None) -> tuple | None:
    """The tab's last `due` if its catch-up has not run yet (`delivered` is the time of the last one that did)."""
    return due if isinstance(due, tuple) and due[0] != delivered else None


def catch_up(state: AppState, selected: int | None, due, about: tuple | None) -> dict:
    """The parts a tick named, by name: the live view's (train_live.PARTS), "picker" (gr.update), "buttons"
    (whether Resume and Cancel show: Resume for a run with a saved state, Cancel for a queued or running job),
    "message" and "about" (the stale sentence cleared); "estimate" is the form's."""
    parts = due[1] if due else ()
    job = train_jobs.shown_job(state, selected)
    out = train_live.part_values(job, [p for p in parts if p in train_live.PARTS])
    if "picker" in parts:
        out["picker"] = gr.update(choices=train_jobs.job_choices(state), value=job.id if job else None)
    if "buttons" in parts:
        out["resume"] = gr.update(visible=job is not None and job.resumable_state() is not None)
        out["cancel"] = gr.update(visible=job is not None and job.active)
    if "message" in parts:
        out["message"], out["about"] = train_jobs.stale_message(state, about)
    return out


@dataclass
class TrainTab:
    form: dict
    output_file: gr.File
    send_to_mix: gr.Button
    timer: gr.Timer
    selected: gr.State  # this tab's job id
    message: gr.Markdown  # the sentence beside Start / Cancel / Resume / Send to Mix
    first_view: tuple  # (fn, inputs, outputs): the pre-filled data folder's images, at page load
    estimate: tuple  # (fn, inputs, outputs): the time estimate beside Start, at page load


def build(state: AppState) -> TrainTab:
    selection = train_jobs.Selection.create()
    with gr.Row():
        with gr.Column(scale=3):
            form = train_form.build(state, selection)
        with gr.Column(scale=2):
            data = train_data.build(state, form.form)
    progress = train_live.progress_line(state)
    jobs = train_jobs.build(state, selection, form.message)
    live = train_live.build(state, progress)
    timer = gr.Timer(POLL_S)
    due = gr.State(None)
    delivered = gr.State(None)  # the time of the last `due` whose catch-up ran

    private = dict(show_progress="hidden", concurrency_limit=None, api_visibility="private")
    def on_tick(chosen, sent, said, last_due, last_delivered):
        return tick(state, chosen, sent, said, pending=undelivered(last_due, last_delivered))

    timer.tick(on_tick, [selection.job, selection.shown, selection.about, due, delivered],
               [progress, jobs.queue, selection.job, selection.shown, due], **private)
    widgets = {**live.parts, "picker": jobs.picker, "resume": jobs.resume, "cancel": jobs.cancel,
               "message": form.message, "about": selection.about}

    def send_due(values):
        parts = catch_up(state, values[selection.job], values[due], values[selection.about])
        out = {widgets[name]: value for name, value in parts.items()}
        out[delivered] = values[due][0] if values[due] else None
        if "estimate" in (values[due] or (0, ()))[1]:
            out[form.estimate], out[form.said_estimate] = form.fresh_estimate(values)
        return out

    due.change(send_due, {selection.job, due, selection.about, form.said_estimate, *form.pace},
               [*widgets.values(), delivered, form.estimate, form.said_estimate], **private)
    return TrainTab(form.form, live.output_file, live.send_to_mix, timer, selection.job, form.message,
                    first_view=(data.show, [form.form[k] for k in ("dataset.data_dir", "dataset.caption_extension",
                                                                   "dataset.resolution")], data.shown),
                    estimate=(form.estimate_now, form.pace, form.estimate))

