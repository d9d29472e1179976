"""The base weights the mixer fuses into, read back from the base model's own safetensors files.

A base loaded from a diffusers folder, a hub id (its snapshot folder in the Hugging Face cache, which
`from_pretrained` loaded it from) or a single .safetensors checkpoint (`for_single_file`) has every
weight on disk already. Instead of keeping a host
copy of each weight it fuses (33% of SD 1.5 for a kohya LoRA, 84% of SDXL), the mixer can read the
original back through a memory map of that file, bit for bit (cast to the model's dtype the way the
load did). `bench/mix_restore.py` at SD 1.5 shapes: restoring all 264 adapted layers (1.31 GiB) took
0.13 CPU-s from the file against 0.10 CPU-s from held copies, and held nothing resident.

Each module's file weight is checked once, on its first fuse, against the weight in the model (which
is still the base then); a module whose weight is not in the files, or differs from them (a base
changed after loading), is refused here and the mixer keeps a host copy of it as before. The files
stay open (memory-mapped) for the mixer's life, so a model folder replaced by renaming (as a bake
replaces its folder) does not change what is read. A file overwritten in place (the same inode, a new
size or modification time) is refused with a sentence instead of read: its originals are gone, and a
truncated memory map would crash the process (`changed()` lets the app reload the base first).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from loramix.core.errors import LoramixError


def _first_row(row: torch.Tensor, dtype: torch.dtype) -> bytes:
    """A tensor's first row (up to 64 values) in `dtype`, as bytes: what `for_single_file` matches by."""
    return row.detach().to("cpu", dtype).flatten()[:64].view(torch.uint8).numpy().tobytes()


def _cached_snapshot(repo_id: str, revision: str = "") -> Path | None:
    """The local Hugging Face cache's snapshot folder of a hub model at `revision` (its default branch if empty),
    or None when it is not cached or `repo_id` is no hub id. The snapshot's files are links into the cache's
    blobs, which are never rewritten in place (a new revision gets new blobs)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision or None, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, or not a hub id: the mixer holds copies instead, as before
        return None


def _identity(path: Path) -> tuple:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class FileOriginals:
    """module -> its weight in the base model's safetensors files, for the modules that match them."""

    def __init__(self, keys: dict[torch.nn.Module, tuple[Path, str]]):
        self._keys = keys  # module -> (file, tensor name)
        self._handles: dict[Path, object] = {}
        self._opened: dict[Path, tuple] = {}  # (device, inode, size, mtime) of each file when it was opened
        self._checked: dict[torch.nn.Module, bool] = {}

    @classmethod
    def for_base(cls, components, base: str, revision: str = "") -> FileOriginals | None:
        """Index the files `components` were loaded from, wherever `base` named them: a diffusers folder, a single
        .safetensors checkpoint, or a hub id, whose files are the snapshot folder of `revision` in the local
        Hugging Face cache (looked up there only: nothing is downloaded). None where there are no such files."""
        path = Path(base).expanduser()
        if path.exists():
            return cls.for_folder(components, path) or cls.for_single_file(components, path)
        snapshot = _cached_snapshot(base, revision)
        return cls.for_folder(components, snapshot) if snapshot else None

    @classmethod
    def for_folder(cls, components, folder: str | Path) -> FileOriginals | None:
        """Index the safetensors files of a diffusers folder by the modules of `components`; None if none."""
        from safetensors import safe_open

        folder = Path(folder)
        if not folder.is_dir():
            return None
        keys: dict[torch.nn.Module, tuple[Path, str]] = {}
        for part in ("unet", "text_encoder", "text_encoder_2", "vae"):
            model = getattr(components, part, None)
            files = sorted((folder / part).glob("*.safetensors")) if model is not None else []
            where = {}
            for path in files:
                with safe_open(str(path), framework="pt") as f:
                    where.update({key: path for key in f.keys()})
            for name, module in model.named_modules() if files else ():
                key = f"{name}.weight"
                if key in where and isinstance(getattr(module, "weight", None), torch.Tensor):
                    keys[module] = (where[key], key)
        return cls(keys) if keys else None

    @classmethod
    def for_single_file(cls, components, path: str | Path) -> FileOriginals | None:
        """Index a single-file checkpoint (A1111 / ComfyUI layout) by the Linear and Conv2d modules of the UNet
        and text encoders of `components`, loaded from it; None if it is not a .safetensors file or nothing
        matches.

        The file names its tensors in the original layout, which diffusers' loader renames (and, for a few,
        reshapes or splits: OpenCLIP's fused q/k/v). Rather than invert that conversion, a module is matched to
        the file tensor of its shape whose first row equals its weight's first row (cast to the model's dtype,
        as the load did): a slice read through the memory map, not the tensor. `has()` then checks the whole
        weight on the module's first fuse, so a false match is refused and held as a copy; a split tensor has no
        match of its shape and is held as a copy too.
        """
        from safetensors import safe_open

        path = Path(path)
        if not (path.is_file() and path.suffix.lower() == ".safetensors"):
            return None
        modules = [module for part in ("unet", "text_encoder", "text_encoder_2")
                   if (model := getattr(components, part, None)) is not None
                   for module in model.modules() if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))]
        if not modules:
            return None
        dtype = modules[0].weight.dtype
        wanted = {tuple(m.weight.shape) for m in modules}
        index: dict[tuple, list[str]] = {}
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                part = f.get_slice(key)
                shape = tuple(part.get_shape())
                if shape in wanted:
                    index.setdefault((shape, _first_row(part[0:1], dtype)), []).append(key)
        keys: dict[torch.nn.Module, tuple[Path, str]] = {}
        for module in modules:
            found = index.get((tuple(module.weight.shape), _first_row(module.weight.detach()[0:1], dtype)), [])
            if len(found) == 1:  # two file tensors alike in shape and first row: neither is trusted
                keys[module] = (path, found[0])
        return cls(keys) if keys else None

    def has(self, module: torch.nn.Module) -> bool:
        """Can `module`'s original be read from the files? (Checked against its weight on the first call,
        which must come while the module still holds its base weight.)"""
        if module not in self._keys:
            return False
        if module not in self._checked:
            weight = module.weight.detach()
            from_file = self._read(module, weight)
            self._checked[module] = from_file.shape == weight.shape and torch.equal(from_file, weight.to("cpu"))
        return self._checked[module]

    def read(self, module: torch.nn.Module) -> torch.Tensor:
        """The original weight of `module` (on the host, in the model's dtype)."""
        return self._read(module, module.weight)

    def changed(self) -> Path | None:
        """A file that was overwritten in place since it was opened (its originals cannot be read back)."""
        return next((path for path in self._opened if self._overwritten(path)), None)

    def _overwritten(self, path: Path) -> bool:
        try:
            now = _identity(path)
        except OSError:
            return False  # removed or renamed away: the open map still reads the old file
        opened = self._opened[path]
        return now[:2] == opened[:2] and now != opened

    def _read(self, module, like: torch.Tensor) -> torch.Tensor:
        from safetensors import safe_open

        path, key = self._keys[module]
        if path not in self._handles:
            self._opened[path] = _identity(path)
            self._handles[path] = safe_open(str(path), framework="pt")
        elif self._overwritten(path):
            raise LoramixError(f"Base model file {path} was overwritten while loaded, so the mixer cannot restore "
                               "its original weights from it; load the base model again.")
        return self._handles[path].get_tensor(key).to(like.dtype)
