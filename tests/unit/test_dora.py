"""DoRA: PEFT `use_dora=True` layers are written with LyCORIS' `dora_scale` (the magnitude per output
channel), read back, and applied as PEFT's own forward computes them; lycoris-lora's module built from the
file merges to the same weight; a slider weight w scales ΔW_DoRA as A1111 and ComfyUI do."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

from loramix.adapters.adapter_layers import DoraLayer
from loramix.core.errors import AdapterFormatError
from loramix.formats.lora_io import LoraAdapter, from_peft, read_lora, save_lora


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 6)
        self.conv = nn.Conv2d(4, 5, 3, padding=1)


def _dora_model(seed=0):
    torch.manual_seed(seed)
    base = Small()
    bases = {n: m.weight.detach().clone() for n, m in base.named_children()}
    model = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=3.0, use_dora=True, target_modules=["fc", "conv"],
                                               init_lora_weights=False), base)
    with torch.no_grad():  # a trained magnitude differs from the base weight's norm
        for name in ("fc", "conv"):
            mag = getattr(model, name).lora_magnitude_vector["default"].weight
            mag.mul_(1 + 0.3 * torch.rand_like(mag))
    return model, bases


def _saved(tmp_path, model):
    layers = from_peft(get_peft_model_state_dict(model), "lora_unet", 3.0)
    return save_lora(tmp_path / "dora.safetensors", LoraAdapter(layers, {}), "fp32")


def test_dora_file_applies_as_peft_forward(tmp_path):
    model, bases = _dora_model()
    adapter = read_lora(_saved(tmp_path, model))
    fc, conv = adapter.layers["lora_unet_fc"], adapter.layers["lora_unet_conv"]
    assert isinstance(fc, DoraLayer) and isinstance(conv, DoraLayer)
    assert fc.dora_scale.shape == (6, 1) and conv.dora_scale.shape == (5, 1, 1, 1)  # LyCORIS wd_on_out=True
    x, img = torch.randn(3, 12), torch.randn(2, 4, 7, 7)
    with torch.no_grad():
        w_fc = bases["fc"] + fc.delta(bases["fc"].shape, base=bases["fc"])
        w_conv = bases["conv"] + conv.delta(bases["conv"].shape, base=bases["conv"])
        torch.testing.assert_close(nn.functional.linear(x, w_fc, model.fc.base_layer.bias), model.fc(x))
        ours = nn.functional.conv2d(img, w_conv, model.conv.base_layer.bias, padding=1)
        torch.testing.assert_close(ours, model.conv(img), rtol=1e-5, atol=1e-6)


def test_dora_delta_needs_the_base_weight(tmp_path):
    model, _ = _dora_model()
    layer = read_lora(_saved(tmp_path, model)).layers["lora_unet_fc"]
    with pytest.raises(AdapterFormatError, match="depends on the base model's weight"):
        layer.delta()


def test_lycoris_merges_the_file_to_the_same_weight(tmp_path):
    pytest.importorskip("lycoris", reason="lycoris-lora is the oracle (pip install lycoris-lora)")
    from lycoris import LycorisNetwork, create_lycoris_from_weights

    logging.getLogger("LyCORIS").setLevel(logging.ERROR)
    saved = LycorisNetwork.LORA_PREFIX
    LycorisNetwork.apply_preset({"lora_prefix": "lora_unet"})
    try:
        model, bases = _dora_model()
        path = _saved(tmp_path, model)
        fresh = Small()
        fresh.load_state_dict({f"{n}.{p}": t for n, m in model.named_children()
                               for p, t in m.base_layer.state_dict().items()})
        network, _ = create_lycoris_from_weights(1.0, str(path), fresh)
        network.apply_to()
        assert network.load_weights(str(path)) == {}
        ours = read_lora(path)
        for module in network.loras:
            assert module.wd and module.wd_on_out
            theirs = module.get_merged_weight(1.0)[0].detach()
            name = module.lora_name.removeprefix("lora_unet_")
            mine = bases[name] + ours.layers[module.lora_name].delta(bases[name].shape, base=bases[name])
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    finally:
        LycorisNetwork.LORA_PREFIX = saved


def test_input_axis_dora_scale_is_read_as_lycoris_wd_on_out_false():
    torch.manual_seed(1)
    w, down, up = torch.randn(6, 4), torch.randn(2, 4), torch.randn(6, 2)
    m = torch.rand(1, 4) + 0.5
    merged = w + up @ down * 1.5
    expected = merged * (m / merged.norm(dim=0, keepdim=True)) - w
    torch.testing.assert_close(DoraLayer(down, up, 3.0, m).delta(base=w), expected)
