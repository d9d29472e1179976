"""LoCon with a Tucker middle (`lora_mid`) and LyCORIS full layers with a bias change (`diff_b`), made by
lycoris-lora itself: loramix reads and applies them as lycoris' forward, A1111 and ComfyUI do.

Peer formulas retyped here (sources named at each): A1111 stable-diffusion-webui
`extensions-builtin/Lora/lyco_helpers.py` + `network_lora.py` + `network_full.py`; ComfyUI
`comfy/weight_adapter/lora.py` (LoRAAdapter.calculate_weight) and `comfy/lora.py` (load_lora, `diff_b`).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("lycoris", reason="lycoris-lora is the oracle (pip install lycoris-lora)")

from loramix.adapters.adapter_layers import FullLayer, LoconTuckerLayer, LoraLayer  # noqa: E402
from loramix.core.errors import AdapterFormatError  # noqa: E402
from loramix.formats.lora_io import LoraAdapter, read_lora, save_lora  # noqa: E402
from loramix.mix.merge import Source, merge_svd  # noqa: E402
from tests.conftest import unet_out  # noqa: E402
from tests.unit.test_lycoris import _file, _lycoris_preset, lycoris_file  # noqa: E402, F401


class Biased(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 16)
        self.conv = nn.Conv2d(16, 32, 3, padding=1)
        self.pw = nn.Conv2d(8, 12, 1)


def a1111_locon_tucker(up, down, mid, alpha):
    """A1111 `lyco_helpers.rebuild_cp_decomposition`, then `NetworkModule.calc_scale` (alpha / dim, dim =
    lora_down's first size) as `finalize_updown` applies it (retyped)."""
    up = up.reshape(up.size(0), -1)
    down = down.reshape(down.size(0), -1)
    updown = torch.einsum('n m k l, i n, m j -> i j k l', mid, up, down)
    return updown * (alpha / down.shape[0])


def comfy_locon_tucker(mat1, mat2, mat3, alpha):
    """ComfyUI `comfy/weight_adapter/lora.py`, LoRAAdapter.calculate_weight's `lora_mid` branch (retyped)."""
    alpha = alpha / mat2.shape[0]
    final_shape = [mat2.shape[1], mat2.shape[0], mat3.shape[2], mat3.shape[3]]
    mat2 = torch.mm(mat2.transpose(0, 1).flatten(start_dim=1), mat3.transpose(0, 1).flatten(start_dim=1)) \
        .reshape(final_shape).transpose(0, 1)
    return alpha * torch.mm(mat1.flatten(start_dim=1), mat2.flatten(start_dim=1))


def test_locon_tucker_equals_lycoris_forward_a1111_and_comfyui(tmp_path):
    model, net, path = lycoris_file(tmp_path, "locon", model=Biased(), targets=("conv", "fc"), dim=3, alpha=2.0,
                                    use_tucker=True)
    adapter = read_lora(path)
    layer = adapter.layers["lora_unet_conv"]
    assert isinstance(layer, LoconTuckerLayer) and layer.shape == (32, 16, 3, 3)
    assert isinstance(adapter.layers["lora_unet_fc"], LoraLayer)  # lycoris puts a middle on k×k convs only
    up, mid, down = layer.up.float(), layer.mid.float(), layer.down.float()
    ours = layer.delta()
    torch.testing.assert_close(ours, a1111_locon_tucker(up, down, mid, 2.0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.flatten(1), comfy_locon_tucker(up, down, mid, 2.0), rtol=1e-5, atol=1e-6)
    module = next(m for m in net.loras if m.lora_name == "lora_unet_conv")
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        added = module(x) - module.org_forward(x)
    torch.testing.assert_close(F.conv2d(x, ours, padding=1), added, rtol=1e-4, atol=1e-5)
    back = read_lora(save_lora(tmp_path / "again.safetensors", adapter, "fp32")).layers["lora_unet_conv"]
    assert isinstance(back, LoconTuckerLayer) and torch.equal(back.delta(), ours)


def comfy_apply_full(weight, bias, diff, diff_b, strength):
    """ComfyUI `comfy/lora.py` load_lora: `diff` patches `.weight` and `diff_b` patches `.bias`, each a
    ("diff", …) patch, which `calculate_weight` applies as `weight += strength * w1` (retyped)."""
    return weight + strength * diff, bias + strength * diff_b


def test_full_with_bias_equals_lycoris_forward_and_comfyui(tmp_path):
    import copy

    torch.manual_seed(3)
    model = Biased()
    original = copy.deepcopy(model)  # lycoris' full module takes the base weight over
    _, net, path = lycoris_file(tmp_path, "full", model=model)
    adapter = read_lora(path)
    for module in net.loras:
        layer = adapter.layers[module.lora_name]
        assert isinstance(layer, FullLayer) and layer.diff_b is not None, module.lora_name
        base = getattr(original, module.lora_name.removeprefix("lora_unet_"))
        x = torch.randn(3, base.in_features) if isinstance(base, nn.Linear) else torch.randn(2, base.in_channels, 5, 5)
        with torch.no_grad():
            added = module(x) - base(x)
            w, b = comfy_apply_full(base.weight, base.bias, layer.delta(base.weight.shape), layer.bias_delta(), 1.0)
            op = F.linear if isinstance(base, nn.Linear) else (lambda x, w, b, p=base.padding: F.conv2d(x, w, b, padding=p))
            theirs = op(x, w, b) - op(x, base.weight, base.bias)
            ours = op(x, layer.delta(base.weight.shape), layer.bias_delta())
        torch.testing.assert_close(ours, added, rtol=1e-4, atol=1e-5, msg=module.lora_name)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5, msg=module.lora_name)
    back = read_lora(save_lora(tmp_path / "again.safetensors", adapter, "fp32"))
    assert all(torch.equal(back.layers[n].diff_b, layer.diff_b) for n, layer in adapter.layers.items())


def test_merge_keeps_a_bias_change_exactly(tmp_path):
    _, _, path = lycoris_file(tmp_path, "full", model=Biased(), targets=("fc",))
    full = read_lora(path)
    lora = LoraAdapter({"lora_unet_fc": LoraLayer(torch.randn(2, 32), torch.randn(16, 2), 2.0)})
    merged, _ = merge_svd([Source("full", full, 0.7), Source("lora", lora, -0.5)], rank=2)
    layer = merged.layers["lora_unet_fc"]
    assert isinstance(layer, FullLayer)
    torch.testing.assert_close(layer.bias_delta(), 0.7 * full.layers["lora_unet_fc"].bias_delta())
    expect = 0.7 * full.layers["lora_unet_fc"].delta() - 0.5 * lora.layers["lora_unet_fc"].delta()
    torch.testing.assert_close(layer.delta(), expect)
    back = read_lora(save_lora(tmp_path / "m.safetensors", merged, "fp32")).layers["lora_unet_fc"]
    assert torch.equal(back.diff_b, layer.diff_b)


def test_refuses_broken_tucker_and_bias_layers(tmp_path):
    with pytest.raises(AdapterFormatError, match=r"lora_unet_b has lora_mid but no lora_up weight"):
        read_lora(_file(tmp_path, {"lora_unet_b.lora_down.weight": torch.ones(2, 4, 1, 1),
                                   "lora_unet_b.lora_mid.weight": torch.ones(2, 2, 3, 3)}))
    with pytest.raises(AdapterFormatError, match=r"lora_unet_b has lora_up \(4, 3, 1, 1\), lora_mid"):
        read_lora(_file(tmp_path, {"lora_unet_b.lora_down.weight": torch.ones(2, 4, 1, 1),
                                   "lora_unet_b.lora_mid.weight": torch.ones(2, 2, 3, 3),
                                   "lora_unet_b.lora_up.weight": torch.ones(4, 3, 1, 1)}))
    with pytest.raises(AdapterFormatError, match=r"lora_unet_a has a diff_b of 3 values for a layer of 4 outputs"):
        read_lora(_file(tmp_path, {"lora_unet_a.diff": torch.ones(4, 4), "lora_unet_a.diff_b": torch.ones(3)}))


UNET_TARGETS = (r"down_blocks\.0\.resnets\.0\.conv1", r"mid_block\.attentions\.0\.proj_in", r".*attn1\.to_out\.0",
                r"up_blocks\.1\.resnets\.0\.conv2")


@pytest.mark.parametrize("algo, kw", [("full", {}), ("locon", {"use_tucker": True})])
def test_mixer_applies_them_as_lycoris_does(tmp_path, tiny_model, algo, kw):
    from diffusers import UNet2DConditionModel

    from loramix.mix.mixer import Mixer

    theirs_unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet").eval()
    _, net, path = lycoris_file(tmp_path, algo, model=theirs_unet, targets=UNET_TARGETS, dim=2, alpha=1.0, **kw)
    net.set_multiplier(0.6)
    theirs = unet_out(theirs_unet, 0, timesteps=(500,))
    mixer = Mixer.from_base(str(tiny_model), device="cpu")
    base = unet_out(mixer.components.unet, 0, timesteps=(500,))
    biases = {n: p.clone() for n, p in mixer.components.unet.named_parameters() if n.endswith("bias")}
    mixer.load(path, weight=0.6)
    kinds = {type(b.adapter_layer) for b in next(iter(mixer.slots.values())).layers}
    assert (FullLayer if algo == "full" else LoconTuckerLayer) in kinds
    if algo == "full":
        assert all(b.bias_delta() is not None for b in next(iter(mixer.slots.values())).layers)
    for mode in ("fused", "unfused", "fused"):
        with mixer.applied(mode):
            ours = unet_out(mixer.components.unet, 0, timesteps=(500,))
        assert (ours - theirs).abs().max().item() < 1e-4, mode
    mixer.restore()
    assert torch.equal(unet_out(mixer.components.unet, 0, timesteps=(500,)), base)
    assert all(torch.equal(p, biases[n]) for n, p in mixer.components.unet.named_parameters() if n in biases)


def test_mixer_refuses_a_bias_change_for_a_layer_without_bias(tmp_path, tiny_model):
    from loramix.mix.mixer import Mixer

    mixer = Mixer.from_base(str(tiny_model), device="cpu")
    to_q = mixer.components.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    assert to_q.bias is None
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    path = _file(tmp_path, {f"{name}.diff": torch.zeros_like(to_q.weight), f"{name}.diff_b": torch.ones(to_q.out_features)})
    with pytest.raises(AdapterFormatError, match="changes a bias this layer does not have"):
        mixer.load(path)


def test_bake_writes_the_bias_change_into_the_model(tmp_path, tiny_model):
    from diffusers import UNet2DConditionModel

    from loramix.mix.mixer import Mixer

    theirs_unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet").eval()
    _, net, path = lycoris_file(tmp_path, "full", model=theirs_unet, targets=UNET_TARGETS)
    theirs = unet_out(theirs_unet, 0, timesteps=(500,))
    mixer = Mixer.from_base(str(tiny_model), device="cpu")
    mixer.load(path, weight=1.0)
    baked = UNet2DConditionModel.from_pretrained(mixer.bake(tmp_path / "baked"), subfolder="unet").eval()
    assert (unet_out(baked, 0, timesteps=(500,)) - theirs).abs().max().item() < 1e-4
