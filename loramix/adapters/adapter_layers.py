"""The in-memory adapter layer types: plain LoRA / LoCon, LyCORIS LoHa, LoKr and full diff; their maths only.

Every type answers the same questions, which is all the mixer, merge and bake need:

* `delta(shape=None)` -> ΔW in float32, already multiplied by the layer's own scale, shaped like the
  base weight: `shape` when given (the mixer passes `module.weight.shape`), else `self.shape` when the
  file tells it, else 2-D (out, in·k·k);
* `out_features`, `in_features` (the flattened input size, in·k·k for a conv) and `fits(weight_shape)`
  to check a base layer before binding;
* `shape`: the base weight's shape when the file tells it (conv LoRA, Tucker LoHa/LoKr, full diff), else
  None. LoHa and LoKr store a plain (non-Tucker) conv flattened to (out, in·k·k), so the kernel size
  is not in the file; `Mixer.bind` fills `shape` in from the base model;
* `rank` (None where a layer is not a low-rank product) and `scale` (what `delta` multiplies by);
* `tensors()` -> {key suffix: tensor} in kohya / LyCORIS naming, without `alpha`, for writing;
* `bias_delta(layer)` (a function) -> the bias change, which only a full layer with `diff_b` makes.

DoRA (`DoraLayer`) is the one type whose ΔW depends on the base weight: see its docstring for how a
slider weight and a blend of several DoRA adapters are computed.

The LoHa / LoKr / full maths is hand-written from LyCORIS 4.1 (`lycoris/functional/loha.py`,
`lokr.py`, `modules/full.py`) rather than imported, so that reading a file needs no runtime
dependency on lycoris-lora; tests compare every type with lycoris' own modules. The scale rules are
LyCORIS' (and A1111's / ComfyUI's): LoHa uses alpha / rank; LoKr uses alpha / rank only when w1 or
w2 is factorised (rank = that factor's inner size) and 1 when both are full matrices; full diff is
unscaled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch


def _reshape(delta: torch.Tensor, shape) -> torch.Tensor:
    return delta.reshape(tuple(shape)) if shape is not None else delta


def _fits(layer, weight_shape) -> bool:
    weight_shape = tuple(weight_shape)
    if len(weight_shape) not in (2, 4) or layer.out_features != weight_shape[0] or \
            layer.in_features != math.prod(weight_shape[1:]):
        return False
    # A 1x1 conv and a linear layer hold the same numbers: only a kernel that differs is a mismatch.
    return layer.shape is None or len(layer.shape) != len(weight_shape) or tuple(layer.shape) == weight_shape


@dataclass
class LoraLayer:
    """Plain LoRA (and LoCon on convs): ΔW = (alpha / r) · up · down."""

    down: torch.Tensor  # (r, in) or (r, in, k, k)
    up: torch.Tensor  # (out, r) or (out, r, 1, 1)
    alpha: float
    kind: ClassVar[str] = "LoRA"

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def out_features(self) -> int:
        return self.up.shape[0]

    @property
    def in_features(self) -> int:
        return self.down[0].numel()

    @property
    def shape(self) -> tuple | None:
        return (self.up.shape[0], *self.down.shape[1:]) if self.down.dim() == 4 else None

    def fits(self, weight_shape) -> bool:
        return _fits(self, weight_shape)

    def delta(self, shape=None) -> torch.Tensor:
        """ΔW = (alpha / r) · up · down, shaped like the base layer's weight."""
        d = (self.up.flatten(1).float() @ self.down.flatten(1).float()) * self.scale
        return _reshape(d, shape or self.shape)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"lora_down.weight": self.down, "lora_up.weight": self.up}


@dataclass
class LohaLayer:
    """LyCORIS LoHa: ΔW = (alpha / r) · (w1_a · w1_b) ⊙ (w2_a · w2_b), a Hadamard product of two LoRAs.

    With Tucker (a conv with `hada_t1`/`hada_t2`): w1_a is (r, out), w1_b (r, in), t1 (r, r, k, k) and
    each half is einsum("i j k l, j r, i p -> p r k l", t, w_b, w_a), as LyCORIS' `HadaWeightTucker`.
    """

    w1_a: torch.Tensor  # (out, r); Tucker: (r, out)
    w1_b: torch.Tensor  # (r, in·k·k); Tucker: (r, in)
    w2_a: torch.Tensor
    w2_b: torch.Tensor
    alpha: float
    t1: torch.Tensor | None = None  # (r, r, k, k), Tucker convs only
    t2: torch.Tensor | None = None
    shape: tuple | None = None  # the base weight's shape; known from the file only with Tucker
    kind: ClassVar[str] = "LoHa"

    def __post_init__(self):
        if self.t1 is not None and self.shape is None:
            self.shape = (self.w1_a.shape[1], self.w1_b.shape[1], *self.t1.shape[2:])

    @property
    def rank(self) -> int:
        return self.w1_b.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def out_features(self) -> int:
        return self.w1_a.shape[1] if self.t1 is not None else self.w1_a.shape[0]

    @property
    def in_features(self) -> int:
        return self.w1_b.shape[1] * (math.prod(self.t1.shape[2:]) if self.t1 is not None else 1)

    def fits(self, weight_shape) -> bool:
        return _fits(self, weight_shape)

    def delta(self, shape=None) -> torch.Tensor:
        f = [t.float() if t is not None else None for t in (self.w1_a, self.w1_b, self.w2_a, self.w2_b, self.t1, self.t2)]
        w1a, w1b, w2a, w2b, t1, t2 = f
        if t1 is not None:
            half1 = torch.einsum("i j ..., j r, i p -> p r ...", t1, w1b, w1a)
            half2 = torch.einsum("i j ..., j r, i p -> p r ...", t2, w2b, w2a)
        else:
            half1, half2 = w1a @ w1b, w2a @ w2b
        return _reshape(half1 * half2 * self.scale, shape or self.shape)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"hada_w1_a": self.w1_a, "hada_w1_b": self.w1_b, "hada_w2_a": self.w2_a, "hada_w2_b": self.w2_b}
        if self.t1 is not None:
            out.update(hada_t1=self.t1, hada_t2=self.t2)
        return out


@dataclass
class LokrLayer:
    """LyCORIS LoKr: ΔW = scale · w1 ⊗ w2 (Kronecker product), each half full or a low-rank pair.

    w1 is `lokr_w1` (a, c) or `lokr_w1_a` (a, r) · `lokr_w1_b` (r, c); w2 is `lokr_w2` (b, d[, k, k]),
    or `lokr_w2_a` (b, r) · `lokr_w2_b` (r, d·k·k), or with Tucker `lokr_t2` (r, r, k, k) and
    w2_a (r, b), w2_b (r, d): einsum("i j k l, i p, j r -> p r k l", t2, w2_a, w2_b). out = a·b, in = c·d.
    scale = alpha / r when a half is factorised (r = its w_b's first size), else 1, as in LyCORIS.
    """

    alpha: float
    w1: torch.Tensor | None = None
    w1_a: torch.Tensor | None = None
    w1_b: torch.Tensor | None = None
    w2: torch.Tensor | None = None
    w2_a: torch.Tensor | None = None
    w2_b: torch.Tensor | None = None
    t2: torch.Tensor | None = None
    shape: tuple | None = None
    kind: ClassVar[str] = "LoKr"

    def __post_init__(self):
        if self.shape is None and (self.t2 is not None or (self.w2 is not None and self.w2.dim() == 4)):
            w1, w2 = self._halves()
            self.shape = (w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1], *w2.shape[2:])

    @property
    def rank(self) -> int | None:
        if self.w1 is None:
            return self.w1_b.shape[0]
        return self.w2_b.shape[0] if self.w2 is None else None

    @property
    def scale(self) -> float:
        return self.alpha / self.rank if self.rank else 1.0

    def _halves(self) -> tuple[torch.Tensor, torch.Tensor]:
        w1 = self.w1.float() if self.w1 is not None else self.w1_a.float() @ self.w1_b.float()
        if self.w2 is not None:
            w2 = self.w2.float()
        elif self.t2 is not None:
            w2 = torch.einsum("i j ..., i p, j r -> p r ...", self.t2.float(), self.w2_a.float(), self.w2_b.float())
        else:
            w2 = self.w2_a.float() @ self.w2_b.float()
        return w1, w2

    @property
    def out_features(self) -> int:
        a = self.w1.shape[0] if self.w1 is not None else self.w1_a.shape[0]
        b = self.w2.shape[0] if self.w2 is not None else self.w2_a.shape[1] if self.t2 is not None else self.w2_a.shape[0]
        return a * b

    @property
    def in_features(self) -> int:
        c = self.w1.shape[1] if self.w1 is not None else self.w1_b.shape[1]
        if self.w2 is not None:
            return c * self.w2[0].numel()
        if self.t2 is not None:
            return c * self.w2_b.shape[1] * math.prod(self.t2.shape[2:])
        return c * self.w2_b.shape[1]

    def fits(self, weight_shape) -> bool:
        return _fits(self, weight_shape)

    def delta(self, shape=None) -> torch.Tensor:
        w1, w2 = self._halves()
        # kron(w1, w2 flattened to 2-D) reshaped to (out, in, k, k) equals LyCORIS' kron of w1[..., None, None]
        # with a 4-D w2: column j·(d·k·k) + q·(k·k) + s is input channel j·d + q at kernel position s.
        return _reshape(torch.kron(w1, w2.flatten(1)) * self.scale, shape or self.shape)

    def tensors(self) -> dict[str, torch.Tensor]:
        names = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
        values = (self.w1, self.w1_a, self.w1_b, self.w2, self.w2_a, self.w2_b, self.t2)
        return {n: v for n, v in zip(names, values) if v is not None}


@dataclass
class LoconTuckerLayer:
    """LoCon with a Tucker middle (LyCORIS `use_tucker` on a k×k conv): down (r, in, 1, 1), mid (r, r, k, k),
    up (out, r, 1, 1), and ΔW = (alpha / r) · Σ up[o, n] · mid[n, m, :, :] · down[m, i], the conv chain
    up ∘ mid ∘ down folded into one kernel, as A1111 (`lyco_helpers.rebuild_cp_decomposition`) and ComfyUI
    (`weight_adapter/lora.py`) fold it. r is the down's rank, as both read it.
    """

    down: torch.Tensor
    mid: torch.Tensor
    up: torch.Tensor
    alpha: float
    kind: ClassVar[str] = "LoCon (Tucker)"

    rank = property(lambda self: self.down.shape[0])
    scale = property(lambda self: self.alpha / self.rank)
    out_features = property(lambda self: self.up.shape[0])
    in_features = property(lambda self: self.down.shape[1] * math.prod(self.mid.shape[2:]))
    shape = property(lambda self: (self.up.shape[0], self.down.shape[1], *self.mid.shape[2:]))

    def fits(self, weight_shape) -> bool:
        return _fits(self, weight_shape)

    def delta(self, shape=None) -> torch.Tensor:
        up, down = self.up.flatten(1).float(), self.down.flatten(1).float()
        return _reshape(torch.einsum("n m ..., i n, m j -> i j ...", self.mid.float(), up, down) * self.scale,
                        shape or self.shape)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"lora_down.weight": self.down, "lora_mid.weight": self.mid, "lora_up.weight": self.up}


@dataclass
class FullLayer:
    """LyCORIS full (`diff`): ΔW stored as is; no rank, scale 1. `diff_b`, when the file has it (LyCORIS writes it
    for every layer with a bias), is the bias change: `bias_delta()`; a slider weight w adds w·diff_b to the
    layer's bias, as A1111 (`network_full.py`, ex_bias × multiplier) and ComfyUI (a "diff" patch on `.bias`) do."""

    diff: torch.Tensor
    alpha: float = 1.0  # unused: LyCORIS writes no alpha for full layers
    diff_b: torch.Tensor | None = None
    kind: ClassVar[str] = "full"
    rank: ClassVar[None] = None
    scale: ClassVar[float] = 1.0

    @property
    def shape(self) -> tuple:
        return tuple(self.diff.shape)

    @property
    def out_features(self) -> int:
        return self.diff.shape[0]

    @property
    def in_features(self) -> int:
        return self.diff[0].numel()

    def fits(self, weight_shape) -> bool:
        return _fits(self, weight_shape)

    def delta(self, shape=None) -> torch.Tensor:
        return _reshape(self.diff.float(), shape)

    def bias_delta(self) -> torch.Tensor | None:
        return self.diff_b.float().flatten() if self.diff_b is not None else None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"diff": self.diff, **({"diff_b": self.diff_b} if self.diff_b is not None else {})}


@dataclass
class DoraLayer:
    """DoRA (weight-decomposed LoRA, PEFT `use_dora=True`): a LoRA direction update plus a trained magnitude.

    In a file (LyCORIS' naming, as A1111 and ComfyUI read it) it is a LoRA layer with a `dora_scale`:
    the magnitude m, the norm of the merged weight per output channel, shaped (out, 1[, 1, 1]) (LyCORIS
    `wd_on_out=True`, PEFT's convention: PEFT's `lora_magnitude_vector` is (out,) for a linear layer,
    (1, out, 1, 1) for a conv). Files with m per input channel, (1, in[, 1, 1]) (LyCORIS `wd_on_out=False`),
    are read too. The merged weight at slider weight 1 is

        W1 = m · (W + ΔW) / ‖W + ΔW‖,  ΔW = (alpha / r) · up · down,  ‖·‖ per row (or column),

    which is PEFT's DoRA forward. So ΔW_DoRA = W1 − W depends on the base weight W: `delta` needs it
    (`base=`) and refuses without it, so no caller can silently drop the magnitude. A slider weight w
    scales ΔW_DoRA (W + w·(W1 − W)), as A1111's and ComfyUI's LoRA loaders do: w = 0 is the base, w = 1
    PEFT's model, and the picture at a weight matches those apps'. Several adapters add their
    w_i·ΔW_DoRA,i, each computed against the same unmodified base W (A1111 and ComfyUI again).

    Where the peers' norms differ, loramix keeps the trained model's forward (PEFT's, lycoris'): ComfyUI and
    Forge divide a per-output magnitude by ‖W‖ instead of ‖W + ΔW‖ (they agree on per-input files); A1111
    normalises per input column whatever the magnitude's axis, and before alpha / r
    (tests/unit/test_dora_peers.py pins each).
    """

    down: torch.Tensor
    up: torch.Tensor
    alpha: float
    dora_scale: torch.Tensor
    kind: ClassVar[str] = "DoRA"

    @property
    def lora(self) -> LoraLayer:
        return LoraLayer(self.down, self.up, self.alpha)

    rank = property(lambda self: self.lora.rank)
    scale = property(lambda self: self.lora.scale)
    out_features = property(lambda self: self.lora.out_features)
    in_features = property(lambda self: self.lora.in_features)
    shape = property(lambda self: self.lora.shape)

    def fits(self, weight_shape) -> bool:
        m = self.dora_scale.numel()
        return _fits(self, weight_shape) and m in (weight_shape[0], weight_shape[1])

    def delta(self, shape=None, base: torch.Tensor | None = None) -> torch.Tensor:
        """ΔW_DoRA = m · (W + ΔW) / ‖W + ΔW‖ − W for base weight `base` (float32, shaped like it)."""
        if base is None:
            from loramix.core.errors import AdapterFormatError

            raise AdapterFormatError("A DoRA layer's weight change depends on the base model's weight; apply it "
                                     "in the mixer (or bake), not in a merge of adapter files.")
        w = base.float()
        merged = w + self.lora.delta(w.shape)
        m = self.dora_scale.float().to(w.device)
        flat = merged.reshape(merged.shape[0], -1)
        if m.numel() == w.shape[0] and (m.dim() < 2 or m.shape[0] == w.shape[0]):  # per output channel
            norm = flat.norm(dim=1).reshape(-1, *[1] * (w.dim() - 1))
            m = m.reshape(-1, *[1] * (w.dim() - 1))
        else:  # per input channel (LyCORIS wd_on_out=False)
            norm = merged.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)
            norm = norm.reshape(1, -1, *[1] * (w.dim() - 2))
            m = m.reshape(1, -1, *[1] * (w.dim() - 2))
        return merged * (m / norm) - w

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**self.lora.tensors(), "dora_scale": self.dora_scale}


def bias_delta(layer) -> torch.Tensor | None:
    """The change a layer makes to its module's bias (float32, (out,)), or None: only a full layer with `diff_b`."""
    return layer.bias_delta() if isinstance(layer, FullLayer) else None


AdapterLayer = LoraLayer | LoconTuckerLayer | LohaLayer | LokrLayer | FullLayer | DoraLayer
