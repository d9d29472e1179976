"""Bulk tag editing of a folder's captions: plan the edits, show them, save them through the writer, undo them.

A caption is a list of comma-separated tags (a sentence caption is one long tag). The edits, applied in order:

* `add TAG` — append the tag (or, with `first`, put it first) where the caption does not hold it yet;
* `remove TAG` — drop every occurrence of the tag;
* `rename OLD NEW` — a whole tag OLD becomes NEW (a NEW already there is not doubled);
* `replace OLD NEW` — words inside tags: OLD (whole words) becomes NEW, so sentence captions can be edited too;
* `dedupe` — keep the first occurrence of each tag;
* `sort` — alphabetical order;
* `trigger WORD` — the trigger word as the first tag, once.

Tags compare as kohya counts them (`trainers.dataset.count_tags`): stripped and lower-cased. Nothing is written
by `plan_edits`; `save_changes` writes only the captions that change, each through the writer (inside the data
folder, atomic), refuses a caption that changed on disk since the preview, and first records the previous text of
every caption it will touch in `.loramix-tags-undo.json` in the folder, so `undo_last` puts them back.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from loramix.core.errors import DatasetError
from loramix.core.paths import caption_extension
from trainers.captions import captions_table
from trainers.dataset import write_caption

OPS = ("add", "remove", "rename", "replace", "dedupe", "sort", "trigger")
UNDO_FILE = ".loramix-tags-undo.json"


@dataclass(frozen=True)
class TagEdit:
    op: str
    tag: str = ""
    new: str = ""
    first: bool = False

    def __post_init__(self):
        if self.op not in OPS:
            raise DatasetError(f"Tag edit: {self.op!r} is not one of {', '.join(OPS)}.")
        if self.op in ("add", "remove", "rename", "replace", "trigger") and not self.tag.strip():
            raise DatasetError(f"Tag edit {self.op}: give the tag to {self.op}.")
        if self.op in ("add", "rename", "trigger") and "," in self.tag + self.new:
            raise DatasetError(f"Tag edit {self.op}: {self.tag!r} holds a comma; give one tag at a time.")
        if self.op == "rename" and not self.new.strip():
            raise DatasetError("Tag edit rename: give the new name (to drop a tag, use remove).")

    def describe(self) -> str:
        return {"add": f"add {self.tag!r}" + (" first" if self.first else ""), "remove": f"remove {self.tag!r}",
                "rename": f"rename {self.tag!r} to {self.new!r}", "replace": f"replace {self.tag!r} with {self.new!r}",
                "dedupe": "drop duplicate tags", "sort": "sort tags", "trigger": f"{self.tag!r} first"}[self.op]


def split_tags(caption: str) -> list[str]:
    return [t.strip() for t in caption.split(",") if t.strip()]


def join_tags(tags: list[str]) -> str:
    return ", ".join(t for t in tags if t)


def _key(tag: str) -> str:
    return " ".join(tag.split()).lower()


def apply_edit(tags: list[str], edit: TagEdit) -> list[str]:
    """The tag list after one edit (the input is not changed)."""
    tag, key = edit.tag.strip(), _key(edit.tag)
    keys = [_key(t) for t in tags]
    if edit.op == "add":
        if key in keys:
            return list(tags)
        return [tag, *tags] if edit.first else [*tags, tag]
    if edit.op == "remove":
        return [t for t, k in zip(tags, keys) if k != key]
    if edit.op == "rename":
        new, new_key = edit.new.strip(), _key(edit.new)
        out, seen_new = [], False
        for t, k in zip(tags, keys):
            if k == key or k == new_key:
                if not seen_new:
                    out.append(new if k == key else t)
                seen_new = True
            else:
                out.append(t)
        return out if key in keys else list(tags)
    if edit.op == "replace":
        pattern = re.compile(rf"(?<!\w){re.escape(tag)}(?!\w)", re.IGNORECASE)
        return [" ".join(pattern.sub(edit.new.strip(), t).split()) for t in tags]
    if edit.op == "dedupe":
        seen: set[str] = set()
        out = []
        for t, k in zip(tags, keys):
            if k not in seen:
                seen.add(k)
                out.append(t)
        return out
    if edit.op == "sort":
        return sorted(tags, key=_key)
    # trigger
    return [tag, *(t for t, k in zip(tags, keys) if k != key)]


def edit_caption(caption: str, edits: list[TagEdit]) -> str:
    tags = split_tags(caption)
    for edit in edits:
        tags = apply_edit(tags, edit)
    return join_tags(tags)


@dataclass(frozen=True)
class TagChange:
    image: str  # relative to the data folder
    before: str
    after: str


def select(rows, only: list[str] | None) -> list:
    """The rows whose relative path matches one of `only` (a name or a glob; None or empty: every row)."""
    if not only:
        return list(rows)
    return [r for r in rows if any(r[0] == p or fnmatch(r[0], p) for p in only)]


def plan_edits(data_dir: str, ext: str, edits: list[TagEdit], only: list[str] | None = None) -> list[TagChange]:
    """The captions the edits would change (nothing is written): one TagChange per image whose caption changes."""
    if not edits:
        raise DatasetError("Tags: choose at least one edit (add, remove, rename, replace, dedupe, sort, trigger).")
    rows, _ = captions_table(data_dir, ext)
    changes = []
    for rel, _image, caption in select(rows, only):
        after = edit_caption(caption, edits)
        if after != caption:
            changes.append(TagChange(rel, caption, after))
    return changes


def _caption_file(root: Path, rel: str, ext: str) -> Path:
    return (root / rel).with_suffix(ext)


def _file_text(path: Path) -> str | None:
    from trainers.dataset import decode_caption

    return " ".join(decode_caption(path.read_bytes())[0].split()) if path.is_file() else None


def save_changes(data_dir: str, ext: str, changes: list[TagChange]) -> list[Path]:
    """Write the planned captions. The previous text of each (None: there was no caption file) is saved first in
    the folder's undo file; a caption that changed since the preview stops the save before anything is written."""
    from loramix.core.writer import check_target, write_text

    ext = caption_extension("dataset.caption_extension", ext or ".txt")
    root = Path(data_dir).expanduser()
    current = {rel: caption for rel, _, caption in captions_table(data_dir, ext)[0]}
    previous: dict[str, str | None] = {}
    for change in changes:
        if current.get(change.image) != change.before:
            raise DatasetError(f"Tags: the caption of {change.image} changed since the preview; nothing was saved. "
                               "Preview again.")
        path = _caption_file(root, change.image, ext)
        check_target(path, replace=True, within=root, field="Captions")  # every target before anything is written
        previous[change.image] = _file_text(path)
    if not changes:
        return []
    write_text(root / UNDO_FILE, json.dumps({"extension": ext, "previous": previous}, indent=1) + "\n",
               replace=True, within=root, field="Tags undo")
    return [write_caption(root / change.image, ext, change.after, root) for change in changes]


def undo_last(data_dir: str) -> list[str]:
    """Put back the captions the last save changed; returns their images. The undo file is used up."""
    from loramix.core.writer import remove_file

    root = Path(data_dir).expanduser()
    undo = root / UNDO_FILE
    if not undo.is_file():
        raise DatasetError(f"Tags: there is nothing to undo in {root} (no tag edit was saved there since the last "
                           "undo).")
    try:
        data = json.loads(undo.read_text(encoding="utf-8"))
        ext, previous = caption_extension("undo extension", data["extension"]), dict(data["previous"])
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"Tags: {undo} cannot be read ({e}); delete it.") from e
    known = {rel for rel, _, _ in captions_table(data_dir, ext)[0]}
    for rel in previous:
        if rel not in known:
            raise DatasetError(f"Tags: the undo file names {rel!r}, which is not an image of {root}; nothing was "
                               "undone.")
    for rel, text in previous.items():
        path = _caption_file(root, rel, ext)
        if text is None:
            if path.is_file():
                remove_file(path, within=root)
        else:
            write_caption(root / rel, ext, text, root)
    remove_file(undo, within=root)
    return sorted(previous)
