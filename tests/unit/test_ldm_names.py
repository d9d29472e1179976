"""kohya's SDXL layer names come from the LDM UNet layout: check the mapping on the real configs."""

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel

from loramix.formats.ldm_layout import unet_module_to_ldm

SD15 = dict(sample_size=64, block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
            down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, cross_attention_dim=768,
            attention_head_dim=8)
SDXL = dict(sample_size=128, block_out_channels=[320, 640, 1280], layers_per_block=2,
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20], cross_attention_dim=2048,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816, use_linear_projection=True)


def modules(config):
    with init_empty_weights():
        unet = UNet2DConditionModel(**config)
    return [n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


@pytest.mark.parametrize("config, diffusers, ldm", [
    (SD15, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
     "input_blocks.1.1.transformer_blocks.0.attn1.to_q"),
    (SD15, "down_blocks.1.attentions.1.proj_in", "input_blocks.5.1.proj_in"),
    (SD15, "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0",
     "middle_block.1.transformer_blocks.0.attn2.to_out.0"),
    (SD15, "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2", "output_blocks.3.1.transformer_blocks.0.ff.net.2"),
    (SD15, "up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_k", "output_blocks.11.1.transformer_blocks.0.attn1.to_k"),
    (SD15, "down_blocks.1.downsamplers.0.conv", "input_blocks.6.0.op"),
    (SD15, "up_blocks.0.upsamplers.0.conv", "output_blocks.2.1.conv"),
    (SD15, "up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
    (SD15, "down_blocks.2.resnets.0.conv_shortcut", "input_blocks.7.0.skip_connection"),
    (SD15, "mid_block.resnets.1.time_emb_proj", "middle_block.2.emb_layers.1"),
    (SDXL, "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k",
     "input_blocks.4.1.transformer_blocks.1.attn2.to_k"),
    (SDXL, "up_blocks.0.attentions.2.transformer_blocks.9.attn1.to_v",
     "output_blocks.2.1.transformer_blocks.9.attn1.to_v"),
    (SDXL, "add_embedding.linear_1", "label_emb.0.0"),
    (SDXL, "up_blocks.2.resnets.2.conv2", "output_blocks.8.0.out_layers.3"),
])
def test_known_names(config, diffusers, ldm):
    assert unet_module_to_ldm(diffusers, config) == ldm


@pytest.mark.parametrize("config, attention_layers", [(SD15, 16 * 8), (SDXL, 70 * 8)])
def test_every_layer_maps_to_a_distinct_name(config, attention_layers):
    names = modules(config)
    mapped = [unet_module_to_ldm(n, config) for n in names]
    assert len(set(mapped)) == len(mapped)
    attn = [m for m in mapped if m.rsplit(".", 2)[-2].startswith("attn") or m.endswith("to_out.0")]
    assert len([m for m in mapped if ".attn1." in m or ".attn2." in m]) == attention_layers
    assert attn and all(m.startswith(("input_blocks", "middle_block", "output_blocks")) for m in attn)
