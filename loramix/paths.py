"""The one confinement rule for every path or name a user (or a web client) can give loramix.

Used alike by the web app's handlers, its API endpoints and the command line:

* a *name* the user types (output name, export name, bake name, preset name) is a plain file name:
  no separators, no `.`/`..`, not hidden, not absolute (`plain_name`);
* a caption file is `<image stem><ext>` with `ext` from a short allow-list (`caption_extension`);
* a path loramix *writes* must lie under one of the app's write roots (`--outputs`, `--lora-dir`)
  after symlinks are resolved (`Confinement.writable`);
* a path loramix *reads* (data dir, LoRA, base model, preset, resume state) may be anywhere the
  local user can read when the app serves 127.0.0.1 only; with `--listen` it must lie under the
  app's folders or a `--data-root` (`Confinement.readable`).

Errors name the field and the allowed roots; they never say whether an outside path exists.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from loramix.errors import ConfigError

CAPTION_EXTENSIONS = (".txt", ".caption")
MAX_NAME_LENGTH = 120
_FORBIDDEN_NAME_CHARS = set('/\\:*?"<>|\0')


def plain_name(field_name: str, name: str) -> str:
    """`name` if it is a plain file name (no folder, no `..`, not hidden), else a ConfigError naming the field."""
    text = "" if name is None else str(name)
    if not text.strip():
        raise ConfigError(field_name, "is empty; give a plain name such as my-style.")
    bad = sorted(_FORBIDDEN_NAME_CHARS.intersection(text))
    if bad or text != text.strip() or text.startswith(".") or len(text) > MAX_NAME_LENGTH or \
            any(ord(c) < 32 for c in text):
        shown = ", ".join(repr(c) for c in bad) if bad else "a leading dot, surrounding spaces or control characters"
        raise ConfigError(field_name, f"{text!r} must be a plain file name (letters, digits, -, _, spaces; at most "
                                      f"{MAX_NAME_LENGTH} characters); it contains {shown}.")
    return text


def caption_extension(field_name: str, ext: str) -> str:
    """A caption file extension from the allow-list (never an image or code extension)."""
    if ext not in CAPTION_EXTENSIONS:
        raise ConfigError(field_name, f"{ext!r} is not a caption extension; use one of {', '.join(CAPTION_EXTENSIONS)}.")
    return ext


def _resolve(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve(strict=False)


def is_within(path: str | os.PathLike, roots: Iterable[Path]) -> bool:
    """True if `path`, after `~` and symlinks are resolved, lies in (or is) one of `roots`."""
    resolved = _resolve(path)
    return any(resolved == root or resolved.is_relative_to(root) for root in (_resolve(r) for r in roots))


@dataclass
class Confinement:
    """Where the app may write, and (with `--listen`) where it may read."""

    write_roots: list[Path]
    read_roots: list[Path] | None = None  # None: anything the local user can read (127.0.0.1 only)
    extra_read: list[Path] = field(default_factory=list)  # always readable (the shipped model and presets)

    def __post_init__(self):
        self.write_roots = [_resolve(r) for r in self.write_roots]
        self.extra_read = [_resolve(r) for r in self.extra_read]
        if self.read_roots is not None:
            self.read_roots = [_resolve(r) for r in self.read_roots]

    @property
    def readable_roots(self) -> list[Path] | None:
        if self.read_roots is None:
            return None
        return [*self.write_roots, *self.read_roots, *self.extra_read]

    def writable(self, field_name: str, path: str | os.PathLike) -> Path:
        """The resolved path if it lies under a write root, else a ConfigError naming the field and the roots."""
        if not str(path).strip():
            raise ConfigError(field_name, "is empty.")
        resolved = _resolve(path)
        if not is_within(resolved, self.write_roots):
            raise ConfigError(field_name, f"loramix writes only inside {_roots_text(self.write_roots)}; "
                                          f"{str(path)!r} is outside them.")
        return resolved

    def readable(self, field_name: str, path: str | os.PathLike) -> Path:
        """The resolved path if this app may read it, else a ConfigError (which never says whether it exists)."""
        if not str(path).strip():
            raise ConfigError(field_name, "is empty.")
        roots = self.readable_roots
        if roots is None:
            return _resolve(path)
        resolved = _resolve(path)
        if not is_within(resolved, roots):
            raise ConfigError(field_name, f"with --listen loramix reads only inside {_roots_text(roots)} "
                                          f"(add folders with --data-root); {str(path)!r} is outside them.")
        return resolved

    def readable_folder(self, field_name: str, folder: str | os.PathLike) -> Path:
        """A data folder, with the same rule for what is inside it: with `--listen`, an image, caption or
        sub-folder (a kohya `10_name` folder, one level down) that is a link leading outside the readable
        folders refuses the whole folder, naming the entry, so nothing outside is shown, edited or trained on."""
        resolved = self.readable(field_name, folder)
        roots = self.readable_roots
        if roots is None or not resolved.is_dir():
            return resolved
        entries = list(resolved.iterdir())
        entries += [e for sub in entries if sub.is_dir() and not sub.is_symlink() for e in sub.iterdir()]
        for entry in entries:
            if entry.is_symlink() and not is_within(entry, roots):
                raise ConfigError(field_name, f"{entry.relative_to(resolved)} in {resolved.name} is a link that "
                                              "leads outside the folders this app may read; nothing in the folder "
                                              "is read. Remove the link or copy the file in.")
        return resolved

    def readable_base(self, field_name: str, base: str) -> str:
        """A base model: empty (the embedded one), a hub id (`owner/name`, not a local path) or a readable path."""
        if not base:
            return base
        looks_like_hub_id = base.count("/") == 1 and not base.startswith((".", "/", "~")) and \
            not Path(base).expanduser().exists() and "\\" not in base and ".." not in base
        return base if looks_like_hub_id else str(self.readable(field_name, base))


def _roots_text(roots: list[Path]) -> str:
    return ", ".join(str(r) for r in roots) or "(no folder)"
