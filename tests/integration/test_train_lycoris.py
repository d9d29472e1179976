"""Training LoHa, LoKr and LoCon: the trainer injects PEFT's LoHaConfig / LoKrConfig (conv layers at
conv_rank / conv_alpha), and the file it writes is LyCORIS-named, read by loramix's mixer, loaded by
lycoris' own `create_lycoris_from_weights` with no missing key, and holds exactly the ΔW PEFT trained."""

from __future__ import annotations

import json
import logging
from functools import partial

import pytest
import torch

from loramix.adapter_layers import LohaLayer, LokrLayer, LoraLayer
from loramix.lora_io import module_table, read_lora
from tests.conftest import tiny_config
from trainers.lora_trainer import LoraTrainer, train

KINDS = {"loha": LohaLayer, "lokr": LokrLayer, "lora": LoraLayer}


def _train(tiny_model, image_folder, out, *overrides):
    trainer = LoraTrainer(tiny_config(tiny_model, image_folder, out, "train.max_steps=2", *overrides))
    return trainer, trainer.run()


def _peft_layers(trainer):
    """kohya layer name -> the trained PEFT layer of the UNet."""
    unet, prefix = trainer.m.unet, trainer.family.unet_prefix
    modules = dict(unet.named_modules())
    table = module_table(unet, prefix, partial(trainer.family.kohya_path, prefix, model=unet))
    return {name: modules[path] for name, path in table.items() if hasattr(modules[path], "get_delta_weight")}


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_lycoris_training_writes_the_delta_peft_trained(tiny_model, image_folder, tmp_path, algo):
    trainer, result = _train(tiny_model, image_folder, tmp_path / "out", f"network.algo={algo}",
                             "network.conv_rank=2", "network.conv_alpha=1")
    adapter = read_lora(result.lora_path)
    meta = adapter.metadata
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert json.loads(meta["ss_network_args"]) == {"algo": algo, "conv_dim": "2", "conv_alpha": "1.0"}
    peft_layers = _peft_layers(trainer)
    assert set(adapter.layers) == set(peft_layers) and len(peft_layers) > 8
    assert {type(layer) for layer in adapter.layers.values()} == {KINDS[algo]}
    for name, peft_layer in peft_layers.items():
        expected = peft_layer.get_delta_weight("default").detach().float()
        torch.testing.assert_close(adapter.layers[name].delta(expected.shape), expected, rtol=1e-5, atol=1e-7,
                                   msg=name)
    assert any(bool(peft_layer.get_delta_weight("default").abs().max() > 0) for peft_layer in peft_layers.values())

    from loramix.mixer import Mixer

    mixer = Mixer.from_base(str(tiny_model), device="cpu")
    mixer.load(result.lora_path)  # every layer binds to a module of the base model
    assert len(mixer.slots[result.lora_path.stem].layers) == len(adapter.layers)


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_lycoris_loads_the_trained_file_with_no_missing_key(tiny_model, image_folder, tmp_path, algo):
    pytest.importorskip("lycoris", reason="lycoris-lora is the oracle (pip install lycoris-lora)")
    from diffusers import UNet2DConditionModel
    from lycoris import LycorisNetwork, create_lycoris_from_weights

    _, result = _train(tiny_model, image_folder, tmp_path / "out", f"network.algo={algo}", "network.conv_rank=2")
    saved = {k: getattr(LycorisNetwork, k) for k in ("LORA_PREFIX",)}
    logging.getLogger("LyCORIS").setLevel(logging.ERROR)
    LycorisNetwork.apply_preset({"lora_prefix": "lora_unet"})
    try:
        unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
        network, _ = create_lycoris_from_weights(1.0, str(result.lora_path), unet)
        network.apply_to()
        assert network.load_weights(str(result.lora_path)) == {}  # no missing, no unexpected key
        assert {m.lora_name for m in network.loras} == set(read_lora(result.lora_path).layers)
    finally:
        for k, v in saved.items():
            setattr(LycorisNetwork, k, v)


def test_conv_rank_and_alpha_reach_the_conv_layers(tiny_model, image_folder, tmp_path):
    trainer, result = _train(tiny_model, image_folder, tmp_path / "out", "network.conv_rank=2",
                             "network.conv_alpha=0.5")
    layers = read_lora(result.lora_path).layers
    convs = {n: layer for n, layer in layers.items() if layer.down.dim() == 4 and layer.down.shape[-1] == 3}
    assert convs and any("resnets" in n for n in convs) and any("samplers" in n for n in convs)
    for name, layer in convs.items():  # 3x3 convs: conv_rank / conv_alpha, in the module and in the file
        assert (layer.rank, layer.alpha) == (2, 0.5), name
    peft_layers = _peft_layers(trainer)
    for name, layer in layers.items():
        if name not in convs:  # attention, 1x1 shortcuts, time-embedding projections: rank / alpha
            assert (layer.rank, layer.alpha) == (4, 4.0), name
        assert peft_layers[name].r["default"] == layer.rank
        torch.testing.assert_close(layer.delta(peft_layers[name].get_base_layer().weight.shape),
                                   peft_layers[name].get_delta_weight("default").detach(), rtol=1e-5, atol=1e-7)
    assert any("time_emb_proj" in n for n in layers) and any("conv_shortcut" in n for n in layers) or \
        all("conv_shortcut" not in n for n in module_table(trainer.m.unet, "lora_unet"))
    args = json.loads(read_lora(result.lora_path).metadata["ss_network_args"])
    assert (args["conv_dim"], args["conv_alpha"]) == ("2", "0.5")


def test_lycoris_resume_reproduces_the_uninterrupted_run(tiny_model, image_folder, tmp_path):
    over = ("network.algo=loha", "train.max_steps=4")
    full = train(tiny_config(tiny_model, image_folder, tmp_path / "full", *over))
    half = train(tiny_config(tiny_model, image_folder, tmp_path / "half", "network.algo=loha", "train.max_steps=2"))
    resumed = train(tiny_config(tiny_model, image_folder, tmp_path / "half", *over,
                                f"train.resume_from={half.state_path}"))
    assert resumed.steps == 4 and len(resumed.losses) == 2
    a, b = read_lora(full.lora_path), read_lora(resumed.lora_path)
    for name, layer in a.layers.items():
        torch.testing.assert_close(b.layers[name].delta(), layer.delta(), rtol=1e-4, atol=1e-7, msg=name)
