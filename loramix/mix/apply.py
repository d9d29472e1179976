"""Applying a blend to the base model: fused weights where memory allows, stacked hooks for the rest.

A blend arrives as (bound layer, multiplier) pairs (`Mixer.active()`). Two ways to apply a module's
pairs, with identical results:

* fused: W <- W_original + sum_i w_i * dW_i is written into the base weight, in the weight's dtype. It
  stays while the module's (layer, multiplier) tuple is unchanged, so an unchanged blend costs nothing
  per preview. A changed tuple is a step in place by what changed: a slider moved adds that adapter's
  own product, (new - old) * dW, not the whole blend's. Every `exact_every`-th change, a bake
  (`exact=True`) and a module put back are written from the original, so rounding never builds up past
  `exact_every - 1` steps and the base comes back bit for bit. The original is held once, on the host,
  in the model's dtype; or, with `file_originals`, read back from the base folder's safetensors files
  (`loramix.mix.file_originals`), which holds nothing.
* hooked: a forward hook adds the module's stacked low-rank branch (`loramix.mix.stacked_hooks`) on
  the base weight, rebuilt only for modules whose tuple changed: one low-rank product per call, and
  the stack held (the scaled ups, and the downs concatenated when there are several), no weight copy.
  A fused module whose blend changed can hook the change alone, (layer, new - old), on its fused weight.

`mode="auto"` decides per module (`plan`), by memory: a fused module costs nothing while its blend is
unchanged, and a slider change costs it the cheaper of hooking the change alone (that adapter's rank, not
the blend's) and stepping its weight (`_defer`), so every module is fused whose original costs no memory
(read back from a file) or less than its hooks' stack, and then others while the originals held plus the
stacks of the modules left hooked stay within `fuse_budget` (a fraction of the model's parameter memory),
the UNet's first and those whose hooks work most per byte first. A hook's work per call is the rows the
module sees times (fan-in + fan-out) times the rank, paid on every UNet call of a preview (16 for the Mix
tab's 8-step slider previews with CFG); a step is fan-in times fan-out times the rank, paid once. So at
8 steps a change steps nearly every weight, and at one step the deep layers (few tokens, many channels)
hook a dragged slider until the hooks have cost as much as a step. Originals no longer needed are handed
back.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from loramix.core import cpu_features
from loramix.core.errors import LoramixError
from loramix.formats.families import Components
from loramix.mix.file_originals import FileOriginals
from loramix.mix.stacked_hooks import blend_key, by_module, is_low_rank, stacked_hook, update_stacks

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


# What a step of a fused weight costs beyond its product, in rank: the pass that reads and writes the weight
# (an fp32 SD 1.5 UNet weight stepped by a rank-16 product costs about 1 ns per element on one EPYC core, as a
# rank-32 product would: bench/mix_preview_modes.py).
STEP_PASS = 16


def difference(old: list, new: list) -> list:
    """(layer, new coefficient - old coefficient) for each layer whose coefficient differs between the blends
    `old` and `new` [(layer, coef)] (a layer missing from one counts as 0 there)."""
    before = {id(layer): (layer, coef) for layer, coef in old}
    after = {id(layer): (layer, coef) for layer, coef in new}
    changes = []
    for key in {**before, **after}:
        layer = (after.get(key) or before[key])[0]
        change = (after[key][1] if key in after else 0.0) - (before[key][1] if key in before else 0.0)
        if change != 0.0:
            changes.append((layer, change))
    return changes


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
    # A fused module takes a changed blend as an in-place step (the moved sliders' products only), and every
    # `exact_every`-th change is rewritten from its original, so at most `exact_every - 1` roundings build up
    # (1 = always from the original). None: 64 for float32 weights (64 roundings of 2^-24 are far below what
    # a picture shows, and a rewrite with 10 adapters costs 0.9x a 1-step SD 1.5 preview), 8 for fp16 / bf16.
    exact_every: int | None = None
    # The fused-weight cache: module -> ((id(layer), coef) per layer, the (layer, coef) pairs that keep
    # those ids alive), or None while a module is being rewritten; and the base weight (and bias, where a
    # diff_b changed it) of modules fused, on the host, in the model's dtype.
    _fused_blend: dict = field(default_factory=dict, init=False, repr=False)
    _originals: dict = field(default_factory=dict, init=False, repr=False)
    _bias_originals: dict = field(default_factory=dict, init=False, repr=False)
    # The hooks' stacks: module -> ModuleStack, kept while hooked previews follow each other.
    _stacks: dict = field(default_factory=dict, init=False, repr=False)
    # module -> slider changes taken in place (`_step_module`) since its last rewrite from the original
    _steps: dict = field(default_factory=dict, init=False, repr=False)
    # module -> the hook work its changes have cost since its fused weight was last written (`_defer`)
    _deferred: dict = field(default_factory=dict, init=False, repr=False)
    _rows: dict | None = field(default=None, init=False, repr=False)  # unet_rows(), worked out once

    @contextlib.contextmanager
    def apply(self, active: list, mode: str | None = None, unet_calls: float = 1.0, exact: bool = False):
        """Inside this block the base model computes with the blend `active` [(layer, coef)]; `unet_calls`
        is how many UNet calls at the model's native size the block will make (for `auto`'s plan). `exact`:
        every fused module is the sum rewritten from its original, rounded once (a bake), not the result of
        in-place steps (`_step_module`).

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
            if not exact:
                fused, differences = self._defer(fused, unet_calls)
                hooked = hooked + differences
        else:
            fused, hooked = (active, []) if mode == "fused" else ([], active)
        self._update_fused(fused, exact)
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
        """Split `active` into (pairs to fuse, pairs to hook): fuse what memory allows, hook the rest.

        A fused module costs nothing on an unchanged blend, and takes a slider change as a hook of the change
        alone or as a step of its weight, whichever is cheaper (`_defer`); hooked, it pays every adapter's
        rank on every call. So fusing wins wherever memory allows, and memory alone decides: every module
        whose fusing holds no more than its hooks would (its original read back from a file, or smaller
        than its stack: many adapters) is fused; then, UNet first (its modules are called `unet_calls` times
        a preview: steps, times 2 with CFG, times the pixels' share of the native size; a text encoder's
        once) and highest hook work per byte of original first, each module whose original, held in place of
        its stack, keeps the memory held within `fuse_budget`.
        """
        per_module = by_module(active)
        hook_work = {m: self._hook_work(m, sum(self._rank(m, layer) for layer, _ in pairs), unet_calls)
                     for m, pairs in per_module.items()}
        limit = self.fuse_budget * sum(nbytes(p) for m in self.components.models() for p in m.parameters())
        saving = {m: stack_bytes(pairs) - (0 if self._on_disk(m) else nbytes(m.weight))
                  for m, pairs in per_module.items()}
        fuse = {m for m in per_module if saving[m] >= 0}
        used = sum(stack_bytes(pairs) for m, pairs in per_module.items() if m not in fuse)
        for module in sorted((m for m in per_module if m not in fuse),  # (sorted is stable: ties in blend order)
                             key=lambda m: (m not in self._rows, -hook_work[m] / m.weight.numel())):
            if used - saving[module] <= limit:
                fuse.add(module)
                used -= saving[module]
        fused = [pair for m, pairs in per_module.items() if m in fuse for pair in pairs]
        hooked = [pair for m, pairs in per_module.items() if m not in fuse for pair in pairs]
        return fused, hooked

    def _rank(self, module: torch.nn.Module, layer) -> int:
        fan_in, fan_out = module.weight[0].numel(), module.weight.shape[0]
        return layer.down.shape[0] if is_low_rank(layer) else min(fan_in, fan_out)

    def _hook_work(self, module: torch.nn.Module, rank: int, unet_calls: float) -> float:
        """A hook's work over a preview: rows seen per call times (fan-in + fan-out) times the rank, times the
        calls (a text encoder's module is called once)."""
        if self._rows is None:
            self._rows = unet_rows(self.components.unet)
        w = module.weight
        calls = unet_calls if module in self._rows else 1.0
        return calls * self._rows.get(module, TEXT_TOKENS) * (w[0].numel() + w.shape[0]) * rank

    def _step_work(self, module: torch.nn.Module, rank: int, blend_rank: int) -> float:
        """A step of a fused weight by a product of `rank` (plus the pass over the weight, worth
        `STEP_PASS` of rank), and its share of the rewrite from the original every `exact_every` changes."""
        return module.weight.numel() * (rank + STEP_PASS + (blend_rank + STEP_PASS) / self._exact_every(module))

    def _exact_every(self, module: torch.nn.Module) -> int:
        if self.exact_every is not None:
            return self.exact_every
        return 64 if module.weight.dtype == torch.float32 else 8

    def _defer(self, fused: list, unet_calls: float) -> tuple[list, list]:
        """Which of the changes to fused modules to hook for this preview instead of stepping the weight.

        `fused` [(layer, coef)] is the blend the plan fuses. A module already fused with another blend can
        keep its weight and hook the difference, (layer, new coef - old coef) for the layers that changed (a
        slider being dragged: one adapter's rank, whatever the blend's), or step its weight to the new blend.
        Hooks are paid on every call of every preview, a step once: the hooks are taken while their work summed
        since the module's last write stays below a step's (`_step_work`); then the module is stepped (the
        rent-or-buy rule, never more than twice the cheaper choice in hindsight). At the Mix tab's 8-step
        previews the high-resolution layers step at once; at one step the deep ones hook a dragged slider.
        Returns (the blend each module's weight is brought to, the difference pairs to hook).
        """
        keep, differences = [], []
        for module, pairs in by_module(fused).items():
            held = self._fused_blend.get(module)
            if held is None or held[0] == blend_key(pairs):
                keep.extend(pairs)
                continue
            change = difference(held[1], pairs)
            rank = sum(self._rank(module, layer) for layer, _ in change)
            spent = self._deferred.get(module, 0.0) + self._hook_work(module, rank, unet_calls)
            blend_rank = sum(self._rank(module, layer) for layer, _ in pairs)
            if spent >= self._step_work(module, rank, blend_rank) or not all(is_low_rank(lr) for lr, _ in change):
                keep.extend(pairs)  # stepped by `_update_fused`
            else:
                keep.extend(held[1])
                differences.extend(change)
                self._deferred[module] = spent
        return keep, differences

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
        self._steps.clear()
        self._deferred.clear()

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

    def _update_fused(self, pairs: list, exact: bool = False) -> None:
        """Bring the fused weights up to date with `pairs`: a module is rewritten only when its (layer,
        coefficient) tuple changed. A module fused before takes only what changed (`_step_module`: the
        moved sliders' own products), and is rewritten from its original every `exact_every` changes, so
        rounding never builds up past that; a module fused before and not in `pairs` gets its base weight
        back, bit for bit. `exact`: a module stepped since its last rewrite is rewritten."""
        wanted = by_module(pairs)
        with torch.no_grad():
            for module in [m for m in self._fused_blend if m not in wanted]:
                self._put_back(module)
                del self._fused_blend[module]
                self._steps.pop(module, None)
                self._deferred.pop(module, None)
            for module, module_pairs in wanted.items():
                key = blend_key(module_pairs)
                held = self._fused_blend.get(module)
                if held is not None and held[0] == key and not (exact and self._steps.get(module)):
                    continue
                if held is not None and held[0] != key and not exact and self.hold_originals \
                        and self._steps.get(module, 0) + 1 < self._exact_every(module):
                    self._fused_blend[module] = None  # half-written until this returns
                    self._step_module(module, held[1], module_pairs)
                    self._steps[module] = self._steps.get(module, 0) + 1
                else:
                    self._fuse_module(module, module_pairs)
                    self._steps[module] = 0
                self._fused_blend[module] = (key, module_pairs)
                self._deferred.pop(module, None)

    def _fuse_module(self, module: torch.nn.Module, pairs: list) -> None:
        """W = W_original + sum of coef * dW over `pairs`, for one module, in the weight's dtype."""
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
        self._add_into(weight, original, pairs)
        self._fuse_bias(module, pairs)

    def _step_module(self, module: torch.nn.Module, old: list, new: list) -> None:
        """A fused module from blend `old` to blend `new` [(layer, coef)] by what changed only: W += sum of
        (new coef - old coef) * dW over the layers whose coefficient moved (a layer gone counts as 0).

        One slider moved costs that adapter's product (rank 16 with 10 adapters fused, not 160) and no copy
        of the original; each step rounds once more, which `exact_every` bounds.
        """
        self._add_into(module.weight, None, difference(old, new))
        self._fuse_bias(module, new)

    @staticmethod
    def _add_into(weight: torch.Tensor, start: torch.Tensor | None, pairs: list) -> None:
        """weight = start + sum of coef * dW over `pairs`, in the weight's dtype (`start` None: the weight itself).

        Low-rank layers go through one matrix product (ups scaled and concatenated, downs stacked);
        other layers (LoHa, LoKr, ...) add their full `delta()`, one layer at a time. fp16 / bf16
        weights on a CPU are summed in a float32 copy of this one layer and rounded once: CPUs without
        native bf16 run half-precision matrix products ~10x slower (one SDXL layer: 0.21 s against 0.02 s).
        On a CPU with native bf16, a bf16 weight whose layers are all low-rank takes the product in place
        (`addmm` accumulates in float32 and rounds once, within about one bf16 step of the float32 sum):
        1.6-2.6x faster at SDXL widths with 10 adapters (docs/benchmarks.md, "Mix previews in bf16").
        """
        source = weight.detach() if start is None else start
        low_rank = [(layer, coef) for layer, coef in pairs if is_low_rank(layer)]
        if weight.device.type == "cpu" and weight.dtype in (torch.float16, torch.bfloat16) \
                and not (weight.dtype == torch.bfloat16 and len(low_rank) == len(pairs) and cpu_features.native_bf16()):
            flat = source.to(torch.float32, copy=True)
        else:
            if start is not None:
                weight.copy_(start)
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
