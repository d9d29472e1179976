"""Frozen encoders out of memory between samples: once the latents and text embeddings are cached, the VAE
and the text encoders are needed only to draw samples.

`EncoderParking.park()` writes their weights (parameters and buffers, each in its own dtype) once to a
safetensors file in the run folder and moves the modules to the `meta` device, which frees their
memory; `unparked()` reads them back bit for bit for the duration of a block (the samples) and frees
them again after it. The file is written through the one writer under a temp name of the writer's own form
(`.<name>.<random>.tmp`), so `remove_stale_temps` deletes it if the run is killed; `discard()` deletes it
at the end of a run.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from loramix.core.writer import atomic_path, remove_file

FILE_NAME = ".frozen-encoders.parked.tmp"  # the writer's temp-name form: swept after a kill


def _tensors(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    out = {}
    for prefix, module in modules.items():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            out[f"{prefix}/{name}"] = t.detach().contiguous()
    return out


def _put(module: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_path, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    if attr in owner._parameters:
        owner._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)
    else:
        owner._buffers[attr] = tensor


class EncoderParking:
    """The frozen modules `modules` ({name: module}) written to `folder`/FILE_NAME and freed while parked."""

    def __init__(self, modules: dict[str, torch.nn.Module], folder: str | Path):
        self.modules = modules
        self.path = Path(folder) / FILE_NAME
        self.parked = False
        self._written = False

    def park(self) -> None:
        if self.parked:
            return
        if not self._written:
            from safetensors.torch import save_file

            tensors = _tensors(self.modules)
            size = sum(t.numel() * t.element_size() for t in tensors.values())
            with atomic_path(self.path, expected_bytes=size, replace=True, within=self.path.parent) as tmp:
                save_file(tensors, str(tmp))
            self._written = True
            del tensors
        for module in self.modules.values():
            module.to("meta")
        self.parked = True

    def unpark(self) -> None:
        if not self.parked:
            return
        from safetensors.torch import load_file

        loaded = load_file(str(self.path))
        for prefix, module in self.modules.items():
            for key in [k for k in loaded if k.startswith(prefix + "/")]:
                _put(module, key[len(prefix) + 1:], loaded.pop(key))
        self.parked = False

    @contextlib.contextmanager
    def unparked(self):
        """The modules in memory inside the block, parked again after it (if they were parked before it)."""
        was = self.parked
        self.unpark()
        try:
            yield
        finally:
            if was:
                self.park()

    def discard(self) -> None:
        """Bring the modules back and delete the file."""
        self.unpark()
        remove_file(self.path, within=self.path.parent)
