"""The Train tab: dataset, preset, the config form, start/cancel, and the live view of the running job."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from loramix.atomic import write_text
from loramix.config import DatasetConfig, LoramixConfig, load_config, to_toml
from loramix.errors import LoramixError
from trainers.dataset import list_images, write_caption
from webui import bindings
from webui.jobs import Job
from webui.state import AppState

POLL_S = 0.5


@dataclass
class TrainTab:
    form: dict
    output_file: gr.File
    send_to_mix: gr.Button
    live: list  # the components `watch` streams into
    follow: object  # generator handler streaming the current job into `live`


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "…"
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_html(job: Job | None, state: AppState) -> str:
    if job is None:
        return "<div id='train-progress'>No training yet.</div>"
    step, start = job.latest("step"), job.latest("start")
    done = step.step if step else (start.step if start else 0)
    total = (step or start).total if (step or start) else job.config.train.max_steps
    waiting = len(state.jobs.queued()) - (1 if job.status == "queued" else 0)
    queue = f" · {waiting} more queued" if waiting > 0 else ""
    rate = f" · {step.steps_per_s:.2f} steps/s · ETA {_fmt_time(step.eta_s)}" if step and job.active else ""
    status = {"queued": "Queued", "running": "Training", "done": "Done", "cancelled": "Cancelled",
              "failed": "Failed"}[job.status]
    bar = f"<progress value='{done}' max='{max(total, 1)}' style='width:100%'></progress>"
    return (f"<div id='train-progress'><b>{status}</b> job {job.id} ({job.config.output.output_name}): "
            f"step {done}/{total}{rate}{queue}{bar}</div>")


def log_text(job: Job | None) -> str:
    if job is None:
        return ""
    lines = []
    for e in list(job.events):
        if e.kind == "log":
            lines.append(e.message)
        elif e.kind in ("checkpoint", "sample"):
            lines.append(f"step {e.step}: {e.kind} {', '.join(Path(p).name for p in e.paths)}")
        elif e.kind in ("done", "cancelled"):
            lines.append(f"{e.kind} at step {e.step}")
    if job.error:
        lines.append("ERROR: " + job.error)
    return "\n".join(lines[-200:])


def view(state: AppState):
    """Everything the live view shows, from the current job."""
    job = state.jobs.current()
    losses = job.losses() if job else []
    plot = pd.DataFrame(losses, columns=["step", "loss"]) if losses else pd.DataFrame({"step": [], "loss": []})
    samples = [(p, Path(p).stem) for p in job.sample_paths()] if job else []
    output = str(job.lora_path) if job and job.status in ("done", "cancelled") and job.lora_path else None
    return progress_html(job, state), plot, samples, log_text(job), output


def watch(state: AppState):
    """Stream the current job's view until it ends (a refreshed page calls this again to reattach)."""
    job = state.jobs.current()
    yield view(state)
    while job is not None and job.active:
        time.sleep(POLL_S)
        yield view(state)
        job = state.jobs.current() if not job.active else job
    yield view(state)


def preset_config(state: AppState, name: str | None) -> LoramixConfig:
    """A preset's config (defaults when none), writing into the app's outputs folder."""
    from loramix.embedded import STYLE_SETS

    config = load_config(state.presets()[name], validate=False) if name else LoramixConfig()
    config.output.output_dir = str(state.outputs / config.output.output_name)
    if not config.dataset.data_dir and (STYLE_SETS / "pastel").is_dir():
        config.dataset.data_dir = str(STYLE_SETS / "pastel")  # a first run works with no typing
    return config


def build(state: AppState) -> TrainTab:
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                presets = state.presets()
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
        with gr.Column(scale=2):
            upload = gr.File(label="Or drop images and captions here", file_count="multiple",
                             file_types=["image", ".txt"])
            thumbs = gr.Gallery(label="Images", columns=4, height=220, elem_id="train-thumbs")
            captions = gr.Dataframe(headers=["image", "caption"], datatype=["str", "str"], interactive=True,
                                    label="Captions (edit, then save)", wrap=True)
            save_captions = gr.Button("Save captions")
    progress = gr.HTML(progress_html(None, state))
    with gr.Row():
        plot = gr.LinePlot(x="step", y="loss", title="Loss", height=260, elem_id="train-loss")
        samples = gr.Gallery(label="Samples", columns=4, height=260, elem_id="train-samples")
    with gr.Row():
        log = gr.Textbox(label="Log", lines=6, max_lines=12, autoscroll=True)
        with gr.Column():
            output_file = gr.File(label="Trained LoRA", elem_id="train-output", interactive=False)
            send = gr.Button("Send to Mix", elem_id="send-to-mix")

    data_dir = form["dataset.data_dir"]
    live = [progress, plot, samples, log, output_file]

    def fill_from_preset(name):
        return bindings.to_widgets(form, preset_config(state, name)) if name else {}

    def show_images(folder, ext):
        try:
            pairs = list_images(DatasetConfig(data_dir=folder, caption_extension=ext or ".txt"))
        except LoramixError as e:
            return [], pd.DataFrame(columns=["image", "caption"]), f"⚠ {e}"
        root = Path(folder).expanduser()
        table = pd.DataFrame([(str(p.relative_to(root)), c) for p, c in pairs], columns=["image", "caption"])
        return [(str(p), c) for p, c in pairs], table, ""

    def take_upload(files):
        if not files:
            return gr.skip()
        return str(state.import_files([getattr(f, "name", f) for f in files], state.upload_folder())[0].parent)

    def write_captions(table, folder, ext):
        rows = table.values.tolist() if hasattr(table, "values") else table
        for image, caption in rows:
            write_caption(Path(folder).expanduser() / image, ext or ".txt", caption or "")
        return f"Saved {len(rows)} captions."

    def start_job(values):
        try:
            config = bindings.to_config(form, values)
            ahead = state.jobs.current()
            job = state.jobs.submit(config)
        except LoramixError as e:
            return f"⚠ {e}"
        if ahead is not None and ahead.active:
            return f"Job {job.id} is queued: it starts when job {ahead.id} ends."
        return f"Job {job.id} started."

    def save_as_preset(name, values):
        name = (name or "").strip()
        if not name or any(c in name for c in "/\\:."):
            return "⚠ Save as preset: give a plain name such as my-style.", gr.skip()
        try:
            config = bindings.to_config(form, values)
        except LoramixError as e:
            return f"⚠ {e}", gr.skip()
        write_text(state.outputs / "presets" / f"{name}.toml", to_toml(config, only_changed=True))
        return f"Saved preset {name}.", gr.update(choices=list(state.presets()), value=name)

    ext = form["dataset.caption_extension"]
    preset.change(fill_from_preset, preset, list(form.values()), api_visibility="private")
    data_dir.blur(show_images, [data_dir, ext], [thumbs, captions, error], api_visibility="private")
    data_dir.submit(show_images, [data_dir, ext], [thumbs, captions, error], api_visibility="private")
    upload.upload(take_upload, upload, data_dir, api_visibility="private").then(
        show_images, [data_dir, ext], [thumbs, captions, error], api_visibility="private")
    save_captions.click(write_captions, [captions, data_dir, ext], error, api_visibility="private")
    save_preset.click(lambda values: save_as_preset(values[preset_name], values), {preset_name, *form.values()},
                      [error, preset], api_visibility="private")
    def follow():
        yield from watch(state)

    start.click(start_job, set(form.values()), error, api_visibility="private").then(
        follow, None, live, show_progress="hidden", api_visibility="private")
    cancel.click(lambda: state.jobs.cancel() and None, None, None, api_visibility="private")
    return TrainTab(form, output_file, send, live, follow)
