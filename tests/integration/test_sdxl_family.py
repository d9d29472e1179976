"""SDXL on a tiny SDXL-shaped model: training with both text encoders and time ids, kohya LDM names,
diffusers loading the file, and the mixer binding it back."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from loramix.embedded.tiny import build_tiny_sdxl
from loramix.formats.base_model import load_base_model
from loramix.formats.lora_io import read_lora
from loramix.mix.mixer import Mixer
from tests.conftest import WORDS, make_folder, tiny_config
from trainers.lora_trainer import train


@pytest.fixture(scope="module")
def tiny_xl(tmp_path_factory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-xl"), words=WORDS)


def test_family_detected_and_conditioning_shapes(tiny_xl):
    m = load_base_model(str(tiny_xl))
    assert m.family.name == "sdxl"
    cond = m.family.encode_text(m, ["red circle", "blue"], "cpu")
    assert cond["encoder_hidden_states"].shape == (2, 77, 80) and cond["text_embeds"].shape == (2, 24)
    kw = m.family.unet_kwargs(cond, [(64, 96, 0, 16, 64, 64), (64, 64, 0, 0, 64, 64)])
    assert kw["added_cond_kwargs"]["time_ids"].tolist()[0] == [64, 96, 0, 16, 64, 64]


def test_sdxl_training_writes_kohya_ldm_names_that_diffusers_and_the_mixer_read(tiny_xl, tmp_path):
    data = make_folder(tmp_path / "data", n=4, sizes=[(64, 64), (96, 64)])
    result = train(tiny_config(tiny_xl, data, tmp_path / "out", "train.max_steps=3",
                               "network.train_text_encoder=true", "dataset.cache_text_embeddings=false",
                               "dataset.min_bucket_reso=64"))
    adapter = read_lora(result.lora_path)
    names = set(adapter.layers)
    assert adapter.metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    # The tiny SDXL UNet: input_blocks 0 = conv_in, 1 = resnet of block 0, 2 = downsample,
    # 3 = resnet + transformer of block 1 -> the attention is at input_blocks_3_1.
    assert "lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k" in names
    assert "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_q" in names
    assert any(n.startswith("lora_unet_output_blocks_0_1_transformer_blocks_") for n in names)
    assert not any("down_blocks" in n or "up_blocks" in n or "mid_block" in n for n in names)
    assert any(n.startswith("lora_te1_text_model_encoder_layers_") for n in names)
    assert any(n.startswith("lora_te2_text_model_encoder_layers_") for n in names)

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_xl)
    mixer = Mixer.from_base(str(tiny_xl))
    mixer.load(result.lora_path)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g)
    ctx = torch.randn(1, 77, 80, generator=g)
    added = {"text_embeds": torch.randn(1, 24, generator=g), "time_ids": torch.tensor([[64., 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        base = pipe.unet(x, 10, ctx, added_cond_kwargs=added).sample
        pipe.load_lora_weights(str(result.lora_path))
        theirs = pipe.unet(x, 10, ctx, added_cond_kwargs=added).sample
        with mixer.applied():
            ours = mixer.components.unet(x, 10, ctx, added_cond_kwargs=added).sample
    assert (theirs - base).abs().max() > 1e-4
    assert (theirs - ours).abs().max() < 1e-4 * max(1.0, float((theirs - base).abs().max()))
