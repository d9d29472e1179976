"""The Train tab's live view of one job: the progress line, the loss plot, the samples, the log and the trained
file; and what one tick of a tab sends.

A tab remembers what its view last received (`Shown`: how far into the job's events each part has been sent).
A tick reads only the events that came since and names the parts that changed (`changed_parts`): the plot when
there are new loss or validation points, the samples when a sample event came, the log when a logged event came,
everything when the job's status changed or the tab shows another job. Gradio 6's LinePlot, Gallery and Textbox
take a whole value, so a part that changed is sent whole; while a job runs the plot is sent at most every
PLOT_EVERY_S seconds (each send makes the browser redraw the whole chart), and at once when the job's status
changes.
"""

from __future__ import annotations

import dataclasses
import html
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from webui import bindings
from webui.jobs import Job
from webui.state import AppState
from webui.train_jobs import STATUS, finished_lora
from webui.train_times import eta_text

PLOT_EVERY_S = 5.0
POINTS = ("step", "validation")  # event kinds that add a point to the loss plot
LOGGED = ("log", "warning", "start", "checkpoint", "sample", "done", "cancelled", "error")  # kinds with a log line


def progress_html(job: Job | None, state: AppState) -> str:
    if job is None:
        return "<div id='train-progress'>No training yet.</div>"
    done, total = job.step(), job.total()
    step = job.latest("step")
    waiting = len(state.jobs.queued()) - (1 if job.status == "queued" else 0)
    queue = f" · {waiting} more queued" if waiting > 0 else ""
    rate = f" · {step.steps_per_s:.2f} steps/s · {eta_text(job)}" if step and job.active else ""
    bar = f"<progress value='{done}' max='{max(total, 1)}' style='width:100%'></progress>"
    why = f" · {html.escape(bindings.for_people(job.error))}" if job.error and job.status == "failed" else ""
    if job.status == "interrupted":
        why = " · the server stopped during this run" + (": Resume continues it" if job.resumable_state()
                                                         else no_state_text(job))
    label = "Captioning" if job.status == "running" and job.kind == "caption" else STATUS[job.status]
    return (f"<div id='train-progress'><b>{label}</b> job {job.id} "
            f"({html.escape(job.name)} in {html.escape(str(job.folder))}): step {done}/{total}{rate}{queue}{why}"
            f"{bar}</div>")


def no_state_text(job: Job) -> str:
    """Why a stopped training job has no Resume: nothing was saved before it stopped (a person looking for the
    button must not have to guess)."""
    if job.kind == "caption":
        return ""
    out = job.config.output
    every = []
    if out.save_every_n_steps:
        every.append(f"every {out.save_every_n_steps} steps")
    if out.save_every_n_epochs:
        every.append(f"every {out.save_every_n_epochs} epochs")
    when = f"it saves {' and '.join(every)}" if every else "it saves at the end only (output.save_every_n_steps)"
    return f": no saved state to resume from ({when})"


def log_text(job: Job | None) -> str:
    if job is None:
        return ""
    lines = []
    for e in list(job.events):
        if e.kind == "log":
            lines.append(e.message)
        elif e.kind == "warning":
            lines.append("⚠ " + e.message)
        elif e.kind == "start":
            lines.append(f"resumed from step {e.step}" if e.step else "started")
        elif e.kind in ("checkpoint", "sample"):
            lines.append(f"step {e.step}: {e.kind} {', '.join(Path(p).name for p in e.paths)}")
        elif e.kind in ("done", "cancelled"):
            lines.append(f"{e.kind} at step {e.step}")
        elif e.kind == "error":
            lines.append(f"stopped at step {e.step}: {e.message}")
    if job.error:
        lines.append("ERROR: " + job.error)
    return "\n".join(lines[-200:])


def loss_frame(job: Job | None, ema: float = 0.9) -> pd.DataFrame | None:
    """Raw losses and their exponential moving average, as two series of one plot (None: nothing yet)."""
    losses = job.losses() if job else []
    if not losses:
        return None
    rows, smooth = [], None
    for step, loss in losses:
        smooth = loss if smooth is None else ema * smooth + (1 - ema) * loss
        rows += [(step, loss, "raw"), (step, smooth, "smoothed")]
    return pd.DataFrame(rows + validation_rows(job), columns=["step", "loss", "series"])


def validation_rows(job: Job) -> list[tuple[int, float, str]]:
    """The run's validation losses as a third series of the loss plot, named with the best step so far."""
    points = [(e.step, e.loss) for e in list(job.events) if e.kind == "validation"]
    if not points:
        return []
    best = min(points, key=lambda p: (p[1], p[0]))[0]
    return [(step, loss, f"validation (best: step {best})") for step, loss in points]


def sample_gallery(job: Job | None) -> list[tuple[str, str]]:
    """Sample images, each labelled with its step and prompt."""
    if job is None:
        return []
    prompts = job.config.sample.prompts if job.kind == "train" else []  # a captioning has no samples
    out = []
    for path, step in job.samples():
        index = Path(path).stem.rsplit("-", 1)[-1]
        prompt = prompts[int(index)] if index.isdigit() and int(index) < len(prompts) else ""
        out.append((path, f"step {step} · {prompt}"))
    return out


@dataclass(frozen=True)
class Shown:
    """What a tab's live view last received: the job, its status, and for each part how many of the job's events
    it reflects."""

    job: int | None = None
    status: str = ""
    plot: int = 0
    plot_at: float = 0.0  # time.monotonic() of the last plot sent
    samples: int = 0
    log: int = 0


PARTS = ("plot", "samples", "log", "file")


@dataclass
class LiveView:
    progress: gr.HTML
    plot: gr.LinePlot
    samples: gr.Gallery
    log: gr.Textbox
    output_file: gr.File
    send_to_mix: gr.Button

    @property
    def parts(self) -> dict:
        """The widget of each of PARTS."""
        return dict(plot=self.plot, samples=self.samples, log=self.log, file=self.output_file)


def _came(events: list, since: int, kinds: tuple) -> bool:
    return any(e.kind in kinds for e in events[since:])


def changed_parts(job: Job | None, shown: Shown | None, now: float | None = None) -> tuple[tuple[str, ...], Shown]:
    """(the PARTS that changed since `shown`, the new `Shown` once they are sent); every part when `shown` is None
    or about another job, or when the job's status changed. Only the events since `shown` are read."""
    now = time.monotonic() if now is None else now
    events = list(job.events) if job else []
    new = Shown(job.id if job else None, job.status if job else "", len(events), now, len(events), len(events))
    if shown is None or (shown.job, shown.status) != (new.job, new.status):
        return PARTS, new
    parts = []
    if _came(events, shown.plot, POINTS) and now - shown.plot_at >= PLOT_EVERY_S:
        parts.append("plot")
    else:
        new = dataclasses.replace(new, plot=shown.plot, plot_at=shown.plot_at)
    if _came(events, shown.samples, ("sample",)):
        parts.append("samples")
    if _came(events, shown.log, LOGGED):
        parts.append("log")
    return tuple(parts), new


def part_values(job: Job | None, parts) -> dict:
    """The value of each named part, as its widget takes it (every part but these: left out)."""
    makers = dict(plot=loss_frame, samples=sample_gallery, log=log_text, file=lambda j: finished_lora(j))
    values = {part: makers[part](job) for part in parts}
    if values.get("file") is not None:
        values["file"] = str(values["file"])
    return values


def build(state: AppState, progress: gr.HTML) -> LiveView:
    """The plot and samples row, the log and the trained file with Send to Mix (wired in the app, which knows
    the Mix tab), under `progress` (built above the job list)."""
    with gr.Row():
        plot = gr.LinePlot(x="step", y="loss", color="series", title="Loss", height=260, elem_id="train-loss",
                           color_map={"raw": "#c7d2fe", "smoothed": "#1d4ed8"})
        samples = gr.Gallery(label="Samples", columns=3, height=260, elem_id="train-samples")
    with gr.Row():
        log = gr.Textbox(label="Log", lines=6, max_lines=12, autoscroll=True, elem_id="train-log")
        with gr.Column():
            output_file = gr.File(label="Trained LoRA", elem_id="train-output", interactive=False)
            send = gr.Button("Send to Mix", elem_id="send-to-mix")
            gr.Markdown(elem_id="train-send-message")
    return LiveView(progress, plot, samples, log, output_file, send)


def progress_line(state: AppState) -> gr.HTML:
    return gr.HTML(progress_html(None, state))
