"""The Train tab's dataset panel: thumbnails and the caption table of the folder in the form, uploads into
outputs/uploads, and saving edited captions. Thumbnails are in-memory images (the browser never gets a path)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd
from PIL import Image, ImageDraw

from loramix.core.errors import LoramixError
from trainers.captions import captions_table, save_captions
from trainers.dataset import load_image
from webui import bindings
from webui.state import AppState

THUMB = 160
MAX_THUMBS = 200
THUMB_DECODE_PIXELS = 3840 * 2160  # a larger image that is not a JPEG (no reduced decode) shows a placeholder
MAX_CAPTION_SHOWN = 2000  # characters of one caption sent to the page
SHORTENED = " … [shortened for display]"
UPLOAD_TYPES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".txt", ".caption")


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


def take_upload(state: AppState, files) -> tuple:
    """(the folder the uploads were copied into, or skip; the sentence beside the captions)."""
    if not files:
        return gr.skip(), ""
    try:
        paths = state.import_files([getattr(f, "name", f) for f in files], UPLOAD_TYPES)
    except LoramixError as e:
        return gr.skip(), f"⚠ {e}"
    return str(paths[0].parent), ""


# Every reading of the Train tab's folder (page load, the box left, an upload, "Use for training") waits in one
# queue, one at a time, in the order asked: a folder typed while the page load's reading of the pre-filled one
# still ran got its answer first and then the pre-filled one's put back over it (seen under load, 2026-12-06).
IN_ORDER = dict(concurrency_id="train-folder-view", concurrency_limit=1)


@dataclass
class DataPanel:
    thumbs: gr.Gallery
    captions: gr.Dataframe
    notes: gr.Markdown
    show: object  # (folder, extension, resolution) -> (thumbnails, captions, notes): also run at page load

    @property
    def shown(self) -> list:
        return [self.thumbs, self.captions, self.notes]


def build(state: AppState, form: dict) -> DataPanel:
    """The panel beside the form, wired to the form's data folder, caption extension and resolution."""
    upload = gr.File(label="Or drop images and captions here", file_count="multiple", file_types=["image", ".txt"])
    thumbs = gr.Gallery(label="Images", columns=5, height=230, elem_id="train-thumbs", object_fit="contain")
    notes = gr.Markdown(elem_id="train-dataset-notes")
    captions = gr.Dataframe(headers=["image", "caption"], datatype=["str", "str"], interactive=True,
                            static_columns=[0], label="Captions (edit, then save)", wrap=True,
                            column_widths=["28%", "72%"], elem_id="train-captions")
    save = gr.Button("Save captions")
    message = gr.Markdown(elem_id="train-captions-message")

    data_dir, ext, res = form["dataset.data_dir"], form["dataset.caption_extension"], form["dataset.resolution"]
    private = dict(api_visibility="private")
    in_order = dict(private, **IN_ORDER)

    def show(folder, e, resolution):
        return show_images(state, folder, e, resolution)

    panel = DataPanel(thumbs, captions, notes, show)
    for event in (data_dir.blur, data_dir.submit):
        event(show, [data_dir, ext, res], panel.shown, **in_order)
    upload.upload(lambda files: take_upload(state, files), upload, [data_dir, message], **private).then(
        show, [data_dir, ext, res], panel.shown, **in_order)
    save.click(lambda table, folder, e: write_captions(state, table, folder, e), [captions, data_dir, ext], message,
               **private)
    return panel
