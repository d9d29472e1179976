"""Binding an adapter to the base model: which module each of its layers changes, and by how much.

`bind_layers` matches every layer of a read adapter file to a module of the base model (names through
the family's kohya naming, shapes checked) and returns one `BoundLayer` per layer: the layer's own
maths (`delta()`, `branch(x)`) attached to its module. A `Slot` is one loaded adapter with its sliders;
`Slot.coef` turns the sliders into each layer's multiplier. Nothing here changes the model: applying a
blend is `loramix.mix.apply`, the orchestration `loramix.mix.mixer`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from loramix.adapters.adapter_layers import DoraLayer, FullLayer, bias_delta
from loramix.core.errors import AdapterFormatError
from loramix.formats.families import Components
from loramix.formats.lora_io import LoraAdapter, LoraLayer, guess_architecture, module_table
from loramix.mix.block_weights import BlockWeights


@dataclass
class BoundLayer:
    """One adapter layer attached to one module of the base model.

    Interface for applying it: `delta()` is ΔW (float32, shaped like `module.weight`, the layer's own
    scale included, the slider coefficient not); `branch(x)` is what the layer adds to the module's
    output for input x (the unfused hook). A low-rank layer (LoRA / LoCon) carries `down`, `up` and
    `scale`, already shaped and cast for the module, so callers may use them directly; a LoHa, LoKr
    or full layer has `down = up = None` and keeps its `adapter_layer` (see `loramix.adapters.adapter_layers`):
    its branch applies the full ΔW (F.linear / F.conv2d with the module's stride, padding, dilation
    and groups), computed once in the module's dtype and cached on first use. A DoRA layer is bound
    as a full layer holding ΔW_DoRA = m·(W + ΔW)/‖W + ΔW‖ − W, computed at `bind` against the
    unmodified base weight W; so the slider weight w gives W + w·ΔW_DoRA, and a blend adds each
    adapter's w_i·ΔW_DoRA,i (as A1111 and ComfyUI apply DoRA; see `adapter_layers.DoraLayer`). A LyCORIS
    full layer with `diff_b` also changes the module's bias (`bias_delta()`): the branch adds it, and a
    fused blend writes b_original + Σ w_i·diff_b,i into `module.bias`, put back with the weight.
    """

    module: torch.nn.Module
    component: str  # "unet" or "text"
    down: torch.Tensor | None  # shaped for the module: (r, in) for Linear, (r, in, k, k) for Conv2d
    up: torch.Tensor | None
    scale: float
    adapter_layer: object | None = None  # the LoHa / LoKr / full layer when down/up are None
    _branch_weight: torch.Tensor | None = field(default=None, init=False, repr=False)
    _branch_bias: torch.Tensor | None = field(default=None, init=False, repr=False)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if self.down is None:
            if self._branch_weight is None:
                self._branch_weight = self.delta().to(m.weight)
                bias = self.bias_delta()
                self._branch_bias = bias.to(m.weight) if bias is not None else None
            bias = self._branch_bias.to(x) if self._branch_bias is not None else None
            if isinstance(m, torch.nn.Conv2d):
                return F.conv2d(x, self._branch_weight.to(x), bias, stride=m.stride, padding=m.padding,
                                dilation=m.dilation, groups=m.groups)
            return F.linear(x, self._branch_weight.to(x), bias)
        if isinstance(m, torch.nn.Conv2d):
            h = F.conv2d(x, self.down, stride=m.stride, padding=m.padding, dilation=m.dilation)
            return F.conv2d(h, self.up) * self.scale
        return F.linear(F.linear(x, self.down), self.up) * self.scale

    def bias_delta(self) -> torch.Tensor | None:
        """The change to the module's bias (a LyCORIS full layer's `diff_b`), or None."""
        return bias_delta(self.adapter_layer) if self.adapter_layer is not None else None

    def delta(self) -> torch.Tensor:
        if self.down is None:
            return self.adapter_layer.delta(self.module.weight.shape)
        d = self.up.flatten(1).float() @ self.down.flatten(1).float()
        return (d * self.scale).reshape(self.module.weight.shape)


@dataclass
class Slot:
    """A loaded adapter and its sliders."""

    name: str
    path: Path
    adapter: LoraAdapter
    layers: list[BoundLayer]
    weight: float = 1.0
    te_weight: float | None = None  # None = same as weight
    enabled: bool = True
    blocks: BlockWeights | None = None  # per-block multipliers (lora-block-weight syntax); None = 1 everywhere
    layer_blocks: dict = field(default_factory=dict, repr=False)  # module -> block index (see block_weights)

    def coef(self, component: str, layer: BoundLayer | None = None) -> float:
        """The multiplier of one layer: weight (or text encoder weight) x its block's weight."""
        if not self.enabled:
            return 0.0
        weight = self.weight if component == "unet" or self.te_weight is None else self.te_weight
        if self.blocks is None or layer is None:
            return weight
        block = 0 if component == "text" else self.layer_blocks.get(getattr(layer, "module", None))
        return weight * self.blocks.value(block)


def bind_layers(components: Components, adapter: LoraAdapter, file_name: str,
                base_weight: Callable[[torch.nn.Module], torch.Tensor] | None = None) -> list[BoundLayer]:
    """Attach every layer of `adapter` to a module of `components`, or refuse the file and say why.

    `base_weight(module)` gives a module's unmodified base weight while a blend is fused into it (a DoRA
    layer is bound against that); by default the module's own weight.
    """
    family = components.family
    targets = {family.unet_prefix: ("unet", components.unet)}
    targets.update({p: ("text", m) for p, m in family.text_encoders(components).items()})
    tables = {p: (module_table(m, p, partial(family.kohya_path, p, model=m)), dict(m.named_modules()))
              for p, (_, m) in targets.items()}
    bound, problems = [], []
    for name, layer in adapter.layers.items():
        prefix = max((p for p in targets if name.startswith(p + "_")), key=len, default=None)
        path = tables[prefix][0].get(name) if prefix else None
        if path is None:
            problems.append(f"{name} (no such layer)")
            continue
        module = tables[prefix][1][path]
        weight = getattr(module, "weight", None)
        if weight is None or not layer.fits(weight.shape):
            shape = tuple(weight.shape) if weight is not None else "none"
            ours = layer.shape or (layer.out_features, layer.in_features)
            problems.append(f"{name} ({layer.kind} {tuple(ours)} vs layer {shape})")
            continue
        if bias_delta(layer) is not None and getattr(module, "bias", None) is None:
            problems.append(f"{name} (changes a bias this layer does not have)")
            continue
        if isinstance(layer, DoraLayer):  # ΔW_DoRA against the unmodified base weight (see DoraLayer)
            base = (base_weight(module) if base_weight else weight).to(weight.device)
            with torch.no_grad():
                full = FullLayer(layer.delta(weight.shape, base=base.detach()).to(weight.dtype))
            bound.append(BoundLayer(module, targets[prefix][0], None, None, 1.0, adapter_layer=full))
            continue
        if not isinstance(layer, LoraLayer):
            if layer.shape is None:  # LoHa / LoKr store a plain conv flattened: the base tells its kernel
                layer.shape = tuple(weight.shape)
            bound.append(BoundLayer(module, targets[prefix][0], None, None, layer.scale, adapter_layer=layer))
            continue
        down, up = layer.down, layer.up
        down = down.reshape(down.shape[0], *weight.shape[1:]) if weight.dim() == 4 else down.flatten(1)
        up = up.reshape(up.shape[0], up.shape[1], 1, 1) if weight.dim() == 4 else up.flatten(1)
        bound.append(BoundLayer(module, targets[prefix][0], down.to(weight), up.to(weight), layer.scale))
    if problems:
        raise AdapterFormatError(
            f"{file_name} was made for {guess_architecture(adapter)} and does not fit this base model "
            f"({family.label}): {len(problems)} of {len(adapter.layers)} layers do not match, first "
            f"{', '.join(problems[:3])}.")
    return bound
