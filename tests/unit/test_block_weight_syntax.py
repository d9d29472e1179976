"""Block-weight syntax (A1111 lora-block-weight) and layer -> block on the real SD 1.5 and SDXL configs.

The expected block sets are written out here from the extension's documented layouts, not from
loramix: its 17-value LoRA layout is exactly SD 1.x's attention blocks, its 12-value one SDXL's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from loramix.core.errors import LoramixError
from loramix.formats.ldm_layout import unet_module_to_ldm
from loramix.mix.block_weights import BLOCK_IDS, block_of, parse_block_weights

CONFIGS = Path(__file__).resolve().parents[2] / "loramix" / "configs"
SD1_ATTENTION = {"IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "MID", "OUT03", "OUT04", "OUT05", "OUT06",
                 "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"}
SDXL_ATTENTION = {"IN04", "IN05", "IN07", "IN08", "MID", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05"}
# the extension's DEF_WEIGHT_PRESET, as it ships
EXTENSION_PRESETS = {
    "NONE": [0] * 17, "ALL": [1] * 17, "ALL0.5": [0.5] * 17,
    "INS": [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    "IND": [1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    "INALL": [1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    "MIDD": [1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    "OUTD": [1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    "OUTS": [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
    "OUTALL": [1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
}


@pytest.mark.parametrize("name", sorted(EXTENSION_PRESETS))
def test_presets_are_the_extensions(name):
    assert parse_block_weights(name).in_layout(17) == EXTENSION_PRESETS[name]
    assert parse_block_weights(name.lower()).text == name


def test_a_vector_is_read_by_block_names_and_unnamed_blocks_get_zero():
    sd1 = parse_block_weights("0.1,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16")
    assert dict(zip(BLOCK_IDS, sd1.values))["IN07"] == 5 and dict(zip(BLOCK_IDS, sd1.values))["OUT11"] == 16
    assert dict(zip(BLOCK_IDS, sd1.values))["IN03"] == 0 and dict(zip(BLOCK_IDS, sd1.values))["OUT00"] == 0
    xl = dict(zip(BLOCK_IDS, parse_block_weights("9,1,2,3,4,5,6,7,8,9,10,11").values))
    assert (xl["BASE"], xl["IN04"], xl["MID"], xl["OUT00"], xl["OUT05"], xl["OUT06"]) == (9, 1, 5, 6, 11, 0)


@pytest.mark.parametrize("text, words", [
    ("OUTX", ["'OUTX'", "not a preset name", "OUTD"]),
    ("1,0,zero,1", ["value 3", "'zero'", "not a number"]),
    ("1,0,1", ["3 values", "17", "12"]),
    ("", ["not a preset name"]),
])
def test_bad_block_weights_name_the_token(text, words):
    with pytest.raises(LoramixError) as e:
        parse_block_weights(text)
    for word in words:
        assert word in str(e.value)


def test_sdxl_refuses_sd1_layouts_and_depth_presets():
    for text in ("OUTD", "1," * 16 + "1"):
        with pytest.raises(LoramixError, match="12 or 20 values"):
            parse_block_weights(text).check_family("sdxl")
    parse_block_weights("1,0,0,0,0,0,1,1,1,1,1,1").check_family("sdxl")
    parse_block_weights("ALL0.5").check_family("sdxl")
    with pytest.raises(LoramixError, match="17 or 26 values"):
        parse_block_weights("1,0,0,0,0,0,1,1,1,1,1,1").check_family("sd1")


def _unet(family: str):
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    cfg = {k: v for k, v in json.loads((CONFIGS / family / "unet.json").read_text()).items() if not k.startswith("_")}
    with init_empty_weights():
        unet = UNet2DConditionModel(**cfg)
    return unet, cfg


def _ldm_block(ldm_path: str) -> str | None:
    """IN/OUT/MID read straight off an LDM path: the independent oracle."""
    m = re.match(r"(input_blocks|output_blocks|middle_block)\.(\d+)", ldm_path)
    if not m:
        return None
    return "MID" if m.group(1) == "middle_block" else f"{'IN' if m.group(1) == 'input_blocks' else 'OUT'}{int(m.group(2)):02d}"


@pytest.mark.parametrize("family, attention, all_blocks", [
    ("sd1", SD1_ATTENTION, {f"IN{i:02d}" for i in range(12)} | {"MID"} | {f"OUT{i:02d}" for i in range(12)}),
    ("sdxl", SDXL_ATTENTION, {f"IN{i:02d}" for i in range(9)} | {"MID"} | {f"OUT{i:02d}" for i in range(9)}),
])
def test_block_of_on_the_real_unets(family, attention, all_blocks):
    unet, cfg = _unet(family)
    seen_attention, seen = set(), set()
    for path, module in unet.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        ldm = unet_module_to_ldm(path, cfg)
        expected = _ldm_block(ldm)
        # kohya's name: diffusers paths for SD 1.x, LDM paths for SDXL; both spellings must agree
        for name in (f"lora_unet_{path.replace('.', '_')}", f"lora_unet_{ldm.replace('.', '_')}", path):
            block = block_of(name, family)
            assert (BLOCK_IDS[block] if block is not None else None) == expected, (name, expected)
        if expected:
            seen.add(expected)
            if ".attentions." in path and ".transformer_blocks." in path:
                seen_attention.add(expected)
    assert seen_attention == attention
    assert seen == all_blocks
    assert block_of("lora_unet_time_embedding_linear_1", family) is None
    assert block_of("lora_te_text_model_encoder_layers_0_self_attn_q_proj", family) == 0
    assert block_of("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", family) == 0
