"""The app's one state object: folders, the confinement rule, the job manager and the mixer (no globals)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from loramix.core import writer
from loramix.core.errors import LoramixError
from loramix.core.paths import Confinement
from loramix.core.runs import clean_app_folders
from loramix.mix.mixer import Mixer
from webui.jobs import JobManager

APP_FOLDERS = ("presets", "mixes", "loras", "uploads", "baked")  # under outputs; never a run folder

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = REPO / "loramix" / "embedded"


@dataclass
class AppState:
    outputs: Path
    lora_dir: Path
    confinement: Confinement
    jobs: JobManager = field(default_factory=JobManager)
    preset_dirs: list[Path] = field(default_factory=list)
    _mixer: Mixer | None = None
    _mixer_base: str | None = None
    _mixer_loads: int = 0
    mixer_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, outputs: str | Path = "outputs", lora_dir: str | Path = "", *, listen: bool = False,
               data_roots: list[str | Path] = (), jobs: JobManager | None = None, allow_hub: bool | None = None) -> AppState:
        """Folders are made if missing. With `listen`, reading is limited to the app's folders and `data_roots`,
        and a hub id as the base model needs `allow_hub` (default: hub ids only without `listen`)."""
        outputs = writer.make_folder(outputs)
        lora_dir = writer.make_folder(lora_dir) if lora_dir else writer.make_folder(outputs / "loras", within=outputs)
        for name in APP_FOLDERS:
            writer.make_folder(outputs / name, within=outputs)
        clean_app_folders(outputs, [lora_dir, *(outputs / name for name in APP_FOLDERS)])
        confinement = Confinement([outputs, lora_dir],
                                  read_roots=[Path(r) for r in data_roots] if listen else None,
                                  extra_read=[EMBEDDED, REPO / "presets"],
                                  allow_hub=not listen if allow_hub is None else allow_hub)
        return cls(outputs, lora_dir, confinement, jobs=jobs or JobManager(outputs / "loramix.db"),
                   preset_dirs=[REPO / "presets", outputs / "presets"])

    def reserved_folders(self) -> list[Path]:
        """The app's own folders under outputs: never a run folder."""
        return [self.outputs / name for name in APP_FOLDERS] + [self.lora_dir]

    # ---- presets -----------------------------------------------------------------------------
    def shipped_presets(self) -> set[str]:
        return {p.stem.casefold() for p in self.preset_dirs[0].glob("*.toml")}

    def presets(self) -> dict[str, Path]:
        found = {}
        for folder in self.preset_dirs:
            for path in sorted(folder.glob("*.toml")):
                found.setdefault(path.stem, path)
        return found

    def preset_path(self, name: str) -> Path:
        """A preset by its name (never a path: a client cannot make the app parse any file as TOML)."""
        presets = self.presets()
        if name not in presets:
            raise LoramixError(f"preset: {name!r} is not one of the presets ({', '.join(presets) or 'none'}).")
        return presets[name]

    # ---- adapters ----------------------------------------------------------------------------
    def adapters(self) -> list[str]:
        """LoRA files in the outputs folder (trained here) and the user's LoRA folder, newest first.

        Intermediate `-step` files are listed too (under their run's folder); training states,
        uploads and baked models are not adapters.
        """
        skip = (self.outputs / "baked", self.outputs / "uploads")
        files = {p.resolve() for folder in (self.outputs, self.lora_dir) for p in folder.rglob("*.safetensors")
                 if not p.name.endswith("-state.safetensors") and not p.name.startswith(".")
                 and not any(p.is_relative_to(s) for s in skip)}
        return [str(p) for p in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)]

    def adapter_path(self, field_name: str, path: str) -> Path:
        """A LoRA file a client named: readable under the confinement rule, a .safetensors file."""
        resolved = self.confinement.readable(field_name, path)
        if resolved.suffix.lower() != ".safetensors":
            raise LoramixError(f"{field_name}: {Path(path).name!r} is not a .safetensors file.")
        return resolved

    def import_files(self, paths: list[str], suffixes: tuple[str, ...], folder: Path | None = None) -> list[Path]:
        """Copy uploaded files (gradio's own temp files) by plain name only into `folder` (one of the app's), or
        into a new folder of their own under outputs/uploads, claimed with mkdir so that two uploads in one second
        never share one. An existing file is never replaced."""
        from loramix.core.paths import plain_name

        checked = []
        for path in paths:  # every name checked before anything is written
            source = Path(path)
            name = plain_name("upload", source.name)
            if source.suffix.lower() not in suffixes:
                raise LoramixError(f"upload: {name} is not one of {', '.join(suffixes)}.")
            checked.append((source, name))
        if folder is None:
            uploads = self.outputs / "uploads"
            folder = writer.claim_folder(uploads, time.strftime("%Y%m%d-%H%M%S"), within=uploads, field="upload")
        else:
            folder = self.confinement.writable("upload", folder)
        return [writer.copy_file(source, folder / name, within=folder, field="upload") for source, name in checked]

    # ---- mixer -------------------------------------------------------------------------------
    @property
    def loaded_base(self) -> tuple[str, int] | None:
        """The base model the mixer holds (the confined path or hub id `mixer()` resolved) and which load of it
        this is; None before the first preview. A cached picture of the base is only good while this stays the
        same."""
        return (self._mixer_base, self._mixer_loads) if self._mixer_base is not None else None

    def mixer(self, base: str) -> Mixer:
        """The mixer for `base`, loaded once and kept until another base is asked for, or until a file of it was
        overwritten in place (the mixer reads fused layers' originals back from those files)."""
        base = self.confinement.readable_base("base model", base)
        stale = self._mixer is not None and self._mixer.file_originals is not None \
            and self._mixer.file_originals.changed() is not None
        if self._mixer is None or self._mixer_base != base or stale:
            self._mixer = None
            self._mixer = Mixer.from_base(base)
            self._mixer_base = base
            self._mixer_loads += 1
        return self._mixer
