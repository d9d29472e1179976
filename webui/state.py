"""The app's one state object: folders, the job manager and the mixer, owned by the app (no globals)."""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from loramix.mixer import Mixer
from webui.jobs import JobManager

REPO = Path(__file__).resolve().parents[1]


@dataclass
class AppState:
    outputs: Path
    lora_dir: Path
    jobs: JobManager = field(default_factory=JobManager)
    preset_dirs: list[Path] = field(default_factory=list)
    _mixer: Mixer | None = None
    _mixer_base: str | None = None
    mixer_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, outputs: str | Path = "outputs", lora_dir: str | Path = "") -> AppState:
        outputs = Path(outputs).expanduser().resolve()
        lora_dir = Path(lora_dir).expanduser().resolve() if lora_dir else outputs / "loras"
        for folder in (outputs, lora_dir, outputs / "presets"):
            folder.mkdir(parents=True, exist_ok=True)
        return cls(outputs, lora_dir, preset_dirs=[REPO / "presets", outputs / "presets"])

    # ---- presets -----------------------------------------------------------------------------
    def presets(self) -> dict[str, Path]:
        found = {}
        for folder in self.preset_dirs:
            for path in sorted(folder.glob("*.toml")):
                found.setdefault(path.stem, path)
        return found

    # ---- adapters ----------------------------------------------------------------------------
    def adapters(self) -> list[str]:
        """LoRA files in the outputs folder (trained here) and the user's LoRA folder; newest first."""
        skip = (self.outputs / "baked", self.outputs / "uploads")
        files = {p.resolve() for folder in (self.outputs, self.lora_dir) for p in folder.rglob("*.safetensors")
                 if not p.name.endswith("-state.safetensors") and "-step" not in p.stem
                 and not any(p.is_relative_to(s) for s in skip)}
        return [str(p) for p in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)]

    def import_files(self, paths: list[str], folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for path in paths:
            target = folder / Path(path).name
            shutil.copyfile(path, target)
            out.append(target)
        return out

    def upload_folder(self) -> Path:
        return self.outputs / "uploads" / time.strftime("%Y%m%d-%H%M%S")

    # ---- mixer -------------------------------------------------------------------------------
    def mixer(self, base: str) -> Mixer:
        """The mixer for `base`, loaded once and kept until another base is asked for."""
        if self._mixer is None or self._mixer_base != base:
            self._mixer = None
            self._mixer = Mixer.from_base(base)
            self._mixer_base = base
        return self._mixer
