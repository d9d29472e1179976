"""The Train tab: dataset, preset, the config form, start/cancel/resume, the job list and the view of one job.

Every open tab polls the job state with a `gr.Timer` (a viewer never holds a worker slot). Each tab shows the
job it selected (or, until it selects one, the job it first saw, then keeps it: a job started elsewhere never
takes a tab's view away). Cancel, Remove, Resume and Send to Mix act on that job. Handlers are plain functions
of the app state and a dict of values, testable without a browser.
"""

from __future__ import annotations

import copy
import functools
import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd
from PIL import Image, ImageDraw

from loramix.core.config import LoramixConfig, load_config, to_toml, with_absolute_folders
from loramix.core.errors import LoramixError
from loramix.core.paths import plain_name, unique_name
from loramix.core.runs import check_run_folder, confine_config, drop_if_empty, new_run_folder
from loramix.core.writer import check_target, make_folder, write_text
from trainers.captions import captions_table, save_captions
from trainers.dataset import load_image
from webui import bindings
from webui.jobs import Job
from webui.state import AppState
from webui.train_times import PACE_KEYS, eta_text, start_estimate

POLL_S = 1.0
THUMB = 160
MAX_THUMBS = 200
THUMB_DECODE_PIXELS = 3840 * 2160  # a larger image that is not a JPEG (no reduced decode) shows a placeholder
MAX_CAPTION_SHOWN = 2000  # characters of one caption sent to the page
SHORTENED = " … [shortened for display]"
STATUS = {"queued": "Queued", "running": "Training", "done": "Done", "cancelled": "Cancelled", "failed": "Failed",
          "interrupted": "Interrupted", "removed": "Removed"}


@dataclass
class TrainTab:
    form: dict
    output_file: gr.File
    send_to_mix: gr.Button
    timer: gr.Timer
    selected: gr.State  # this tab's job id
    message: gr.Markdown  # the sentence beside Start / Cancel / Resume / Send to Mix


# ---- the live view (pure functions of the job state) ---------------------------------------------
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
        why = " · the server stopped during this run" + (": Resume continues it" if job.resumable_state() else "")
    label = "Captioning" if job.status == "running" and job.kind == "caption" else STATUS[job.status]
    return (f"<div id='train-progress'><b>{label}</b> job {job.id} "
            f"({html.escape(job.name)} in {html.escape(str(job.folder))}): step {done}/{total}{rate}{queue}{why}"
            f"{bar}</div>")


def queue_html(state: AppState, selected: int | None = None) -> str:
    jobs = state.jobs.listing()
    if not jobs:
        return "<div id='train-queue'><i>No jobs yet.</i></div>"
    mark = {True: " class='selected'", False: ""}
    rows = "".join(f"<tr{mark[j.id == selected]}><td>{j.id}</td>"
                   f"<td>{STATUS[j.status]}</td><td>{j.step()}/{j.total()}</td>"
                   f"<td>{html.escape(str(j.folder))}</td></tr>" for j in jobs[:12])
    more = f"<i>… and {len(jobs) - 12} earlier jobs (pick them under Job).</i>" if len(jobs) > 12 else ""
    return ("<div id='train-queue'><table><tr><th>job</th><th>status</th><th>step</th><th>run folder</th></tr>"
            f"{rows}</table>{more}</div>")


def job_choices(state: AppState) -> list[tuple[str, int]]:
    """Every job, newest first, as (label, id) for the job picker."""
    return [(f"{j.id} · {STATUS[j.status]} · {j.name} ({j.step()}/{j.total()})", j.id) for j in state.jobs.listing()]


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


def view_signature(job: Job | None) -> tuple:
    return (job.id, job.status, len(job.events), job.error) if job else ()


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


def poll(state: AppState, selected: int | None, last: tuple | None):
    """One tick of a tab's view: (progress, queue, job picker, plot, samples, log, output, resume button,
    selected job, signature). Only the cheap parts are sent when nothing changed since this tab's last tick."""
    job = shown_job(state, selected)
    selected = job.id if job else None
    signature = view_signature(job)
    progress, queue = progress_html(job, state), queue_html(state, selected)
    picker = gr.update(choices=job_choices(state), value=selected)
    resume = gr.update(visible=job is not None and job.resumable_state() is not None)
    if signature == last:
        return progress, queue, picker, gr.skip(), gr.skip(), gr.skip(), gr.skip(), resume, selected, last
    lora = finished_lora(job)
    return (progress, queue, picker, loss_frame(job), sample_gallery(job), log_text(job),
            str(lora) if lora else None, resume, selected, signature)


# ---- dataset ---------------------------------------------------------------------------------------
def thumbnail(path: Path) -> Image.Image:
    """A small in-memory copy: the browser never gets a path, so any readable folder can be shown.

    Its cost does not grow with the pixel count: a JPEG decodes at 1/2 to 1/8 scale, another format over
    THUMB_DECODE_PIXELS is not decoded (a placeholder names its size), and thumbnails are kept in memory
    by path, modification time and size, so showing a folder again decodes nothing.
    """
    stat = Path(path).stat()
    return _thumbnail(str(path), stat.st_mtime_ns, stat.st_size).copy()


@functools.lru_cache(maxsize=256)  # 256 × 160 × 160 × 3 bytes: about 20 MB
def _thumbnail(path: str, _mtime_ns: int, _size: int) -> Image.Image:
    with Image.open(path) as im:
        (width, height), kind = im.size, im.format
    if kind != "JPEG" and width * height > THUMB_DECODE_PIXELS:
        placeholder = Image.new("RGB", (THUMB, THUMB), (225, 225, 225))
        ImageDraw.Draw(placeholder).text((8, THUMB // 2 - 12), f"{width}x{height} {kind}\nnot previewed", fill=(60, 60, 60))
        return placeholder
    im = load_image(Path(path), cover=(THUMB, THUMB))
    im.thumbnail((THUMB, THUMB))
    return im


def shown_caption(caption: str) -> str:
    """A caption as the table shows it: at most MAX_CAPTION_SHOWN characters (training reads the whole file)."""
    return caption if len(caption) <= MAX_CAPTION_SHOWN else caption[:MAX_CAPTION_SHOWN] + SHORTENED


def show_images(state: AppState, folder: str, ext: str, resolution: int | float | None = 512):
    """(thumbnails, caption table, notes) for a data folder; each warning names its file."""
    empty = pd.DataFrame(columns=["image", "caption"])
    if not (folder or "").strip():
        return [], empty, ""
    try:
        folder = str(state.confinement.readable_folder("dataset.data_dir", folder))
        table, warnings = captions_table(folder, ext, int(resolution or 512))
    except (LoramixError, ValueError) as e:
        return [], empty, f"⚠ {bindings.for_people(str(e))}"
    thumbs = [(thumbnail(p), rel) for rel, p, _ in table[:MAX_THUMBS]]
    frame = pd.DataFrame([(rel, shown_caption(c)) for rel, _, c in table], columns=["image", "caption"])
    warnings = [*(f"{rel}: its caption has {len(c):,} characters; the table shows the first {MAX_CAPTION_SHOWN:,} "
                  "(training reads it whole). Edit that file in a text editor: Save captions leaves it as it is."
                  for rel, _, c in table if len(c) > MAX_CAPTION_SHOWN), *warnings]
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
    kept = [(r[0], r[1]) for r in rows if not str(r[1] or "").endswith(SHORTENED)]  # never save a shortened view
    try:
        folder = str(state.confinement.readable_folder("dataset.data_dir", folder))
        written = save_captions(folder, ext, kept)
    except LoramixError as e:
        return f"⚠ {e}"
    left = len(rows) - len(kept)
    return f"Saved {len(written)} captions." + (f" Left {left} shortened captions as they are." if left else "")


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
    config = confine_config(bindings.to_config(form, values), state.confinement, state.reserved_folders())
    if chosen:
        check_run_folder(config)
    else:
        config.output.output_dir = str(new_run_folder(state.outputs, values[name_box]))
    return config


def check_data_folder(state: AppState, values: dict, form: dict) -> None:
    """Refuse at Start, before a run folder is made, a data folder the page flags: the same scan and sentence."""
    folder = str(values[form["dataset.data_dir"]] or "").strip()
    if not folder:
        raise LoramixError("dataset.data_dir: give the folder of training images.")
    try:
        folder = str(state.confinement.readable_folder("dataset.data_dir", folder))
        captions_table(folder, values[form["dataset.caption_extension"]], int(values[form["dataset.resolution"]] or 512))
    except ValueError as e:
        raise LoramixError(f"dataset.data_dir: {e}") from e


def start_job(state: AppState, form: dict, values: dict) -> tuple[str, int | None]:
    """(the sentence to show, the new job's id or None)."""
    config = None
    try:
        check_data_folder(state, values, form)
        config = job_config(state, form, values)
        ahead = state.jobs.current()
        job = state.jobs.submit(config)
    except LoramixError as e:
        if config is not None and not str(values[form["output.output_dir"]] or "").strip():
            drop_if_empty(config.output.output_dir)
        return f"⚠ {bindings.for_people(str(e))}", None
    if ahead is not None and ahead.active:
        return f"Job {job.id} is queued in {job.folder}: it starts when job {ahead.id} ends.", job.id
    return f"Job {job.id} started in {job.folder}.", job.id


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


def save_as_preset(state: AppState, form: dict, name: str, values: dict, replace: bool = False):
    """Save the form as a user preset in outputs/presets; a shipped preset's name is refused (it could never be
    selected), and an existing user preset is replaced only with `replace`."""
    try:
        name = plain_name("Save as preset", (name or "").strip())
        if name.casefold() in state.shipped_presets():
            raise LoramixError(f"Save as preset: {name!r} is the name of a preset that ships with loramix; pick "
                               "another name.")
        unique_name("Save as preset", name, state.presets())
        config = bindings.to_config(form, {**values, form["output.output_name"]: "preset",
                                           form["output.output_dir"]: ""})
        config.output.output_name, config.output.output_dir = LoramixConfig().output.output_name, ""
        presets = make_folder(state.outputs / "presets", within=state.outputs)
        rules = dict(replace=bool(replace), within=presets, field="Save as preset")
        target = check_target(presets / f"{name}.toml", **rules)
        write_text(target, to_toml(with_absolute_folders(config), only_changed=True), **rules)
    except LoramixError as e:
        return f"⚠ {bindings.for_people(str(e))}", gr.skip()
    return f"Saved preset {name}.", gr.update(choices=list(state.presets()), value=name)


# ---- layout ----------------------------------------------------------------------------------------
def _dataset_panel():
    upload = gr.File(label="Or drop images and captions here", file_count="multiple", file_types=["image", ".txt"])
    thumbs = gr.Gallery(label="Images", columns=5, height=230, elem_id="train-thumbs", object_fit="contain")
    notes = gr.Markdown(elem_id="train-dataset-notes")
    captions = gr.Dataframe(headers=["image", "caption"], datatype=["str", "str"], interactive=True,
                            static_columns=[0], label="Captions (edit, then save)", wrap=True,
                            column_widths=["28%", "72%"], elem_id="train-captions")
    save = gr.Button("Save captions")
    return upload, thumbs, notes, captions, save


def _jobs_panel():
    with gr.Row(equal_height=True):
        queue = gr.HTML("<div id='train-queue'><i>No jobs yet.</i></div>")
        with gr.Column(scale=0, min_width=260):
            picker = gr.Dropdown([], label="Job", info="The job this tab shows; the buttons act on it.",
                                 interactive=True, elem_id="train-job-pick")
            with gr.Row():
                cancel = gr.Button("Cancel", variant="stop", size="sm", elem_id="train-cancel")
                remove = gr.Button("Remove", size="sm", elem_id="train-remove-job")
                resume = gr.Button("Resume", visible=False, size="sm", elem_id="train-resume")
    return queue, picker, cancel, remove, resume


def build(state: AppState) -> TrainTab:
    presets = state.presets()
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                preset = gr.Dropdown(list(presets), value="demo-cpu" if "demo-cpu" in presets else None,
                                     label="Preset", info="Fills every field below; your edits come after.",
                                     interactive=True, allow_custom_value=True, scale=3)  # saved in another tab too
                preset_name = gr.Textbox(label="Save as preset", placeholder="my-preset", scale=2)
                with gr.Column(scale=1, min_width=140):
                    preset_replace = gr.Checkbox(False, label="replace", elem_id="train-preset-replace")
                    save_preset = gr.Button("Save preset", elem_id="train-preset-save")
            preset_message = gr.Markdown(elem_id="train-preset-message")
            form = bindings.build_form(preset_config(state, preset.value))
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="train-start")
            estimate = gr.Markdown(elem_id="train-estimate")
            error = gr.Markdown(elem_id="train-error")
        with gr.Column(scale=2):
            upload, thumbs, notes, captions, save_captions_button = _dataset_panel()
            captions_message = gr.Markdown(elem_id="train-captions-message")
    progress = gr.HTML(progress_html(None, state))
    queue, picker, cancel, remove, resume = _jobs_panel()
    with gr.Row():
        plot = gr.LinePlot(x="step", y="loss", color="series", title="Loss", height=260, elem_id="train-loss",
                           color_map={"raw": "#c7d2fe", "smoothed": "#1d4ed8"})
        samples = gr.Gallery(label="Samples", columns=3, height=260, elem_id="train-samples")
    with gr.Row():
        log = gr.Textbox(label="Log", lines=6, max_lines=12, autoscroll=True, elem_id="train-log")
        with gr.Column():
            output_file = gr.File(label="Trained LoRA", elem_id="train-output", interactive=False)
            send = gr.Button("Send to Mix", elem_id="send-to-mix")
            send_message = gr.Markdown(elem_id="train-send-message")
    timer = gr.Timer(POLL_S)
    seen, selected, about = gr.State(None), gr.State(None), gr.State(None)

    data_dir, ext, res = form["dataset.data_dir"], form["dataset.caption_extension"], form["dataset.resolution"]
    private = dict(api_visibility="private")
    live = [progress, queue, picker, plot, samples, log, output_file, resume, selected, seen]
    timer.tick(lambda chosen, last: poll(state, chosen, last), [selected, seen], live, show_progress="hidden",
               concurrency_limit=None, **private)
    timer.tick(lambda said: stale_message(state, said), about, [error, about], show_progress="hidden",
               concurrency_limit=None, **private)

    def take_upload(files):
        if not files:
            return gr.skip(), ""
        try:
            paths = state.import_files([getattr(f, "name", f) for f in files],
                                       (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".txt", ".caption"))
        except LoramixError as e:
            return gr.skip(), f"⚠ {e}"
        return str(paths[0].parent), ""

    def show(folder, e, resolution):
        return show_images(state, folder, e, resolution)

    def pick(job_id):  # a new choice: show that job now, not at the next tick
        return job_id, None

    for event in (data_dir.blur, data_dir.submit):
        event(show, [data_dir, ext, res], [thumbs, captions, notes], **private)
    upload.upload(take_upload, upload, [data_dir, captions_message], **private).then(
        show, [data_dir, ext, res], [thumbs, captions, notes], **private)
    preset.change(lambda name: bindings.to_widgets(form, preset_config(state, name)) if name else {},
                  preset, list(form.values()), **private)
    preset.focus(lambda: gr.update(choices=list(state.presets())), None, preset, **private)
    save_captions_button.click(lambda table, folder, e: write_captions(state, table, folder, e),
                               [captions, data_dir, ext], captions_message, **private)
    save_preset.click(lambda values: save_as_preset(state, form, values[preset_name], values,
                                                    values[preset_replace]),
                      {preset_name, preset_replace, *form.values()}, [preset_message, preset], **private)
    with_selection = functools.partial(_with_selection, state)
    start.click(lambda values: with_selection(start_job(state, form, values)), set(form.values()),
                [error, selected, seen, about], **private)
    picker.input(pick, picker, [selected, seen], **private)
    cancel.click(lambda job_id: _about(state, cancel_job(state, job_id), job_id), selected, [error, about],
                 **private)
    resume.click(lambda job_id: with_selection(resume_job(state, job_id)), selected,
                 [error, selected, seen, about], **private)
    remove.click(lambda job_id: with_selection(remove_job(state, job_id)), selected,
                 [error, selected, seen, about], **private)
    pace = [form[name] for name in (*PACE_KEYS, "train.max_steps")]
    for widget in pace:
        widget.change(lambda values: start_estimate(state, form, values), set(pace), estimate, **private)

    def fresh_estimate(values):  # a run that just finished measured a pace: say it without a field change
        text = start_estimate(state, form, values)
        return (gr.skip(), gr.skip()) if text == values[said_estimate] else (text, text)
    said_estimate = gr.State("")
    timer.tick(fresh_estimate, {*pace, said_estimate}, [estimate, said_estimate], show_progress="hidden",
               concurrency_limit=None, **private)
    tab = TrainTab(form, output_file, send, timer, selected, send_message)
    tab.first_view = (show, [data_dir, ext, res], [thumbs, captions, notes])
    tab.estimate = (lambda values: start_estimate(state, form, values), set(pace), estimate)
    return tab


def _about(state: AppState, message: str, job_id: int | None):
    """(message, what it is about): the shown job and its status now, so the sentence goes when that changes."""
    job = shown_job(state, job_id)
    return message, (job.id, job.status) if job is not None and not message.startswith("⚠") else None


def _with_selection(state: AppState, result: tuple[str, int | None]):
    """(message, the job the tab shows next, a reset view signature, what the message is about); keep the
    selection when no job came."""
    message, job_id = result
    if job_id is None and message.startswith("⚠"):
        return message, gr.skip(), gr.skip(), None
    job = state.jobs.get(job_id)
    if job is None:
        return message, job_id, None, None
    said = "queued" if message.startswith(f"Job {job.id} is queued") else "active" if job.active else job.status
    return message, job_id, None, (job.id, said)
