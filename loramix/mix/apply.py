"""Applying a blend to the base model: fused weights where memory allows, stacked hooks for the rest.

A blend arrives as (bound layer, multiplier) pairs (`Mixer.active()`). Two ways to apply a module's
pairs, with identical results:

* fused: W <- W_original + sum_i w_i * dW_i is written into the base weight, in the weight's dtype. It
  stays while the module's (layer, multiplier) tuple is unchanged, so an unchanged blend costs nothing
  per preview; a changed tuple rewrites that module from its original, so no rounding accumulates. The
  original is held once, on the host, in the model's dtype; or, with `file_originals`, read back from
  the base folder's safetensors files (`loramix.mix.file_originals`), which holds nothing.
* hooked: a forward hook adds the module's stacked low-rank branch (`loramix.mix.stacked_hooks`) on
  the base weight, rebuilt only for modules whose tuple changed: one low-rank product per call, and
  the stack held (the scaled ups, and the downs concatenated when there are several), no weight copy.

`mode="auto"` decides per component and, in the UNet, per module (`plan`). A hook's work per call is
the rows the module sees times (fan-in + fan-out) times the rank; rewriting a fused weight after a
slider change is fan-in times fan-out times the rank, and its original, held, costs fan-in times fan-out
in memory. So the UNet's high-resolution layers (many tokens, few channels) gain most from fusing and
cost least, the deep ones (few tokens, many channels) the reverse, and the text encoders (one call per
preview on 77 tokens) gain next to nothing. A hook is paid on every UNet call of a preview (16 for the Mix
tab's 8-step slider previews with CFG), a rewrite once per slider change: `auto` fuses, UNet first and
highest hook work per byte first, every module whose hooks over the preview cost more than its rewrite,
while the originals held plus the stacks of the modules left hooked stay within `fuse_budget` (a fraction of
the model's parameter memory); an original read back from a file costs nothing. If the stacks alone exceed
the budget (many adapters), modules whose original is smaller than their stack are fused as well. Originals
no longer needed are handed back.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from loramix.core import cpu_features
from loramix.core.errors import LoramixError
from loramix.formats.families import Components
from loramix.mix.file_originals import FileOriginals
from loramix.mix.stacked_hooks import is_low_rank, stacked_hook, update_stacks

MODES = ("auto", "fused", "unfused")
TEXT_TOKENS = 77  # the rows a text encoder's layer sees per prompt


def unet_rows(unet: torch.nn.Module) -> dict[torch.nn.Module, int]:
    """Module -> rows (tokens or pixels) it sees per sample in one UNet call at the model's native size.

    From diffusers' UNet2DConditionModel layout, which every family here uses: `down_blocks.i` runs at
    resolution level i (its downsampler writes level i+1), `mid_block` at the last level, `up_blocks.j`
    at level (levels - 1 - j) (its upsampler writes the level above); cross-attention keys and values
    see the text's tokens, the time embedding one row.
    """
    size = unet.config.sample_size
    size = size[0] * size[1] if isinstance(size, (list, tuple)) else size * size
    levels = len(unet.config.block_out_channels)
    rows = {}
    for path, module in unet.named_modules():
        parts = path.split(".") + ["", "", ""]
        level = 0
        if parts[0] == "down_blocks" and parts[1].isdigit():
            level = int(parts[1]) + (parts[2] == "downsamplers")
        elif parts[0] == "mid_block":
            level = levels - 1
        elif parts[0] == "up_blocks" and parts[1].isdigit():
            level = levels - 1 - int(parts[1]) - (parts[2] == "upsamplers")
        if path.endswith(("attn2.to_k", "attn2.to_v")):
            rows[module] = TEXT_TOKENS
        elif "time_emb" in path or "add_embedding" in path:
            rows[module] = 1
        else:
            rows[module] = max(1, size // 4 ** max(level, 0))
    return rows


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def stack_bytes(pairs: list) -> int:
    """What a module's stack holds beyond its layers' own tensors (see `stacked_hooks.build_stack`): the
    ups, scaled; the downs too when there are several, concatenated."""
    low_rank = [layer for layer, _ in pairs if is_low_rank(layer)]
    if not low_rank:
        return 0
    return sum(nbytes(layer.up) + (nbytes(layer.down) if len(low_rank) > 1 else 0) for layer in low_rank)


@dataclass
class BlendApplier:
    """The base model's modules with a blend applied: the fused-weight cache, the originals, the hooks."""

    components: Components
    mode: str = "auto"  # "auto" | "fused" | "unfused"
    # `auto` fuses modules while the originals held on the host stay within this fraction of the model's
    # parameter memory (a kohya LoRA on every transformer Linear adapts ~33% of SD 1.5), and hooks the rest.
    fuse_budget: float = 0.10
    # Where the originals of a base loaded from safetensors files can be read back instead of being held
    # (see loramix.mix.file_originals); None = every original is held.
    file_originals: FileOriginals | None = None
    # False: a one-use applier (a bake's fp32 twin) that fuses each module once and never puts the base back, so
    # it holds no copies of originals that are not on disk.
    hold_originals: bool = True
    # The fused-weight cache: module -> ((id(layer), coef) per layer, the (layer, coef) pairs that keep
    # those ids alive), or None while a module is being rewritten; and the base weight (and bias, where a
    # diff_b changed it) of modules fused, on the host, in the model's dtype.
    _fused_blend: dict = field(default_factory=dict, init=False, repr=False)
    _originals: dict = field(default_factory=dict, init=False, repr=False)
    _bias_originals: dict = field(default_factory=dict, init=False, repr=False)
    # The hooks' stacks: module -> ModuleStack, kept while hooked previews follow each other.
    _stacks: dict = field(default_factory=dict, init=False, repr=False)
    _rows: dict | None = field(default=None, init=False, repr=False)  # unet_rows(), worked out once

    @contextlib.contextmanager
    def apply(self, active: list, mode: str | None = None, unet_calls: float = 1.0):
        """Inside this block the base model computes with the blend `active` [(layer, coef)]; `unet_calls`
        is how many UNet calls at the model's native size the block will make (for `auto`'s plan).

        Yields the mode used: "base" (nothing active), "fused", "unfused" or "mixed" (`auto` fused some
        parts and hooked others). Fused weights stay after the block; hooks are removed.
        """
        mode = mode or self.mode
        if mode not in MODES:
            raise LoramixError(f"mode {mode!r}: choose auto, fused or unfused.")
        if not active:
            self.restore()
            self._stacks.clear()
            yield "base"
            return
        if mode == "auto":
            fused, hooked = self.plan(active, unet_calls)
        else:
            fused, hooked = (active, []) if mode == "fused" else ([], active)
        self._update_fused(fused)
        if mode == "auto":  # hand back the host copies of modules no longer fused
            for module in [m for m in self._originals if m not in self._fused_blend]:
                del self._originals[module]
        if not hooked:
            self._stacks.clear()
            yield "fused"
            return
        with self._hooked(hooked):
            yield "mixed" if fused else "unfused"

    def plan(self, active: list, unet_calls: float = 1.0) -> tuple[list, list]:
        """Split `active` into (pairs to fuse, pairs to hook).

        Every module starts hooked, its stack held. Time first: in order (UNet before text encoders, then
        by hook work per byte of original, highest first) a module whose hooks do more work over the
        preview (`unet_calls` UNet calls at the native size: steps, times 2 with CFG, times the pixels'
        share of the native size; a text encoder's module is called once) than rewriting its weight after
        a slider change is fused, if the memory held (its original in place of its stack) stays within
        `fuse_budget`. Then memory: while the stacks still exceed the budget, the modules whose original is
        smaller than their stack are fused too, those that add the least work per byte saved first (their
        rewrite less the hook work it spares).
        """
        per_module: dict[torch.nn.Module, list] = {}
        for layer, coef in active:
            per_module.setdefault(layer.module, []).append((layer, coef))
        if self._rows is None:
            self._rows = unet_rows(self.components.unet)
        hook_work, rewrite_work = {}, {}
        for module, pairs in per_module.items():
            w = module.weight
            fan_in, fan_out = w[0].numel(), w.shape[0]
            ranks = [layer.down.shape[0] if is_low_rank(layer) else min(fan_in, fan_out) for layer, _ in pairs]
            calls = unet_calls if module in self._rows else 1.0
            hook_work[module] = calls * self._rows.get(module, TEXT_TOKENS) * (fan_in + fan_out) * sum(ranks)
            rewrite_work[module] = w.numel() * sum(ranks)
        limit = self.fuse_budget * sum(nbytes(p) for m in self.components.models() for p in m.parameters())
        saving = {m: stack_bytes(pairs) - (0 if self._on_disk(m) else nbytes(m.weight))
                  for m, pairs in per_module.items()}
        used = sum(stack_bytes(pairs) for pairs in per_module.values())  # every module hooked to begin with
        fuse = set()
        for module in sorted(per_module, key=lambda m: (m not in self._rows, -hook_work[m] / m.weight.numel())):
            if hook_work[module] >= rewrite_work[module] and (saving[module] >= 0 or used - saving[module] <= limit):
                fuse.add(module)
                used -= saving[module]
        # least extra work per byte saved first: the rewrite after a slider change, less the hook work it spares
        for module in sorted((m for m in per_module.keys() - fuse if saving[m] > 0),
                             key=lambda m: (rewrite_work[m] - hook_work[m]) / saving[m]):
            if used <= limit:
                break
            fuse.add(module)
            used -= saving[module]
        fused = [pair for m, pairs in per_module.items() if m in fuse for pair in pairs]
        hooked = [pair for m, pairs in per_module.items() if m not in fuse for pair in pairs]
        return fused, hooked

    def held_bytes(self) -> int:
        """Host memory this applier holds beside the model: originals, and stacks beyond the layers' own
        tensors (a one-adapter stack is that adapter's own down)."""
        own = {t.data_ptr() for stack in self._stacks.values() for layer, _ in stack.pairs
               for t in (getattr(layer, "down", None), getattr(layer, "up", None)) if t is not None}
        stacks = sum(nbytes(t) for s in self._stacks.values() for t in (s.down, s.up)
                     if t is not None and t.data_ptr() not in own)
        return sum(nbytes(t) for t in (*self._originals.values(), *self._bias_originals.values())) + stacks

    def restore(self) -> None:
        """Put back the base weights of every module a preview fused, bit for bit."""
        with torch.no_grad():
            for module in list(self._fused_blend):
                self._put_back(module)
                del self._fused_blend[module]

    def release(self) -> None:
        """`restore()`, then hand back every held original and stack: the model alone is left."""
        self.restore()
        self._originals.clear()
        self._bias_originals.clear()
        self._stacks.clear()

    def base_weight(self, module: torch.nn.Module) -> torch.Tensor:
        """`module`'s base weight, whether or not a blend is fused into it now."""
        return self._original(module) if module in self._fused_blend else module.weight

    def _put_back(self, module: torch.nn.Module) -> None:
        module.weight.copy_(self._original(module))
        if module in self._bias_originals:
            module.bias.copy_(self._bias_originals[module])

    def _on_disk(self, module) -> bool:
        return self.file_originals is not None and module not in self._originals and self.file_originals.has(module)

    def _original(self, module) -> torch.Tensor:
        """The base weight of a module that was fused: its held copy, or read back from the base's file."""
        held = self._originals.get(module)
        return held if held is not None else self.file_originals.read(module)

    def _update_fused(self, pairs: list) -> None:
        """Bring the fused weights up to date with `pairs`: a module is rewritten only when its (layer,
        coefficient) tuple changed, from its original, so no rounding accumulates; a module fused before
        and not in `pairs` gets its base weight back."""
        wanted: dict[torch.nn.Module, list] = {}
        for layer, coef in pairs:
            wanted.setdefault(layer.module, []).append((layer, coef))
        with torch.no_grad():
            for module in [m for m in self._fused_blend if m not in wanted]:
                self._put_back(module)
                del self._fused_blend[module]
            for module, module_pairs in wanted.items():
                key = tuple((id(layer), coef) for layer, coef in module_pairs)
                held = self._fused_blend.get(module)
                if held is None or held[0] != key:
                    self._fuse_module(module, module_pairs)
                    self._fused_blend[module] = (key, module_pairs)

    def _fuse_module(self, module: torch.nn.Module, pairs: list) -> None:
        """W = W_original + sum of coef * dW over `pairs`, for one module, in the weight's dtype.

        Low-rank layers go through one matrix product (ups scaled and concatenated, downs stacked);
        other layers (LoHa, LoKr, ...) add their full `delta()`, one layer at a time. fp16 / bf16
        weights on a CPU are summed in a float32 copy of this one layer and rounded once: CPUs without
        native bf16 run half-precision matrix products ~10x slower (one SDXL layer: 0.21 s against 0.02 s).
        On a CPU with native bf16, a bf16 weight whose layers are all low-rank takes the product in place
        (`addmm` accumulates in float32 and rounds once, within about one bf16 step of the float32 sum):
        1.6-2.6x faster at SDXL widths with 10 adapters (docs/benchmarks.md, "Mix previews in bf16").
        """
        weight = module.weight
        if module in self._originals or self._on_disk(module):
            original = self._original(module)
        elif self.hold_originals:
            original = self._originals[module] = weight.detach().to("cpu", copy=True)
        elif module in self._fused_blend:
            raise LoramixError("This blend was fused for one use (hold_originals=False) and cannot be changed.")
        else:  # fused once and never put back: the weight in place is the original
            original = weight.detach()
        self._fused_blend[module] = None  # half-written until this returns
        low_rank = [(layer, coef) for layer, coef in pairs if is_low_rank(layer)]
        if weight.device.type == "cpu" and weight.dtype in (torch.float16, torch.bfloat16) \
                and not (weight.dtype == torch.bfloat16 and len(low_rank) == len(pairs) and cpu_features.native_bf16()):
            flat = original.to(torch.float32)
        else:
            weight.copy_(original)
            flat = weight if weight.is_contiguous() else weight.contiguous()
        flat = flat.view(flat.shape[0], -1)
        if low_rank:  # the ups scaled in float32, then one product accumulated in float32 and rounded once
            ups = torch.cat([(layer.up.flatten(1).float() * (coef * layer.scale)).to(flat)
                             for layer, coef in low_rank], 1)
            downs = torch.cat([layer.down.flatten(1).to(flat) for layer, _ in low_rank], 0)
            flat.addmm_(ups, downs)
        for layer, coef in pairs:
            if all(layer is not lr for lr, _ in low_rank):
                flat.add_(layer.delta().reshape(flat.shape).to(flat), alpha=coef)
        if flat.data_ptr() != weight.data_ptr():
            weight.copy_(flat.view_as(weight))
        self._fuse_bias(module, pairs)

    def _fuse_bias(self, module: torch.nn.Module, pairs: list) -> None:
        """b = b_original + sum of coef * diff_b over the `pairs` that change the bias (LyCORIS full layers)."""
        changes = [(bias, coef) for layer, coef in pairs
                   if hasattr(layer, "bias_delta") and (bias := layer.bias_delta()) is not None]
        if changes and module not in self._bias_originals:
            self._bias_originals[module] = module.bias.detach().to("cpu", copy=True)
        if module in self._bias_originals:
            total = self._bias_originals[module].to(module.bias.device, torch.float32)
            for bias, coef in changes:
                total = total + coef * bias.to(total)
            module.bias.copy_(total)

    @contextlib.contextmanager
    def _hooked(self, pairs: list):
        """One hook per hooked module, adding its stacked branch (see `loramix.mix.stacked_hooks`)."""
        update_stacks(self._stacks, pairs)
        handles = [m.register_forward_hook(stacked_hook(self._stacks)) for m in self._stacks]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
