"""Training LoHa, LoKr and LoCon: the trainer injects PEFT's LoHaConfig / LoKrConfig (conv layers at
conv_rank / conv_alpha), and the file it writes is LyCORIS-named, read by loramix's mixer, loaded by
lycoris' own `create_lycoris_from_weights` with no missing key, and holds exactly the ΔW PEFT trained."""

from __future__ import annotations

import json
import logging
from functools import partial

import pytest
import torch

from loramix.adapters.adapter_layers import LohaLayer, LokrLayer, LoraLayer
from loramix.formats.lora_io import module_table, read_lora
from tests.conftest import tiny_config
from trainers.lora_trainer import LoraTrainer, train

pytestmark = pytest.mark.slow  # each test trains or builds the tiny model: 10-60 s on a shared 2-core CPU

KINDS = {"loha": LohaLayer, "lokr": LokrLayer, "lora": LoraLayer}


def _train(tiny_model, image_folder, out, *overrides):
    trainer = LoraTrainer(tiny_config(tiny_model, image_folder, out, "train.max_steps=2", *overrides))
    return trainer, trainer.run()


def _peft_layers(trainer):
    """kohya layer name -> the trained PEFT layer of the UNet."""
    unet, prefix = trainer.components.unet, trainer.family.unet_prefix
    modules = dict(unet.named_modules())
    table = module_table(unet, prefix, partial(trainer.family.kohya_path, prefix, model=unet))
    return {name: modules[path] for name, path in table.items() if hasattr(modules[path], "get_delta_weight")}


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_lycoris_training_writes_the_delta_peft_trained(tiny_model, image_folder, tmp_path, algo):
    trainer, result = _train(tiny_model, image_folder, tmp_path / "out", f"network.algo={algo}", "network.alpha=2",
                             "network.conv_rank=2", "network.conv_alpha=1")  # alpha != rank: scales must be right
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

    from loramix.mix.mixer import Mixer

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
        all("conv_shortcut" not in n for n in module_table(trainer.components.unet, "lora_unet"))
    args = json.loads(read_lora(result.lora_path).metadata["ss_network_args"])
    assert (args["conv_dim"], args["conv_alpha"]) == ("2", "0.5")


@pytest.mark.parametrize("network", ["network.algo=loha", "network.use_dora=true"])
def test_lycoris_resume_reproduces_the_uninterrupted_run(tiny_model, image_folder, tmp_path, network):
    over = (network, "train.max_steps=4")
    full = train(tiny_config(tiny_model, image_folder, tmp_path / "full", *over))
    half = train(tiny_config(tiny_model, image_folder, tmp_path / "half", network, "train.max_steps=2"))
    resumed = train(tiny_config(tiny_model, image_folder, tmp_path / "half", *over,
                                f"train.resume_from={half.state_path}"))
    assert resumed.steps == 4 and len(resumed.losses) == 2
    a, b = read_lora(full.lora_path), read_lora(resumed.lora_path)
    for name, layer in a.layers.items():  # every saved tensor: LoHa factors, LoRA halves, DoRA magnitudes
        for key, value in layer.tensors().items():
            torch.testing.assert_close(b.layers[name].tensors()[key], value, rtol=1e-4, atol=1e-7, msg=f"{name}.{key}")


def test_dora_training_writes_dora_scale_and_the_weight_peft_merges(tiny_model, image_folder, tmp_path):
    from loramix.adapters.adapter_layers import DoraLayer

    trainer, result = _train(tiny_model, image_folder, tmp_path / "out", "network.use_dora=true")
    adapter = read_lora(result.lora_path)
    assert json.loads(adapter.metadata["ss_network_args"]) == {"algo": "locon", "dora_wd": "True"}
    peft_layers = _peft_layers(trainer)
    assert set(adapter.layers) == set(peft_layers)
    for name, peft_layer in peft_layers.items():
        layer = adapter.layers[name]
        assert isinstance(layer, DoraLayer) and layer.dora_scale.shape[0] == layer.out_features
        with torch.no_grad():
            base = peft_layer.get_base_layer().weight.detach().clone()
            peft_layer.merge()
            merged = peft_layer.get_base_layer().weight.detach().clone()
            peft_layer.unmerge()
        torch.testing.assert_close(base + layer.delta(base.shape, base=base), merged, rtol=1e-5, atol=1e-6, msg=name)


def test_mixer_applies_a_dora_file_as_peft_forward(tiny_model, tmp_path):
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from loramix.formats.lora_io import LoraAdapter, from_peft, save_lora
    from loramix.mix.mixer import Mixer

    torch.manual_seed(0)
    peft_unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
    peft_unet.add_adapter(LoraConfig(r=2, lora_alpha=3.0, use_dora=True, init_lora_weights=False,
                                     target_modules=["to_q", "to_v", "conv1"]))
    with torch.no_grad():
        for name, p in peft_unet.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1 + 0.3 * torch.rand_like(p))
    path = save_lora(tmp_path / "dora.safetensors",
                     LoraAdapter(from_peft(get_peft_model_state_dict(peft_unet), "lora_unet", 3.0), {}), "fp32")
    mixer = Mixer.from_base(str(tiny_model), device="cpu")
    unet = mixer.components.unet
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(1, unet.config.in_channels, 8, 8, generator=g)
    text = torch.randn(1, 5, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        expected = peft_unet(sample, 10, text).sample
        base = unet(sample, 10, text).sample
        mixer.load(path, name="dora", weight=1.0)
        for mode in ("fused", "unfused"):
            with mixer.applied(mode):
                torch.testing.assert_close(unet(sample, 10, text).sample, expected, rtol=1e-4, atol=1e-5, msg=mode)
        mixer.set_weight("dora", 0.5)  # W + 0.5·ΔW_DoRA: half-way between base and PEFT weights, layer by layer
        with mixer.applied("fused"):
            module = unet.down_blocks[0].resnets[0].conv1
            peft_conv = peft_unet.down_blocks[0].resnets[0].conv1
            original = peft_conv.get_base_layer().weight.clone()  # the base's weight, as the mixer's original
            peft_conv.merge()
            half = (peft_conv.get_base_layer().weight + original) / 2
            peft_conv.unmerge()
            torch.testing.assert_close(module.weight, half, rtol=1e-5, atol=1e-6)
            fused = unet(sample, 10, text).sample
        with mixer.applied("unfused"):
            torch.testing.assert_close(unet(sample, 10, text).sample, fused, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(fused, base) and not torch.allclose(fused, expected)
