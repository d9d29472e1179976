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
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from loramix.core.errors import ConfigError

CAPTION_EXTENSIONS = (".txt", ".caption")
MAX_NAME_LENGTH = 120
_FORBIDDEN_NAME_CHARS = set('/\\:*?"<>|\0')
# control (C0, DEL, C1), format (bidi overrides, zero-width, BOM), line/paragraph separators, unassigned, private
_INVISIBLE_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}


def plain_name(field_name: str, name: str) -> str:
    """`name` if it is a plain file name (no folder, no `..`, not hidden), else a ConfigError naming the field."""
    text = "" if name is None else str(name)
    if not text.strip():
        raise ConfigError(field_name, "is empty; give a plain name such as my-style.")
    bad = sorted(_FORBIDDEN_NAME_CHARS.intersection(text))
    invisible = sorted({c for c in text if unicodedata.category(c) in _INVISIBLE_CATEGORIES})
    if bad or invisible or text != text.strip() or text.startswith(".") or len(text) > MAX_NAME_LENGTH:
        if bad or invisible:
            shown = ", ".join([*(repr(c) for c in bad), *(f"U+{ord(c):04X}" for c in invisible)])
        else:
            shown = "a leading dot, surrounding spaces or too many characters"
        shown_name = "".join(f"\\u{ord(c):04x}" if c in invisible else c for c in text)  # a reversed name stays readable
        raise ConfigError(field_name, f"'{shown_name}' must be a plain file name "
                                      f"(letters, digits, -, _, spaces; at most {MAX_NAME_LENGTH} characters); "
                                      f"it contains {shown}.")
    return text


def unique_name(field_name: str, name: str, existing: Iterable[str]) -> str:
    """`name`, unless another of `existing` differs from it only in case (`MixA` beside `mixa`): then a ConfigError."""
    folded = name.casefold()
    clash = next((e for e in existing if e != name and e.casefold() == folded), None)
    if clash is not None:
        raise ConfigError(field_name, f"{name!r} differs from the existing {clash!r} only in case; names are unique "
                                      "ignoring case. Pick another name, or use the existing one to replace it.")
    return name


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
    """Where the app may write, and (with `--listen`) where it may read.

    With `--listen` (`read_roots` given) refusals name the folders by role, never by their server path, and
    a hub id as the base model needs `allow_hub` (else the server would fetch any repository a client names).
    """

    write_roots: list[Path]
    read_roots: list[Path] | None = None  # None: anything the local user can read (127.0.0.1 only)
    extra_read: list[Path] = field(default_factory=list)  # always readable (the shipped model and presets)
    allow_hub: bool = True

    def __post_init__(self):
        self.write_roots = [_resolve(r) for r in self.write_roots]
        self.extra_read = [_resolve(r) for r in self.extra_read]
        if self.read_roots is not None:
            self.read_roots = [_resolve(r) for r in self.read_roots]

    @property
    def remote(self) -> bool:
        """True with --listen: a client may be another machine, so refusals do not show server paths."""
        return self.read_roots is not None

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
            roots = "the app's outputs and LoRA folders" if self.remote else _roots_text(self.write_roots)
            raise ConfigError(field_name, f"loramix writes only inside {roots}; {str(path)!r} is outside them.")
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
            raise ConfigError(field_name, "with --listen loramix reads only inside its own folders (outputs, the "
                                          "LoRA folder, the shipped model and presets) and the --data-root "
                                          f"folders; {str(path)!r} is outside them.")
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
        """A base model: empty (the embedded one), a hub id (`owner/name`, naming no local path) or a readable path.

        A string that names an existing path (relative to the working folder too) is a path, never a hub id:
        diffusers would read that folder. With --listen and no `allow_hub`, every base is a path, so a refusal
        reads the same whether or not the path exists.
        """
        if not base:
            return base
        looks_like_hub_id = self.allow_hub and base.count("/") == 1 and not base.startswith((".", "/", "~")) \
            and "\\" not in base and ".." not in base and not Path(base).expanduser().exists()
        if looks_like_hub_id:
            return base
        try:
            return str(self.readable(field_name, base))
        except ConfigError as e:
            if self.remote and not self.allow_hub and base.count("/") == 1:
                raise ConfigError(field_name, f"{e.args[0].split(': ', 1)[-1]} Hub ids need the server's "
                                              "--allow-hub-download.") from None
            raise


def _roots_text(roots: list[Path]) -> str:
    return ", ".join(str(r) for r in roots) or "(no folder)"
