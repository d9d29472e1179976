"""QLoRA: `model.quantize=int8` trains a LoRA on a torchao int8 weight-only UNet and saves an ordinary kohya
LoRA for the unquantized base; a backend that is missing (torchao, or bitsandbytes / CUDA for nf4) is
refused with a sentence naming the field."""

from __future__ import annotations

import sys

import pytest
import torch

from loramix.adapters.adapter_layers import LoraLayer
from loramix.core.config import load_config
from loramix.core.errors import ConfigError
from loramix.embedded import STYLE_SETS
from loramix.formats.lora_io import read_lora
from tests.conftest import tiny_config
from tests.style_distance import style_distances
from trainers.lora_trainer import LoraTrainer, train


@pytest.mark.slow
def test_int8_base_trains_an_ordinary_lora(tiny_model, image_folder, tmp_path):
    pytest.importorskip("torchao", reason="model.quantize=int8 needs torchao (pip install 'loramix[quant]')")
    trainer = LoraTrainer(tiny_config(tiny_model, image_folder, tmp_path / "out", "model.quantize=int8",
                                      "train.max_steps=3"))
    result = trainer.run()
    to_q = trainer.components.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    assert "Int8" in type(to_q.base_layer.weight).__name__  # the frozen base really is int8
    assert to_q.lora_A["default"].weight.dtype == torch.float32
    adapter = read_lora(result.lora_path)
    assert {type(layer) for layer in adapter.layers.values()} == {LoraLayer}
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    torch.testing.assert_close(adapter.layers[name].delta(), to_q.get_delta_weight("default").detach())
    assert bool(adapter.layers[name].delta().abs().max() > 0)
    assert all(torch.isfinite(torch.tensor(result.losses)))

    from loramix.mix.mixer import Mixer

    mixer = Mixer.from_base(str(tiny_model), device="cpu")  # the unquantized base takes the file as usual
    mixer.load(result.lora_path)
    assert len(mixer.slots[result.lora_path.stem].layers) == len(adapter.layers)


@pytest.mark.slow
def test_int8_base_learns_the_pastel_style_as_well_as_the_unquantized_base(tmp_path):
    """Issue 14: with a quantized base the style-learning test reaches a style ratio within 20% of the
    unquantized run.

    The style ratio is distance(weight 1) / distance(weight 0): how far held-out pictures are from the
    pastel style's 90th-percentile saturation with the LoRA at full weight, as a fraction of how far the
    base alone is (`tests.style_distance`; 0 = the style matched, 1 = nothing learned). "Within 20%" is
    |ratio_int8 - ratio_none| <=
    0.2 x ratio_none. Both LoRAs are trained with presets/demo-cpu.toml (read, not copied; same seed, its
    300 steps) with one change, a cosine decay of its rate, and both are judged on the unquantized base, where
    a user applies them. Why the decay: at the preset's constant rate the ratio swings between saves (stripes
    0.16 at step 250, 0.76 at 300; docs/benchmarks.md), so two runs a rounding apart end far apart whatever the
    quantization; measured 2026-12-05 on v3 at the constant rate: none 0.327, int8 0.193 (41% apart). The
    decay lets both settle: none 0.299, int8 0.296 (1% apart) on 2026-12-05. Measured 2026-11-23 on v1 with
    the preset of then: at 200 steps none 0.344, int8 0.315 (8% apart). Since 2026-12-06 the distance is to the
    style's own drawing of the prompts, not the set's value, and the pastel set shows every background colour
    (docs/benchmarks.md): none 0.562, int8 0.562 on a 2-core Xeon. So "learned" is below 0.7 here, not 0.5.
    """
    pytest.importorskip("torchao", reason="model.quantize=int8 needs torchao (pip install 'loramix[quant]')")
    ratio = {}
    for quantize in ("none", "int8"):
        config = load_config("presets/demo-cpu.toml", overrides=[
            f"dataset.data_dir={STYLE_SETS / 'pastel'}", f"output.output_dir={tmp_path / quantize}",
            f"model.quantize={quantize}", "optim.lr_scheduler=cosine", "sample.sample_every_n_steps=0",
            "output.save_every_n_steps=0"])
        _, distance = style_distances(train(config).lora_path, "pastel", weights=(0.0, 1.0))
        ratio[quantize] = distance[1.0] / distance[0.0]
    print(f"style ratio (distance at weight 1 / weight 0): {ratio}")
    # both learned, so neither passes by failing: each at least 30% of the way (nothing learned is 1.0)
    assert ratio["none"] < 0.7 and ratio["int8"] < 0.7, ratio
    assert abs(ratio["int8"] - ratio["none"]) <= 0.2 * ratio["none"], ratio


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
