"""The Train tab's job list and the actions on the job a tab shows: the queue table, the job picker, Cancel,
Remove and Resume, and the sentence about the last action that goes once its job's status changes.

Each tab shows the job it selected (or, until it selects one, the job it first saw, then keeps it: a job started
elsewhere never takes a tab's view away). Handlers are plain functions of the app state, testable without a browser.
"""

from __future__ import annotations

import copy
import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from loramix.core.errors import LoramixError
from webui.jobs import Job
from webui.state import AppState

STATUS = {"queued": "Queued", "running": "Training", "done": "Done", "cancelled": "Cancelled", "failed": "Failed",
          "interrupted": "Interrupted", "removed": "Removed"}
SHOWN_JOBS = 12  # rows of the queue table; the picker lists every job


@dataclass
class Selection:
    """A tab's own memory: the job it shows, what its ticks last sent it (`train_tab.Sent`; None: send everything),
    and what the sentence beside the buttons is about ((job id, status) or None)."""

    job: gr.State
    shown: gr.State
    about: gr.State

    @classmethod
    def create(cls) -> Selection:
        return cls(gr.State(None), gr.State(None), gr.State(None))

    @property
    def outputs(self) -> list:
        """What an action that picks a job changes, after the sentence: see `with_selection`."""
        return [self.job, self.shown, self.about]


def shown_job(state: AppState, selected: int | None) -> Job | None:
    """The job a tab shows: the one it selected, else the current one (which the tab then keeps)."""
    job = state.jobs.get(selected) if selected is not None else None
    if job is None or job.status == "removed":
        job = state.jobs.current()
    return job


def finished_lora(job: Job | None) -> Path | None:
    """The LoRA file a job left (its last checkpoint after a cancel or a stop), if it is on disk."""
    if job is None or job.active or not job.lora_path:
        return None
    return job.lora_path if Path(job.lora_path).is_file() else None


def queue_html(state: AppState, selected: int | None = None) -> str:
    jobs = state.jobs.listing()
    if not jobs:
        return "<div id='train-queue'><i>No jobs yet.</i></div>"
    mark = {True: " class='selected'", False: ""}
    rows = "".join(f"<tr{mark[j.id == selected]}><td>{j.id}</td>"
                   f"<td>{STATUS[j.status]}</td><td>{j.step()}/{j.total()}</td>"
                   f"<td>{html.escape(str(j.folder))}</td></tr>" for j in jobs[:SHOWN_JOBS])
    more = (f"<i>… and {len(jobs) - SHOWN_JOBS} earlier jobs (pick them under Job).</i>"
            if len(jobs) > SHOWN_JOBS else "")
    return ("<div id='train-queue'><table><tr><th>job</th><th>status</th><th>step</th><th>run folder</th></tr>"
            f"{rows}</table>{more}</div>")


def job_choices(state: AppState) -> list[tuple[str, int]]:
    """Every job, newest first, as (label, id) for the job picker. A job still queued or running is labelled
    without its step (the queue table and the progress line count those), so the list changes only when a job
    comes, goes or changes status, and a tick re-sends it only then."""
    return [(f"{j.id} · {STATUS[j.status]} · {j.name}" + ("" if j.active else f" ({j.step()}/{j.total()})"), j.id)
            for j in state.jobs.listing()]


def resume_job(state: AppState, job_id: int | None) -> tuple[str, int | None]:
    """Continue the selected cancelled, crashed, NaN-stopped or interrupted run in its own folder."""
    job = shown_job(state, job_id)
    stored = job.resumable_state() if job else None
    if stored is None:
        return "⚠ Resume: this job is not a cancelled or stopped run with a saved state.", None
    config = copy.deepcopy(job.config)
    config.train.resume_from = str(stored)
    try:
        new = state.jobs.submit(config)
    except LoramixError as e:
        return f"⚠ {e}", None
    return f"Job {new.id} resumes job {job.id} from its saved state in {job.folder}.", new.id


def cancel_job(state: AppState, job_id: int | None) -> str:
    job = shown_job(state, job_id)
    if job is None or not job.active:
        return f"Job {job.id} is {STATUS[job.status].lower()}; nothing to cancel." if job else "Nothing to cancel."
    state.jobs.cancel(job.id)
    return f"Cancelled job {job.id} ({job.folder})" + (": it stops after this step." if job.status == "running" else ".")


def remove_job(state: AppState, job_id: int | None) -> tuple[str, None]:
    """Take the selected job off the list (a queued one out of the queue); its files stay on disk."""
    job = shown_job(state, job_id)
    if job is None:
        return "⚠ Remove: there is no job.", None
    try:
        state.jobs.remove(job.id)
    except LoramixError as e:
        return f"⚠ {e}", job.id
    return f"Removed job {job.id} from the list; its files stay in {job.folder}.", None


def stale_message(state: AppState, about: tuple | None):
    """(message, about) for one tick: a sentence about a job (`about` = (job id, the status it described: a status,
    or "active" for queued-or-running)) goes once that job's status changes, e.g. "Job 2 is queued…" when job 2
    starts, "Job 2 started…" when it ends."""
    if not about:
        return gr.skip(), gr.skip()
    job = state.jobs.get(about[0])
    if job is not None and (job.status == about[1] or (about[1] == "active" and job.active)):
        return gr.skip(), gr.skip()
    return "", None


def about(state: AppState, message: str, job_id: int | None):
    """(message, what it is about): the shown job and its status now, so the sentence goes when that changes."""
    job = shown_job(state, job_id)
    return message, (job.id, job.status) if job is not None and not message.startswith("⚠") else None


def with_selection(state: AppState, result: tuple[str, int | None]):
    """(message, the job the tab shows next, a reset view memory, what the message is about); keep the
    selection when no job came."""
    message, job_id = result
    if job_id is None and message.startswith("⚠"):
        return message, gr.skip(), gr.skip(), None
    job = state.jobs.get(job_id)
    if job is None:
        return message, job_id, None, None
    said = "queued" if message.startswith(f"Job {job.id} is queued") else "active" if job.active else job.status
    return message, job_id, None, (job.id, said)


@dataclass
class JobsPanel:
    queue: gr.HTML
    picker: gr.Dropdown
    resume: gr.Button
    cancel: gr.Button  # shown only while the job the tab shows is queued or running


def build(state: AppState, selection: Selection, message: gr.Markdown) -> JobsPanel:
    """The queue table, the picker and the three buttons, wired to this tab's selection; their sentences go to
    `message` (the one beside Start)."""
    with gr.Row(equal_height=True):
        queue = gr.HTML("<div id='train-queue'><i>No jobs yet.</i></div>")
        with gr.Column(scale=0, min_width=260):
            picker = gr.Dropdown([], label="Job", info="The job this tab shows; the buttons act on it.",
                                 interactive=True, elem_id="train-job-pick")
            with gr.Row():
                cancel = gr.Button("Cancel", variant="stop", visible=False, size="sm", elem_id="train-cancel")
                remove = gr.Button("Remove", size="sm", elem_id="train-remove-job")
                resume = gr.Button("Resume", visible=False, size="sm", elem_id="train-resume")
    private = dict(api_visibility="private")
    picked = [message, *selection.outputs]
    picker.input(lambda job_id: (job_id, None), picker, [selection.job, selection.shown],  # shown now, not next tick
                 **private)
    cancel.click(lambda job_id: about(state, cancel_job(state, job_id), job_id), selection.job,
                 [message, selection.about], **private)
    resume.click(lambda job_id: with_selection(state, resume_job(state, job_id)), selection.job, picked, **private)
    remove.click(lambda job_id: with_selection(state, remove_job(state, job_id)), selection.job, picked, **private)
    return JobsPanel(queue, picker, resume, cancel)
