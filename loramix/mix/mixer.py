"""The mixer: one base model loaded once, any number of LoRA adapters with a weight each, previews.

Adapters are read from disk once and bound to the base model's layers (`loramix.mix.binding`: names and
shapes checked). Changing a weight touches no file. A preview applies the blend through
`loramix.mix.apply` (the Mixer is a `BlendApplier`): fused weights where the originals fit the memory
budget, one part of the model at a time, stacked hooks for the rest; turning every adapter off gives the
base back bit for bit. This module holds the public API (load, set_blend, set_weight, remove, generate,
bake) and the pipeline.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loramix.core.allocator import give_back_memory
from loramix.core.errors import LoramixError
from loramix.formats.base_model import default_base_model, load_base_model
from loramix.formats.lora_io import LoraAdapter, read_lora
from loramix.mix.apply import BlendApplier
from loramix.mix.binding import BoundLayer, Slot, bind_layers
from loramix.mix.block_weights import BlockWeights, module_blocks, parse_block_weights
from loramix.mix.file_originals import FileOriginals
from loramix.mix.request import PRECISIONS, SAMPLERS, PreviewRequest

log = logging.getLogger(__name__)

WEIGHT_RANGE = (-2.0, 2.0)
BAKED_MARKER = ".loramix-baked"


def _samplers() -> dict:
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
        UniPCMultistepScheduler,
    )

    return {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler,
            "dpm++_2m": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler, "pndm": PNDMScheduler}


def check_bake_target(out_dir: str | Path, single_file: str | Path | None = None, replace: bool = False,
                      within=None) -> Path:
    """Refuse, before any work, a bake target that exists (unless `replace`) or that loramix did not bake,
    and any target the writer would refuse (a link, outside `within`)."""
    from loramix.core.writer import check_target, final_path

    out_dir = Path(out_dir)
    if out_dir.exists() or out_dir.is_symlink():
        if not replace:
            raise LoramixError(f"Bake: {out_dir} already exists; pick another name or tick replace.")
        if out_dir.is_symlink() or not (out_dir / BAKED_MARKER).is_file():
            raise LoramixError(f"Bake: {out_dir} was not baked by loramix (no {BAKED_MARKER} in it), so it is "
                               "never replaced; pick another name.")
    else:
        check_target(out_dir, within=within, field="Bake")
    if single_file:
        check_target(single_file, replace=replace, within=within, field="Bake single file")
    return final_path(out_dir)


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def preview_dtype(precision: str, device: str, unet_config: dict) -> torch.dtype:
    """The dtype a mixer holds the base in and previews compute in. `auto`: fp16 on a GPU; on a CPU bf16 where
    it multiplies bf16 natively (AVX-512-bf16 or AMX, `loramix.core.cpu_features`) and the base is full-size
    (an SD 1.5 preview 2.1x faster, at half the memory; docs/benchmarks.md, "bf16 on a CPU"), fp32 otherwise:
    CPUs without native bf16 emulate it (far slower), and the toy-sized models' layers are too small to pay
    for it (the embedded demo model, the test models), as in training's `train.mixed_precision = "auto"`.
    Fused weights are accumulated in fp32 and rounded once either way (`BlendApplier._fuse_module`), and a bake
    is always written from fp32 weights on a CPU (`Mixer.bake`)."""
    if precision != "auto":
        return _DTYPES[precision]
    if device == "cuda":
        return torch.float16
    from loramix.formats.base_model import cpu_bf16_pays

    return torch.bfloat16 if cpu_bf16_pays(unet_config) else torch.float32


def is_baked_folder(folder: Path) -> bool:
    return folder.is_dir() and not folder.is_symlink() and (folder / BAKED_MARKER).is_file()


@dataclass
class Mixer(BlendApplier):
    """Slots (the loaded adapters and their sliders) over a `BlendApplier` (the base model's components, the
    mode, `fuse_budget`, `file_originals`)."""

    slots: dict[str, Slot] = field(default_factory=dict)
    base: str = ""  # what `from_base` loaded: a folder, a file or a hub id ("" = the embedded tiny model)
    revision: str = ""

    @classmethod
    def from_base(cls, base: str = "", revision: str = "", device: str | None = None, originals: str = "file",
                  precision: str = "auto", **kw) -> Mixer:
        """`originals="file"` (the default): where the base is a diffusers folder of safetensors files (the
        embedded model too), a hub id (its snapshot in the Hugging Face cache) or a single .safetensors
        checkpoint, fused layers' base weights are read back from those files instead of held as copies, so
        `auto` fuses whatever the budget (docs/benchmarks.md, "Mix previews"); a pickle checkpoint, a hub base
        saved as .bin, and any layer the files do not match keep a host copy.
        "memory": always hold copies. `precision`: what previews compute in (`PRECISIONS`, `preview_dtype`)."""
        if precision not in PRECISIONS:
            raise LoramixError(f"precision {precision!r}: choose {', '.join(PRECISIONS)}.")
        components = load_base_model(base, revision)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = preview_dtype(precision, device, dict(components.unet.config))
        for module in components.models():
            module.to(device, dtype=dtype).eval().requires_grad_(False)
        if originals == "file":
            kw.setdefault("file_originals", FileOriginals.for_base(components, base or default_base_model(), revision))
        return cls(components, base=base, revision=revision, **kw)

    @property
    def dtype(self) -> torch.dtype:
        """What the base model's weights are held and previews computed in."""
        return self.components.unet.dtype

    @property
    def family(self):
        return self.components.family

    # ---- adapters ----------------------------------------------------------------------------
    def load(self, path: str | Path, name: str = "", weight: float = 1.0, te_weight: float | None = None,
             allow_unsafe: bool = False, blocks: BlockWeights | str | None = None) -> str:
        """Read an adapter file, check it fits the base model, and add it under `name`.
        `blocks`: per-block weights, a preset name (`OUTD`), a comma list or a `BlockWeights`."""
        path = Path(path)
        adapter = read_lora(path, allow_unsafe=allow_unsafe)
        name = name or path.stem
        if name in self.slots:
            raise LoramixError(f"An adapter named {name!r} is already loaded; remove it first or pick a new name.")
        slot = self._bound_slot(name, path, adapter, weight, te_weight)
        self.set_weight(slot, weight, te_weight, blocks=blocks)
        self.slots[name] = slot
        return name

    def _bound_slot(self, name: str, path: Path, adapter: LoraAdapter, weight: float,
                    te_weight: float | None) -> Slot:
        """A slot for `adapter` with its layers bound to this base and each layer's block known."""
        slot = Slot(name, path, adapter, self.bind(adapter, path.name), weight, te_weight)
        table = module_blocks(self.components)
        slot.layer_blocks = {layer.module: table.get(layer.module) for layer in slot.layers}
        return slot

    def set_blend(self, rows: list[tuple], allow_unsafe: bool = False) -> list[str]:
        """Make the loaded adapters exactly `rows` of (file, weight, enabled) or (file, weight, enabled,
        blocks), in that order; `blocks` is a preset name, a comma list, a `BlockWeights` or None.

        A file already loaded only gets its slider set; a new file is read once; a file no longer
        listed is dropped. Returns the adapter names, one per row.
        """
        by_path = {slot.path.resolve(): slot for slot in self.slots.values()}
        names, keep = [], set()
        for row in rows:
            if len(row) not in (3, 4):
                raise LoramixError(f"blend row {row!r}: give (file, weight, enabled) or (file, weight, enabled, "
                                   "blocks).")
            path, weight, enabled, blocks = (*row, None)[:4]
            slot = by_path.get(Path(path).resolve())
            if slot is None or slot.name in keep:
                stem, n = Path(path).stem, 2
                name = stem
                while name in self.slots:
                    name, n = f"{stem}#{n}", n + 1
                slot = self.slots[self.load(path, name=name, allow_unsafe=allow_unsafe)]
            self.set_weight(slot, weight, enabled=enabled, blocks=blocks)
            keep.add(slot.name)
            names.append(slot.name)
        for name in [n for n in self.slots if n not in keep]:
            self.remove(name)
        return names

    def remove(self, name: str) -> None:
        self.slots.pop(name, None)

    def set_weight(self, name: str | Slot, weight: float, te_weight: float | None = None,
                   enabled: bool | None = None, blocks: BlockWeights | str | None = "keep") -> None:
        """Change a slider: no file is read, no model reloaded. `blocks` left out keeps the block
        weights; None clears them; a preset name, comma list or `BlockWeights` sets them."""
        slot = name if isinstance(name, Slot) else self._slot(name)
        for label, value in (("weight", weight), ("text encoder weight", te_weight)):
            if value is not None and not WEIGHT_RANGE[0] <= value <= WEIGHT_RANGE[1]:
                raise LoramixError(f"{slot.name}: {label} {value} is outside {WEIGHT_RANGE[0]}..{WEIGHT_RANGE[1]}.")
        if isinstance(blocks, str) and blocks != "keep":
            blocks = parse_block_weights(blocks) if blocks.strip() else None
        if isinstance(blocks, BlockWeights):
            blocks.check_family(self.family)
        slot.weight, slot.te_weight = float(weight), te_weight
        if enabled is not None:
            slot.enabled = enabled
        if blocks != "keep":
            slot.blocks = blocks

    def _slot(self, name: str) -> Slot:
        if name not in self.slots:
            raise LoramixError(f"No adapter named {name!r} is loaded (loaded: {', '.join(self.slots) or 'none'}).")
        return self.slots[name]

    def bind(self, adapter: LoraAdapter, file_name: str) -> list[BoundLayer]:
        """Attach every layer of `adapter` to a module of the base model, or refuse the file and say why."""
        return bind_layers(self.components, adapter, file_name, self.base_weight)

    # ---- applying a blend --------------------------------------------------------------------
    def active(self) -> list[tuple[BoundLayer, float]]:
        """Every layer with a non-zero multiplier (weight x block weight), and that multiplier."""
        pairs = [(layer, slot.coef(layer.component, layer)) for slot in self.slots.values() for layer in slot.layers]
        return [(layer, coef) for layer, coef in pairs if coef != 0.0]

    def applied(self, mode: str | None = None, unet_calls: float = 1.0, exact: bool = False):
        """A block inside which the base model computes with the current blend (see `BlendApplier.apply`).

        Yields the mode used: "base", "fused", "unfused" or "mixed" (`auto` decides per part of the model
        by `fuse_budget`). Fused weights stay in the model after the block, so the next preview with the
        same blend costs nothing. A block with no active adapter, an unfused block and `restore()` first
        put the base weights back, bit for bit. `unet_calls`: the UNet calls at the native size the block
        will make (`unet_calls_of`), which `auto` weighs against rewriting weights. `exact`: fused weights
        are the sums rewritten from the originals, rounded once (what a bake writes), not in-place steps.
        """
        return self.apply(self.active(), mode, unet_calls, exact)

    def unet_calls_of(self, req: PreviewRequest) -> float:
        """The UNet calls a preview makes, in calls at the model's native size: a step is two with CFG (the
        prompt and the negative, as diffusers runs them when guidance_scale > 1), scaled by the pixels."""
        size = self.native_size()
        pixels = (req.width or size) * (req.height or size) / size ** 2
        return req.steps * (2 if req.cfg_scale > 1 else 1) * pixels

    # ---- previews ----------------------------------------------------------------------------
    def native_size(self) -> int:
        unet, vae = self.components.unet, self.components.vae
        return unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def generate(self, req: PreviewRequest, mode: str | None = None):
        req.validate()
        samplers = _samplers()
        if req.sampler not in samplers:
            raise LoramixError(f"sampler {req.sampler!r}: choose one of {', '.join(SAMPLERS)}.")
        pipe = self.pipeline()
        pipe.scheduler = samplers[req.sampler].from_config(self.components.noise_scheduler.config)
        size = self.native_size()
        with self.applied(mode, self.unet_calls_of(req)):
            return pipe(req.prompt, negative_prompt=req.negative_prompt or None, num_inference_steps=req.steps,
                        guidance_scale=req.cfg_scale, width=req.width or size, height=req.height or size,
                        generator=torch.Generator("cpu").manual_seed(req.seed)).images[0]

    def pipeline(self):
        """The family's diffusers pipeline over the base model's components, built once."""
        if getattr(self, "_pipe", None) is None:
            self._pipe = self.family.pipeline(self.components)
            self._pipe.set_progress_bar_config(disable=True)
        return self._pipe

    # ---- export ------------------------------------------------------------------------------
    def sources(self):
        """The enabled adapters with their weights, for merging."""
        from loramix.mix.merge import Source

        per_block = self.components.unet.config.layers_per_block
        per_block = per_block[0] if isinstance(per_block, (list, tuple)) else per_block
        return [Source(s.name, s.adapter, s.weight, s.te_weight, s.blocks, int(per_block))
                for s in self.slots.values() if s.enabled]

    def _baked_from(self) -> dict[str, str]:
        from loramix.formats.published import published_model_name

        slots = [s for s in self.slots.values() if s.enabled]
        titles = [s.adapter.metadata.get("modelspec.title", s.name) for s in slots]
        base = published_model_name(str(self.components.source or ""))
        return {"modelspec.merged_from": ", ".join([base or "embedded tiny model", *titles]),
                "loramix_baked_from": json.dumps([
                    {"name": s.name, "file": s.path.name, "weight": s.weight, "te_weight": s.te_weight,
                     "blocks": s.blocks.text if s.blocks is not None else None} for s in slots])}

    def bake(self, out_dir: str | Path, single_file: str | Path | None = None, replace: bool = False,
             within=None) -> Path:
        """Write the base model with the current blend fused in, as a diffusers folder, and optionally also
        as one checkpoint in the original layout that A1111 and ComfyUI load.

        The folder is written beside its target under a new temporary name and renamed into place, so a
        crash leaves no half model. An existing target is refused unless `replace` is set, and even then
        only a folder that loramix baked itself (it carries `BAKED_MARKER`) is replaced. The single file
        says what was baked in: `loramix_baked_from` (JSON: name, file, weight, te_weight, blocks of each
        enabled adapter) and `modelspec.merged_from` (the base, then the adapters' titles), beside the
        identification `save_single_file` writes (`ss_base_model_version`, `ss_v2`, `modelspec.*`, hashes).
        Neither names a local path: the folder's configs and the file name the base model as
        `loramix.formats.published.published_model_name` does. On a CPU the weights written are fp32 sums
        whatever the previews compute in (`_fp32_twin`).
        """
        out_dir = check_bake_target(out_dir, single_file, replace, within)
        if self.components.unet.device.type == "cpu" and self.dtype != torch.float32:
            try:
                return self._fp32_twin()._bake(out_dir, single_file, replace, within)
            finally:  # the twin is gone: its memory back to the system (loramix.core.allocator)
                give_back_memory()
        return self._bake(out_dir, single_file, replace, within)

    def _fp32_twin(self) -> Mixer:
        """The base loaded again in fp32 with the same adapters, sliders and block weights: a mixer whose
        previews compute in bf16 bakes from this, so a bake never rounds the base's weights to bf16 (it holds
        the fp32 model beside the bf16 one while it writes, and no copies of originals: it is fused once)."""
        twin = Mixer.from_base(self.base, self.revision, device="cpu", precision="fp32", mode=self.mode,
                               originals="file" if self.file_originals is not None else "memory",
                               fuse_budget=self.fuse_budget, hold_originals=False)  # fused once, then dropped
        for name, slot in self.slots.items():
            twin.slots[name] = copy = twin._bound_slot(name, slot.path, slot.adapter, slot.weight, slot.te_weight)
            copy.enabled, copy.blocks = slot.enabled, slot.blocks
        return twin

    def _bake(self, out_dir: Path, single_file, replace: bool, within) -> Path:
        from loramix.core.writer import atomic_folder
        from loramix.formats.published import publish_saved_configs

        if single_file:
            from loramix.formats.single_file import save_single_file

            with self.applied("fused", exact=True):
                save_single_file(self.components, single_file, self.family, metadata=self._baked_from(),
                                 replace=replace, within=within, field="Bake single file")
        with atomic_folder(out_dir, replace=replace, within=within, field="Bake", replaceable=is_baked_folder) as tmp:
            with self.applied("fused", exact=True):
                self.pipeline().save_pretrained(tmp, safe_serialization=True)
            publish_saved_configs(tmp)  # the configs name the base model by its base name, not its local path
            (tmp / BAKED_MARKER).write_text("baked by loramix\n", encoding="utf-8")
        return out_dir
