"""Editing the captions of an image folder (the web app's caption table), confined to that folder.

A caption is written only as `<image stem><ext>` next to an image that a scan of the folder found,
and only with a caption extension from the allow-list (`loramix.paths.CAPTION_EXTENSIONS`); a row
naming any other file is refused before anything is written.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loramix.config import DatasetConfig
from loramix.errors import DatasetError
from loramix.paths import caption_extension
from trainers.dataset import list_images, write_caption


def captions_table(data_dir: str, ext: str) -> list[tuple[str, Path, str]]:
    """(path relative to the folder, image path, caption) for every usable image of the folder."""
    ext = caption_extension("dataset.caption_extension", ext or ".txt")
    root = Path(data_dir).expanduser()
    return [(p.relative_to(root).as_posix(), p, c)
            for p, c in list_images(DatasetConfig(data_dir=str(root), caption_extension=ext))]


def save_captions(data_dir: str, ext: str, rows: list[tuple[str, str]]) -> list[Path]:
    """Write each (relative image path, caption) row; every row must name an image the scan found."""
    known = {rel: image for rel, image, _ in captions_table(data_dir, ext)}
    unknown = [str(rel) for rel, _ in rows if str(rel) not in known]
    if unknown:
        raise DatasetError(f"Captions: {unknown[0]!r} is not an image of {data_dir}; nothing was saved. "
                           "Reload the folder and edit only the caption column.")
    return [write_caption(known[str(rel)], ext or ".txt", str(caption or "")) for rel, caption in rows]


@contextmanager
def collected_warnings(*loggers: str) -> Iterator[list[str]]:
    """Collect the warning sentences the named loggers emit in this thread (shown in the UI, not only the console)."""
    import threading

    found: list[str] = []
    thread = threading.get_ident()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING and record.thread == thread:
                found.append(record.getMessage())

    handler = Collect()
    targets = [logging.getLogger(name) for name in loggers or ("trainers", "loramix")]
    for logger in targets:
        logger.addHandler(handler)
    try:
        yield found
    finally:
        for logger in targets:
            logger.removeHandler(handler)
