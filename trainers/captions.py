"""Editing the captions of an image folder (the web app's caption table), confined to that folder.

A caption is written only as `<image stem><ext>` next to an image that a scan of the folder found,
and only with a caption extension from the allow-list (`loramix.core.paths.CAPTION_EXTENSIONS`); a row
naming any other file is refused before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from loramix.core.config import DatasetConfig
from loramix.core.errors import DatasetError
from loramix.core.paths import caption_extension
from trainers.dataset import scan_report, write_caption


def captions_table(data_dir: str, ext: str, resolution: int = 512) -> tuple[list[tuple[str, Path, str]], list[str]]:
    """(path relative to the folder, image path, caption) for every usable image, and the scan's warnings."""
    ext = caption_extension("dataset.caption_extension", ext or ".txt")
    root = Path(data_dir).expanduser()
    report = scan_report(DatasetConfig(data_dir=str(root), caption_extension=ext, resolution=int(resolution)))
    rows = [(item.path.relative_to(root).as_posix(), item.path, item.caption) for item in report.items]
    return rows, report.warnings


def save_captions(data_dir: str, ext: str, rows: list[tuple[str, str]]) -> list[Path]:
    """Write each (relative image path, caption) row; every row must name an image the scan found."""
    known = {rel: image for rel, image, _ in captions_table(data_dir, ext)[0]}
    unknown = [str(rel) for rel, _ in rows if str(rel) not in known]
    if unknown:
        raise DatasetError(f"Captions: {unknown[0]!r} is not an image of {data_dir}; nothing was saved. "
                           "Reload the folder and edit only the caption column.")
    return [write_caption(known[str(rel)], ext or ".txt", str(caption or ""), data_dir) for rel, caption in rows]
