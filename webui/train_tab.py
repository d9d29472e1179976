"""The Train tab: dataset, preset, the config form, start/cancel/resume, the queue and the live view.

Every open tab polls the job state with a `gr.Timer` (a viewer never holds a worker slot). Handlers
are plain functions of the app state and a dict of values, testable without a browser.
"""

from __future__ import annotations

import copy
import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd
from PIL import Image

from loramix.atomic import write_text
from loramix.config import LoramixConfig, load_config, to_toml, with_absolute_folders
from loramix.errors import LoramixError
from loramix.paths import plain_name
from loramix.runs import check_run_folder, confine_config, drop_if_empty, new_run_folder
from trainers.captions import captions_table, save_captions
from trainers.dataset import load_image
from webui import bindings
from webui.jobs import Job
from webui.state import AppState

POLL_S = 1.0
THUMB = 160
MAX_THUMBS = 200
STATUS = {"queued": "Queued", "running": "Training", "done": "Done", "cancelled": "Cancelled", "failed": "Failed",
          "removed": "Removed"}


@dataclass
class TrainTab:
    form: dict
    output_file: gr.File
    send_to_mix: gr.Button
    timer: gr.Timer


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "…"
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# ---- the live view (pure functions of the job state) ---------------------------------------------
def progress_html(job: Job | None, state: AppState) -> str:
    if job is None:
        return "<div id='train-progress'>No training yet.</div>"
    done, total = job.step(), job.total()
    step = job.latest("step")
    waiting = len(state.jobs.queued()) - (1 if job.status == "queued" else 0)
    queue = f" · {waiting} more queued" if waiting > 0 else ""
    rate = f" · {step.steps_per_s:.2f} steps/s · ETA {_fmt_time(step.eta_s)}" if step and job.active else ""
    bar = f"<progress value='{done}' max='{max(total, 1)}' style='width:100%'></progress>"
    return (f"<div id='train-progress'><b>{STATUS[job.status]}</b> job {job.id} "
            f"({html.escape(job.name)} in {html.escape(str(job.folder))}): step {done}/{total}{rate}{queue}{bar}</div>")


def queue_html(state: AppState) -> str:
    jobs = state.jobs.listing()
    if not jobs:
        return "<div id='train-queue'><i>The queue is empty.</i></div>"
    rows = "".join(f"<tr><td>{j.id}</td><td>{STATUS[j.status]}</td><td>{j.step()}/{j.total()}</td>"
                   f"<td>{html.escape(str(j.folder))}</td></tr>" for j in jobs[:12])
    return ("<div id='train-queue'><table><tr><th>job</th><th>status</th><th>step</th><th>run folder</th></tr>"
            f"{rows}</table></div>")


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
    prompts = job.config.sample.prompts
    out = []
    for path, step in job.samples():
        index = Path(path).stem.rsplit("-", 1)[-1]
        prompt = prompts[int(index)] if index.isdigit() and int(index) < len(prompts) else ""
        out.append((path, f"step {step} · {prompt}"))
    return out


def view_signature(job: Job | None) -> tuple:
    return (job.id, job.status, len(job.events), job.error) if job else ()


def poll(state: AppState, last: tuple | None):
    """One tick of a tab's live view: (progress, queue, plot, samples, log, output, resume button, signature).

    Only the cheap parts are sent when nothing changed since this tab's last tick.
    """
    job = state.jobs.current()
    signature = view_signature(job)
    progress, queue = progress_html(job, state), queue_html(state)
    resumable = job is not None and job.resumable_state() is not None
    resume = gr.update(visible=resumable)
    if signature == last:
        return progress, queue, gr.skip(), gr.skip(), gr.skip(), gr.skip(), resume, last
    output = str(job.lora_path) if job and job.status in ("done", "cancelled") and job.lora_path else None
    return progress, queue, loss_frame(job), sample_gallery(job), log_text(job), output, resume, signature


# ---- dataset ---------------------------------------------------------------------------------------
def thumbnail(path: Path) -> Image.Image:
    """A small in-memory copy: the browser never gets a path, so any readable folder can be shown."""
    im = load_image(path)
    im.thumbnail((THUMB, THUMB))
    return im


def show_images(state: AppState, folder: str, ext: str, resolution: int | float | None = 512):
    """(thumbnails, caption table, notes) for a data folder; each warning names its file."""
    empty = pd.DataFrame(columns=["image", "caption"])
    if not (folder or "").strip():
        return [], empty, ""
    try:
        folder = str(state.confinement.readable("dataset.data_dir", folder))
        table, warnings = captions_table(folder, ext, int(resolution or 512))
    except (LoramixError, ValueError) as e:
        return [], empty, f"⚠ {e}"
    thumbs = [(thumbnail(p), rel) for rel, p, _ in table[:MAX_THUMBS]]
    frame = pd.DataFrame([(rel, c) for rel, _, c in table], columns=["image", "caption"])
    note = f"{len(table)} images." + (f" Showing the first {MAX_THUMBS}." if len(table) > MAX_THUMBS else "")
    return thumbs, frame, "\n".join([note, *warning_lines(warnings)])


def warning_lines(warnings: list[str], shown: int = 5) -> list[str]:
    """The first few warnings as list items, and how many more there are."""
    lines = [f"- ⚠ {w}" for w in warnings[:shown]]
    if len(warnings) > shown:
        lines.append(f"- … and {len(warnings) - shown} more warnings (the server log has them all).")
    return lines


def write_captions(state: AppState, table, folder: str, ext: str) -> str:
    rows = table.values.tolist() if hasattr(table, "values") else list(table or [])
    try:
        folder = str(state.confinement.readable("dataset.data_dir", folder))
        written = save_captions(folder, ext, [(r[0], r[1]) for r in rows])
    except LoramixError as e:
        return f"⚠ {e}"
    return f"Saved {len(written)} captions."


# ---- jobs ------------------------------------------------------------------------------------------
def preset_config(state: AppState, name: str | None) -> LoramixConfig:
    """A preset's config (defaults when none) as the form shows it: the output name and folder are left
    empty, so that a run is named after its data folder and gets a new folder in outputs/."""
    from loramix.embedded import STYLE_SETS

    config = load_config(state.preset_path(name), validate=False) if name else LoramixConfig()
    config.output.output_dir = ""
    config.output.output_name = ""
    if not config.dataset.data_dir and (STYLE_SETS / "pastel").is_dir():
        config.dataset.data_dir = str(STYLE_SETS / "pastel")  # a first run works with no typing
    return config


def job_config(state: AppState, form: dict, values: dict) -> LoramixConfig:
    """The form's values as a confined config with its own run folder (created here)."""
    values = dict(values)
    name_box, dir_box = form["output.output_name"], form["output.output_dir"]
    data_dir = str(values[form["dataset.data_dir"]] or "").strip()
    name = str(values[name_box] or "").strip() or Path(data_dir.rstrip("/\\")).name or "lora"
    values[name_box] = plain_name("output.output_name", name)
    chosen = str(values[dir_box] or "").strip()
    values[dir_box] = chosen or str(state.outputs / values[name_box])
    config = confine_config(bindings.to_config(form, values), state.confinement)
    if chosen:
        check_run_folder(config)
    else:
        config.output.output_dir = str(new_run_folder(state.outputs, values[name_box]))
    return config


def start_job(state: AppState, form: dict, values: dict) -> str:
    config = None
    try:
        config = job_config(state, form, values)
        ahead = state.jobs.current()
        job = state.jobs.submit(config)
    except LoramixError as e:
        if config is not None and not str(values[form["output.output_dir"]] or "").strip():
            drop_if_empty(config.output.output_dir)
        return f"⚠ {e}"
    if ahead is not None and ahead.active:
        return f"Job {job.id} is queued in {job.folder}: it starts when job {ahead.id} ends."
    return f"Job {job.id} started in {job.folder}."


def resume_job(state: AppState) -> str:
    """Continue the latest cancelled, crashed or NaN-stopped run in its own folder."""
    job = state.jobs.current()
    stored = job.resumable_state() if job else None
    if stored is None:
        return "⚠ Resume: there is no cancelled or stopped run with a saved state."
    config = copy.deepcopy(job.config)
    config.train.resume_from = str(stored)
    try:
        new = state.jobs.submit(config)
    except LoramixError as e:
        return f"⚠ {e}"
    return f"Job {new.id} resumes job {job.id} from its saved state in {job.folder}."


def cancel_job(state: AppState, job_id: int | None) -> str:
    job = state.jobs.cancel(int(job_id) if job_id else None)
    if job is None:
        return "Nothing to cancel."
    return f"Cancelled job {job.id} ({job.folder})" + (": it stops after this step." if job.status == "running" else ".")


def remove_job(state: AppState, job_id: int | None) -> str:
    if not job_id:
        return "⚠ Remove: type the number of a queued job."
    try:
        job = state.jobs.remove(int(job_id))
    except LoramixError as e:
        return f"⚠ {e}"
    return f"Removed job {job.id} from the queue."


def save_as_preset(state: AppState, form: dict, name: str, values: dict):
    try:
        name = plain_name("Save as preset", (name or "").strip())
        config = bindings.to_config(form, {**values, form["output.output_name"]: "preset",
                                           form["output.output_dir"]: ""})
    except LoramixError as e:
        return f"⚠ {e}", gr.skip()
    config.output.output_name, config.output.output_dir = LoramixConfig().output.output_name, ""
    target = state.outputs / "presets" / f"{name}.toml"
    write_text(target, to_toml(with_absolute_folders(config), only_changed=True))
    return f"Saved preset {name}.", gr.update(choices=list(state.presets()), value=name)


# ---- layout ----------------------------------------------------------------------------------------
def _dataset_panel():
    upload = gr.File(label="Or drop images and captions here", file_count="multiple", file_types=["image", ".txt"])
    thumbs = gr.Gallery(label="Images", columns=5, height=230, elem_id="train-thumbs", object_fit="contain")
    notes = gr.Markdown(elem_id="train-dataset-notes")
    captions = gr.Dataframe(headers=["image", "caption"], datatype=["str", "str"], interactive=True,
                            label="Captions (edit, then save)", wrap=True, column_widths=["28%", "72%"],
                            elem_id="train-captions")
    save = gr.Button("Save captions")
    return upload, thumbs, notes, captions, save


def _queue_panel():
    with gr.Row(equal_height=True):
        queue = gr.HTML("<div id='train-queue'><i>The queue is empty.</i></div>")
        with gr.Column(scale=0, min_width=220):
            job_id = gr.Number(label="Job", precision=0, value=None, elem_id="train-job-id")
            with gr.Row():
                cancel_one = gr.Button("Cancel job", size="sm", elem_id="train-cancel-job")
                remove_one = gr.Button("Remove", size="sm", elem_id="train-remove-job")
    return queue, job_id, cancel_one, remove_one


def build(state: AppState) -> TrainTab:
    presets = state.presets()
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                preset = gr.Dropdown(list(presets), value="demo-cpu" if "demo-cpu" in presets else None,
                                     label="Preset", info="Fills every field below; your edits come after.",
                                     interactive=True, scale=3)
                preset_name = gr.Textbox(label="Save as preset", placeholder="my-preset", scale=2)
                save_preset = gr.Button("Save preset", scale=1)
            form = bindings.build_form(preset_config(state, preset.value))
            error = gr.Markdown(elem_id="train-error")
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="train-start")
                cancel = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
                resume = gr.Button("Resume", visible=False, elem_id="train-resume")
        with gr.Column(scale=2):
            upload, thumbs, notes, captions, save_captions_button = _dataset_panel()
    progress = gr.HTML(progress_html(None, state))
    queue, job_id, cancel_one, remove_one = _queue_panel()
    with gr.Row():
        plot = gr.LinePlot(x="step", y="loss", color="series", title="Loss", height=260, elem_id="train-loss",
                           color_map={"raw": "#c7d2fe", "smoothed": "#1d4ed8"})
        samples = gr.Gallery(label="Samples", columns=3, height=260, elem_id="train-samples")
    with gr.Row():
        log = gr.Textbox(label="Log", lines=6, max_lines=12, autoscroll=True, elem_id="train-log")
        with gr.Column():
            output_file = gr.File(label="Trained LoRA", elem_id="train-output", interactive=False)
            send = gr.Button("Send to Mix", elem_id="send-to-mix")
    timer = gr.Timer(POLL_S)
    seen = gr.State(None)

    data_dir, ext, res = form["dataset.data_dir"], form["dataset.caption_extension"], form["dataset.resolution"]
    private = dict(api_visibility="private")
    live = [progress, queue, plot, samples, log, output_file, resume, seen]
    timer.tick(lambda last: poll(state, last), seen, live, show_progress="hidden", concurrency_limit=None,
               **private)

    def take_upload(files):
        if not files:
            return gr.skip(), ""
        try:
            paths = state.import_files([getattr(f, "name", f) for f in files], state.upload_folder(),
                                       (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".txt", ".caption"))
        except LoramixError as e:
            return gr.skip(), f"⚠ {e}"
        return str(paths[0].parent), ""

    def show(folder, e, resolution):
        return show_images(state, folder, e, resolution)

    for event in (data_dir.blur, data_dir.submit):
        event(show, [data_dir, ext, res], [thumbs, captions, notes], **private)
    upload.upload(take_upload, upload, [data_dir, error], **private).then(
        show, [data_dir, ext, res], [thumbs, captions, notes], **private)
    preset.change(lambda name: bindings.to_widgets(form, preset_config(state, name)) if name else {},
                  preset, list(form.values()), **private)
    save_captions_button.click(lambda table, folder, e: write_captions(state, table, folder, e),
                               [captions, data_dir, ext], error, **private)
    save_preset.click(lambda values: save_as_preset(state, form, values[preset_name], values),
                      {preset_name, *form.values()}, [error, preset], **private)
    start.click(lambda values: start_job(state, form, values), set(form.values()), error, **private)
    cancel.click(lambda: cancel_job(state, None), None, error, **private)
    resume.click(lambda: resume_job(state), None, error, **private)
    cancel_one.click(lambda i: cancel_job(state, i), job_id, error, **private)
    remove_one.click(lambda i: remove_job(state, i), job_id, error, **private)
    tab = TrainTab(form, output_file, send, timer)
    tab.first_view = (show, [data_dir, ext, res], [thumbs, captions, notes])
    return tab
