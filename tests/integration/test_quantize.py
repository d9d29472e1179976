"""QLoRA: `model.quantize=int8` trains a LoRA on a torchao int8 weight-only UNet and saves an ordinary kohya
LoRA for the unquantized base; a backend that is missing (torchao, or bitsandbytes / CUDA for nf4) is
refused with a sentence naming the field."""

from __future__ import annotations

import sys

import pytest
import torch

from loramix.adapter_layers import LoraLayer
from loramix.errors import ConfigError
from loramix.lora_io import read_lora
from tests.conftest import tiny_config
from trainers.lora_trainer import LoraTrainer, train


@pytest.mark.slow
def test_int8_base_trains_an_ordinary_lora(tiny_model, image_folder, tmp_path):
    pytest.importorskip("torchao", reason="model.quantize=int8 needs torchao (pip install 'loramix[quant]')")
    trainer = LoraTrainer(tiny_config(tiny_model, image_folder, tmp_path / "out", "model.quantize=int8",
                                      "train.max_steps=3"))
    result = trainer.run()
    to_q = trainer.m.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    assert "Int8" in type(to_q.base_layer.weight).__name__  # the frozen base really is int8
    assert to_q.lora_A["default"].weight.dtype == torch.float32
    adapter = read_lora(result.lora_path)
    assert {type(layer) for layer in adapter.layers.values()} == {LoraLayer}
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    torch.testing.assert_close(adapter.layers[name].delta(), to_q.get_delta_weight("default").detach())
    assert bool(adapter.layers[name].delta().abs().max() > 0)
    assert all(torch.isfinite(torch.tensor(result.losses)))

    from loramix.mixer import Mixer

    mixer = Mixer.from_base(str(tiny_model), device="cpu")  # the unquantized base takes the file as usual
    mixer.load(result.lora_path)
    assert len(mixer.slots[result.lora_path.stem].layers) == len(adapter.layers)


def test_nf4_is_refused_without_cuda_or_bitsandbytes(tiny_model, image_folder, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine could run nf4")
    with pytest.raises(ConfigError, match=r"model\.quantize.*nf4 (needs bitsandbytes|runs on a CUDA GPU only)"):
        train(tiny_config(tiny_model, image_folder, tmp_path / "out", "model.quantize=nf4"))


def test_int8_is_refused_without_torchao(tiny_model, image_folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"model\.quantize.*int8 needs torchao"):
        train(tiny_config(tiny_model, image_folder, tmp_path / "out", "model.quantize=int8"))


def test_dora_on_a_quantized_base_is_refused(tiny_model, image_folder, tmp_path):
    with pytest.raises(ConfigError, match=r"network\.use_dora.*model\.quantize=none"):
        tiny_config(tiny_model, image_folder, tmp_path / "out", "model.quantize=int8", "network.use_dora=true")
