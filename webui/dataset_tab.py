"""The Dataset tab: what a folder holds (tags, sizes and buckets, near-duplicates, uncaptioned images), captioning
it as a job in the training queue, bulk tag edits with a preview, a save and an undo, and CLIPSeg masks (shown
as a red tint over the thumbnails where the mask is dark).

Handlers are plain functions of the app state and the widget values (testable without a browser); every folder
and model a client names goes through the app's confinement (`state.confinement`) before the engine sees it.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd
from PIL import Image

from loramix.core.config import DEFAULT_CAPTIONER, CaptionConfig
from loramix.core.errors import LoramixError
from trainers.clipseg_masks import DEFAULT_CLIPSEG, make_masks, mask_path
from trainers.dataset_report import DatasetReport, dataset_report
from trainers.tags import OPS, TagChange, TagEdit, plan_edits, save_changes, undo_last
from webui.state import AppState
from webui.train_tab import MAX_THUMBS, SHORTENED, shown_caption, thumbnail

TAG_COLUMNS = ["tag", "count", "images"]
IMAGE_COLUMNS = ["image", "size", "bucket", "caption"]
DUP_COLUMNS = ["image", "near-duplicate of", "bits apart"]
PREVIEW_COLUMNS = ["image", "before", "after"]
CAPTION_MODES = ["skip", "replace", "prepend", "append"]
EDIT_LABELS = {"add": "add a tag", "remove": "remove a tag", "rename": "rename a tag (whole tag)",
               "replace": "replace words inside tags", "dedupe": "drop duplicate tags", "sort": "sort tags",
               "trigger": "trigger word first"}


def _folder(state: AppState, folder: str) -> str:
    if not (folder or "").strip():
        raise LoramixError("dataset.data_dir: give the folder of images.")
    return str(state.confinement.readable_folder("dataset.data_dir", folder.strip()))


# ---- what the set holds -------------------------------------------------------------------------
def report_frames(report: DatasetReport) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    tags = pd.DataFrame(report.tags, columns=TAG_COLUMNS)
    images = pd.DataFrame([(r.image, f"{r.width}x{r.height}", f"{r.bucket[0]}x{r.bucket[1]}", shown_caption(r.caption))
                           for r in report.images], columns=IMAGE_COLUMNS)
    dups = pd.DataFrame(report.duplicates, columns=DUP_COLUMNS)
    return tags, images, dups


def show_report(state: AppState, folder: str, ext: str, resolution) -> tuple:
    """(summary, tag table, image table, duplicate table, thumbnails) for the folder at `resolution`."""
    empty = (pd.DataFrame(columns=TAG_COLUMNS), pd.DataFrame(columns=IMAGE_COLUMNS), pd.DataFrame(columns=DUP_COLUMNS))
    try:
        report = dataset_report(_folder(state, folder), ext, int(resolution or 512))
    except (LoramixError, ValueError) as e:
        return (f"⚠ {e}", *empty, [])
    root = _folder(state, folder)
    thumbs = [(masked_thumbnail(Path(root) / r.image), r.image) for r in report.images[:MAX_THUMBS]]
    lines = [report.summary(), *(f"- ⚠ {w}" for w in report.warnings[:5])]
    return ("\n".join(lines), *report_frames(report), thumbs)


def masked_thumbnail(image: Path) -> Image.Image:
    """The thumbnail, tinted red where its mask (if it has one) leaves the picture out."""
    thumb = thumbnail(image)
    mask_file = mask_path(image)
    if not mask_file.is_file():
        return thumb
    try:
        with Image.open(mask_file) as mask:
            mask = mask.convert("L").resize(thumb.size)
    except (OSError, ValueError, SyntaxError):
        return thumb
    tinted = Image.blend(thumb, Image.new("RGB", thumb.size, (220, 30, 30)), 0.6)
    return Image.composite(thumb, tinted, mask)


def image_details(images, dups, image: str) -> str:
    """One image, as a click on its thumbnail shows it: size, bucket, caption and its near-duplicates, read from
    the tables the page already shows (a click decodes nothing)."""
    rows = images.values.tolist() if hasattr(images, "values") else list(images or [])
    row = next((r for r in rows if r[0] == image), None)
    if row is None:
        return f"⚠ {image} is not in the table; load the folder again."
    pairs = dups.values.tolist() if hasattr(dups, "values") else list(dups or [])
    twins = [f"{b if a == image else a} ({d} bits)" for a, b, d in pairs if image in (a, b)]
    caption = html.escape(str(row[3])) if row[3] else "*no caption*"
    return (f"**{html.escape(image)}** · {row[1]} → bucket {row[2]}"
            + (f" · near-duplicate of {html.escape(', '.join(twins))}" if twins else "") + f"\n\n{caption}")


# ---- bulk tags -------------------------------------------------------------------------------------
def preview_tags(state: AppState, folder: str, ext: str, op: str, tag: str, new: str, first: bool,
                 only: str) -> tuple[pd.DataFrame, list[dict], str]:
    """(the changes as a table, the plan to save, a sentence): nothing is written."""
    empty = pd.DataFrame(columns=PREVIEW_COLUMNS)
    try:
        edit = TagEdit(op, (tag or "").strip(), (new or "").strip(), bool(first))
        selection = [p.strip() for p in (only or "").split(",") if p.strip()]
        changes = plan_edits(_folder(state, folder), ext, [edit], selection)
    except LoramixError as e:
        return empty, [], f"⚠ {e}"
    frame = pd.DataFrame([(c.image, shown_caption(c.before), shown_caption(c.after)) for c in changes],
                         columns=PREVIEW_COLUMNS)
    plan = [{"image": c.image, "before": c.before, "after": c.after} for c in changes]
    verb = "would change" if changes else "would change; nothing to save"
    return frame, plan, f"{len(changes)} captions {verb} ({edit.describe()}). Press Save to write them."


def save_tags(state: AppState, folder: str, ext: str, plan: list[dict]) -> tuple[list[dict], str]:
    """Write the previewed plan (a plan is used once); returns the emptied plan and a sentence."""
    if not plan:
        return [], "⚠ Preview an edit first: Save writes the changes the preview shows."
    try:
        changes = [TagChange(p["image"], p["before"], p["after"]) for p in plan]
        if any(c.after.endswith(SHORTENED) for c in changes):
            raise LoramixError("Tags: a preview row was shortened for display; nothing was saved.")
        written = save_changes(_folder(state, folder), ext, changes)
    except (LoramixError, KeyError, TypeError) as e:
        return plan, f"⚠ {e}"
    return [], f"Saved {len(written)} captions. Undo puts them back."


def undo_tags(state: AppState, folder: str) -> str:
    try:
        restored = undo_last(_folder(state, folder))
    except LoramixError as e:
        return f"⚠ {e}"
    return f"Put back {len(restored)} captions."


# ---- masks -------------------------------------------------------------------------------------------
def masks_for_folder(state: AppState, folder: str, prompt: str, model: str, threshold, replace: bool) -> str:
    """Write the folder's masks now (CLIPSeg is small; this runs in the request, not in the job queue)."""
    try:
        model = state.confinement.readable_base("masks.model", (model or "").strip() or DEFAULT_CLIPSEG)
        result = make_masks(_folder(state, folder), prompt or "", model, float(threshold or 0), bool(replace))
    except (LoramixError, ValueError) as e:
        return f"⚠ {e}"
    failed = f" {len(result.failed)} failed: {'; '.join(result.failed[:3])}." if result.failed else ""
    return f"Wrote {len(result.written)} masks; kept {result.skipped} that existed.{failed}"


# ---- captioning as a job --------------------------------------------------------------------------
def start_caption(state: AppState, folder: str, ext: str, model: str, mode: str, prompt: str,
                  max_new_tokens, tagger: dict | None = None) -> tuple[str, int | None]:
    """Queue a captioning job; `tagger`: the WD tagger's settings (CaptionConfig field names)."""
    try:
        config = CaptionConfig(data_dir=_folder(state, folder), caption_extension=ext or ".txt",
                               model=state.confinement.readable_base("caption.model", (model or "").strip())
                               if (model or "").strip() else "", mode=mode, prompt=prompt or "",
                               max_new_tokens=int(max_new_tokens or 60), **(tagger or {}))
        ahead = state.jobs.current()
        job = state.jobs.submit(config)
    except (LoramixError, ValueError) as e:
        return f"⚠ {e}", None
    if ahead is not None and ahead.active:
        return f"Captioning is job {job.id}, queued: it starts when job {ahead.id} ends.", job.id
    return f"Captioning started as job {job.id}.", job.id


def caption_progress(state: AppState, job_id: int | None) -> str:
    job = state.jobs.get(job_id) if job_id else None
    if job is None:
        return ""
    line = f"Job {job.id} ({job.status}): {job.step()}/{job.total()} images"
    last = job.latest("step")
    if last is not None and last.message:
        line += f" · last caption: “{html.escape(last.message[:120])}”"
    end = job.latest("log")
    if end is not None:
        line += f"\n\n{html.escape(end.message)}"
    if job.error:
        line += f"\n\n⚠ {html.escape(job.error)}"
    return line


def cancel_caption(state: AppState, job_id: int | None) -> str:
    job = state.jobs.get(job_id) if job_id else None
    if job is None or not job.active:
        return "No captioning to cancel."
    state.jobs.cancel(job.id)
    return f"Cancelled job {job.id}: it stops after this batch."


# ---- the tab ---------------------------------------------------------------------------------------
@dataclass
class DatasetTab:
    folder: gr.Textbox
    use_for_training: gr.Button


def build(state: AppState, poll_s: float = 1.0) -> DatasetTab:
    private = dict(api_visibility="private")
    with gr.Row():
        folder = gr.Textbox(label="Image folder", scale=4, elem_id="dataset-folder",
                            placeholder="/path/to/images (Enter loads it)")
        ext = gr.Dropdown([".txt", ".caption"], value=".txt", label="Caption files", scale=1)
        resolution = gr.Number(512, label="Resolution (for buckets)", precision=0, scale=1)
        load = gr.Button("Load", scale=1, elem_id="dataset-load")
        use = gr.Button("Train on this folder", scale=1, elem_id="dataset-use")
    summary = gr.Markdown(elem_id="dataset-summary")
    with gr.Row():
        gallery = gr.Gallery(label="Images (click one)", columns=6, height=300, elem_id="dataset-thumbs")
        details = gr.Markdown(elem_id="dataset-details")
    with gr.Row():
        tags = gr.Dataframe(headers=TAG_COLUMNS, label="Tags (counted as kohya's ss_tag_frequency)",
                            interactive=False, elem_id="dataset-tags", max_height=320)
        images = gr.Dataframe(headers=IMAGE_COLUMNS, label="Sizes and buckets", interactive=False,
                              elem_id="dataset-images", max_height=320)
        dups = gr.Dataframe(headers=DUP_COLUMNS, label="Near-duplicates", interactive=False,
                            elem_id="dataset-dups", max_height=320)
    with gr.Accordion("Caption the folder", open=True):
        with gr.Row():
            model = gr.Textbox(DEFAULT_CAPTIONER, label="Captioner (hub id or folder)", scale=3,
                               elem_id="dataset-caption-model")
            mode = gr.Radio(CAPTION_MODES, value="skip", label="Images that have a caption",
                            elem_id="dataset-caption-mode", scale=2)
            prompt = gr.Textbox(label="Prompt / task", placeholder="(the model's default)", scale=2)
            tokens = gr.Number(60, label="Max tokens", precision=0, scale=1)
        with gr.Row():
            general = gr.Slider(0, 1, 0.35, step=0.01, label="WD tagger: general tag threshold")
            character = gr.Slider(0, 1, 0.85, step=0.01, label="WD tagger: character tag threshold")
            exclude = gr.Textbox(label="WD tagger: never write these tags (comma-separated)")
            max_tags = gr.Number(0, label="WD tagger: at most N tags (0: all)", precision=0)
        with gr.Row():
            caption = gr.Button("Caption", variant="primary", elem_id="dataset-caption")
            cancel = gr.Button("Cancel", variant="stop", elem_id="dataset-caption-cancel")
        caption_status = gr.Markdown(elem_id="dataset-caption-status")
    with gr.Accordion("Masks for masked training (CLIPSeg)", open=False):
        with gr.Row():
            mask_prompt = gr.Textbox(label="What the mask covers", placeholder="person", elem_id="dataset-mask-prompt")
            mask_model = gr.Textbox(DEFAULT_CLIPSEG, label="CLIPSeg model (hub id or folder)",
                                    elem_id="dataset-mask-model")
            mask_threshold = gr.Slider(0, 1, 0, step=0.05, label="Threshold (0: soft mask)")
            mask_replace = gr.Checkbox(False, label="replace existing masks")
        make = gr.Button("Make masks", elem_id="dataset-mask-make")
        mask_message = gr.Markdown(elem_id="dataset-mask-message")
    with gr.Accordion("Edit tags in bulk", open=True):
        with gr.Row():
            op = gr.Dropdown([(EDIT_LABELS[o], o) for o in OPS], value="add", label="Edit", elem_id="dataset-tag-op")
            tag = gr.Textbox(label="Tag", elem_id="dataset-tag")
            new = gr.Textbox(label="New (rename / replace)", elem_id="dataset-tag-new")
            first = gr.Checkbox(True, label="add first", elem_id="dataset-tag-first")
            only = gr.Textbox(label="Only these images (comma-separated names or globs; empty: all)")
        with gr.Row():
            preview = gr.Button("Preview", elem_id="dataset-tag-preview")
            save = gr.Button("Save", variant="primary", elem_id="dataset-tag-save")
            undo = gr.Button("Undo last save", elem_id="dataset-tag-undo")
        tag_message = gr.Markdown(elem_id="dataset-tag-message")
        changes = gr.Dataframe(headers=PREVIEW_COLUMNS, label="Preview", interactive=False,
                               elem_id="dataset-tag-preview-table")
    plan, job_id = gr.State([]), gr.State(None)
    timer = gr.Timer(poll_s, active=False)

    show_outputs = [summary, tags, images, dups, gallery]

    def show(f, e, r):
        return show_report(state, f, e, r)

    for event in (load.click, folder.submit):
        event(show, [folder, ext, resolution], show_outputs, **private)

    def clicked(image_table, dup_table, evt: gr.SelectData):
        value = evt.value or {}
        name = value.get("caption") if isinstance(value, dict) else None
        return image_details(image_table, dup_table, name or "")

    gallery.select(clicked, [images, dups], details, **private)
    preview.click(lambda *v: preview_tags(state, *v), [folder, ext, op, tag, new, first, only],
                  [changes, plan, tag_message], **private)
    save.click(lambda f, e, p: save_tags(state, f, e, p), [folder, ext, plan], [plan, tag_message],
               **private).then(show, [folder, ext, resolution], show_outputs, **private)
    undo.click(lambda f: undo_tags(state, f), folder, tag_message, **private).then(
        show, [folder, ext, resolution], show_outputs, **private)

    make.click(lambda *v: masks_for_folder(state, *v), [folder, mask_prompt, mask_model, mask_threshold, mask_replace],
               mask_message, **private).then(show, [folder, ext, resolution], show_outputs, **private)

    def start(f, e, m, md, p, t, g, c, x, n):
        tagger = dict(general_threshold=float(g), character_threshold=float(c), exclude_tags=x or "",
                      max_tags=int(n or 0))
        message, new_id = start_caption(state, f, e, m, md, p, t, tagger)
        return message, new_id, gr.Timer(active=new_id is not None)

    caption.click(start, [folder, ext, model, mode, prompt, tokens, general, character, exclude, max_tags],
                  [caption_status, job_id, timer], **private)
    cancel.click(lambda j: cancel_caption(state, j), job_id, caption_status, **private)

    def tick(j, f, e, r):
        job = state.jobs.get(j) if j else None
        text = caption_progress(state, j)
        if job is None or job.active:
            return text, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=job is not None)
        return (text, *show(f, e, r), gr.Timer(active=False))  # finished: show the new captions, stop polling

    timer.tick(tick, [job_id, folder, ext, resolution], [caption_status, *show_outputs, timer],
               show_progress="hidden", **private)
    return DatasetTab(folder, use)
