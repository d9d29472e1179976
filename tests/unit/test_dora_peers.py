"""DoRA files in the peers' loaders: where loramix agrees with ComfyUI, Forge and A1111, and where it keeps PEFT's
(and lycoris') forward instead. The README's interop section states the choice.

Peer formulas, retyped:
* ComfyUI `comfy/weight_adapter/base.py` `weight_decompose` (v0.3.77 and later, the version with the
  `wd_on_output_axis` branch), which lllyasviel/stable-diffusion-webui-forge copies into
  `backend/patcher/lora.py` (HEAD dfdcbab, 2025-06-26) unchanged but for the cast helper;
* AUTOMATIC1111 stable-diffusion-webui `extensions-builtin/Lora/network.py` (1.9 and later):
  `NetworkModule.apply_weight_decompose` as `finalize_updown` calls it, before `calc_scale() * multiplier()`.
"""

from __future__ import annotations

import pytest
import torch

from loramix.adapters.adapter_layers import DoraLayer


def comfy_weight_decompose(dora_scale, weight, lora_diff, alpha, strength):
    """ComfyUI / Forge `weight_decompose`, float32, `function` the identity (retyped)."""
    weight = weight.clone()
    lora_diff = lora_diff * alpha
    weight_calc = weight + lora_diff
    wd_on_output_axis = dora_scale.shape[0] == weight_calc.shape[0]
    if wd_on_output_axis:
        weight_norm = (
            weight.reshape(weight.shape[0], -1)
            .norm(dim=1, keepdim=True)
            .reshape(weight.shape[0], *[1] * (weight.dim() - 1))
        )
    else:
        weight_norm = (
            weight_calc.transpose(0, 1)
            .reshape(weight_calc.shape[1], -1)
            .norm(dim=1, keepdim=True)
            .reshape(weight_calc.shape[1], *[1] * (weight_calc.dim() - 1))
            .transpose(0, 1)
        )
    weight_norm = weight_norm + torch.finfo(weight.dtype).eps
    weight_calc *= (dora_scale / weight_norm).type(weight.dtype)
    if strength != 1.0:
        weight_calc -= weight
        weight += strength * (weight_calc)
    else:
        weight[:] = weight_calc
    return weight


def a1111_dora(updown, orig_weight, dora_scale, calc_scale, multiplier):
    """A1111 `apply_weight_decompose(updown, orig_weight)` on the unscaled up·down, then `finalize_updown`'s
    `updown * self.calc_scale() * self.multiplier()`; returns the new weight (retyped)."""
    dora_norm_dims = orig_weight.dim() - 1
    merged_scale1 = updown + orig_weight
    merged_scale1_norm = (
        merged_scale1.transpose(0, 1)
        .reshape(merged_scale1.shape[1], -1)
        .norm(dim=1, keepdim=True)
        .reshape(merged_scale1.shape[1], *[1] * dora_norm_dims)
        .transpose(0, 1)
    )
    dora_merged = merged_scale1 * (dora_scale / merged_scale1_norm)
    final_updown = dora_merged - orig_weight
    return orig_weight + final_updown * calc_scale * multiplier


def peft_forward_weight(w, delta, m):
    """PEFT's DoRA (and lycoris' `wd_on_out=True` forward): m · (W + ΔW) / ‖W + ΔW‖ per output row."""
    merged = w + delta
    return m.reshape(-1, *[1] * (w.dim() - 1)) * merged / merged.flatten(1).norm(dim=1).reshape(-1, *[1] * (w.dim() - 1))


def _layer(out=12, inp=20, rank=4, alpha=2.0, axis="out", seed=0, conv=False, small=1.0):
    g = torch.Generator().manual_seed(seed)
    shape = (out, inp, 3, 3) if conv else (out, inp)
    w = torch.randn(*shape, generator=g)
    down = torch.randn(rank, *shape[1:], generator=g) * small
    up = torch.randn(out, rank, *([1, 1] if conv else []), generator=g) * small
    lora_delta = (up.flatten(1) @ down.flatten(1)).reshape(shape) * (alpha / rank)
    if axis == "out":
        m = (w + lora_delta).flatten(1).norm(dim=1) * (1 + 0.1 * torch.rand(out, generator=g))
        scale = m.reshape(out, *[1] * (len(shape) - 1))
    else:
        m = (w + lora_delta).transpose(0, 1).flatten(1).norm(dim=1) * (1 + 0.1 * torch.rand(inp, generator=g))
        scale = m.reshape(1, inp, *[1] * (len(shape) - 2))
    return DoraLayer(down, up, alpha, scale), w, up, down


def _ours(layer, w, strength):
    return w + strength * layer.delta(w.shape, base=w)


def _rel(a, b, w):
    return float((a - b).norm() / (b - w).norm())


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_input_axis_file_equals_comfyui_and_forge(conv, strength):
    layer, w, up, down = _layer(axis="in", conv=conv)
    lora_diff = (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
    theirs = comfy_weight_decompose(layer.dora_scale, w, lora_diff, layer.scale, strength)
    torch.testing.assert_close(_ours(layer, w, strength), theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv", [False, True])
def test_input_axis_file_equals_a1111_when_alpha_is_the_rank(conv):
    layer, w, up, down = _layer(axis="in", conv=conv, alpha=4.0, rank=4)
    updown = (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
    for multiplier in (1.0, 0.6):
        theirs = a1111_dora(updown, w, layer.dora_scale, layer.scale, multiplier)
        torch.testing.assert_close(_ours(layer, w, multiplier), theirs, rtol=1e-5, atol=1e-5)


def test_a1111_decomposes_before_alpha_over_rank():
    """Recorded, not followed: A1111 normalises W + up·down before alpha / r and then scales the whole DoRA change
    by alpha / r; lycoris' forward (and ComfyUI, and loramix) normalise W + (alpha / r)·up·down."""
    layer, w, up, down = _layer(axis="in", alpha=1.0, rank=4)
    updown = (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
    assert _rel(_ours(layer, w, 1.0), a1111_dora(updown, w, layer.dora_scale, layer.scale, 1.0), w) > 0.1


@pytest.mark.parametrize("conv", [False, True])
def test_output_axis_file_keeps_peft_forward_not_comfyuis_norm_of_w(conv):
    """loramix's own files (and lycoris' default) carry m per output channel. loramix applies PEFT's forward,
    m·(W+ΔW)/‖W+ΔW‖, the model that was trained; ComfyUI and Forge divide by ‖W‖ for this axis."""
    layer, w, up, down = _layer(axis="out", conv=conv)
    ours = _ours(layer, w, 1.0)
    torch.testing.assert_close(ours, peft_forward_weight(w, layer.lora.delta(w.shape), layer.dora_scale.flatten()))
    lora_diff = (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
    comfy = comfy_weight_decompose(layer.dora_scale, w, lora_diff, layer.scale, 1.0)
    # the same rule with ‖W+ΔW‖ in place of ‖W‖ is loramix's: that norm is the whole difference
    norm_merged = (w + lora_diff * layer.scale).flatten(1).norm(dim=1).reshape(-1, *[1] * (w.dim() - 1))
    norm_base = w.flatten(1).norm(dim=1).reshape(-1, *[1] * (w.dim() - 1))
    torch.testing.assert_close(comfy * norm_base / norm_merged, ours, rtol=1e-4, atol=1e-5)
    assert _rel(ours, comfy, w) > 0.05  # random factors: a visible difference


def test_output_axis_difference_shrinks_with_a_small_update():
    """A trained DoRA's ΔW is small beside W, so ‖W+ΔW‖ ≈ ‖W‖ and ComfyUI's picture comes close to loramix's."""
    big, w, up, down = _layer(axis="out", small=1.0)
    small, w2, up2, down2 = _layer(axis="out", small=0.05)
    rel = []
    for layer, base, u, d in ((big, w, up, down), (small, w2, up2, down2)):
        comfy = comfy_weight_decompose(layer.dora_scale, base, (u @ d), layer.scale, 1.0)
        rel.append(_rel(_ours(layer, base, 1.0), comfy, base))
    assert rel[1] < rel[0] / 5


def test_a1111_misreads_an_output_axis_file():
    """A1111 always normalises per input column: an (out, 1) dora_scale divided by a (1, in) norm broadcasts to
    an (out, in) matrix, a weight neither PEFT nor lycoris trained. loramix does not follow it."""
    layer, w, up, down = _layer(axis="out", small=0.1)
    updown = up @ down
    theirs = a1111_dora(updown, w, layer.dora_scale, layer.scale, 1.0)
    assert theirs.shape == w.shape and _rel(_ours(layer, w, 1.0), theirs, w) > 0.3
