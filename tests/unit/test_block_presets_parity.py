"""What `ALL` and the depth presets do, against the lora-block-weight extension's own expansion.

Retyped from hako-mikan/sd-webui-lora-block-weight `scripts/lora_block_weight.py` (commit b403cb7, 2025-06-19):
BLOCKID26 / BLOCKID17, the ALL preset of DEF_WEIGHT_PRESET, and `to26`. loramix follows the extension for
every vector and depth preset, and keeps ALL / NONE / ALL0.5 uniform over every block: the recorded
difference is exactly the 9 blocks the 17-value layout does not name.
"""

from __future__ import annotations

import pytest
import torch

from loramix.core.errors import LoramixError
from loramix.formats.ldm_layout import unet_module_to_ldm
from loramix.mix.block_weights import BLOCK_IDS, DEPTH_PRESETS, UNIFORM_NOTE, block_of, parse_block_weights
from tests.unit.test_block_weight_syntax import SD1_ATTENTION, _unet

BLOCKID26 = ["BASE", "IN00", "IN01", "IN02", "IN03", "IN04", "IN05", "IN06", "IN07", "IN08", "IN09", "IN10", "IN11",
             "M00", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10",
             "OUT11"]
BLOCKID17 = ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", "OUT03", "OUT04", "OUT05", "OUT06",
             "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"]
EXTENSION_ALL = "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"
UNNAMED = {"IN00", "IN03", "IN06", "IN09", "IN10", "IN11", "OUT00", "OUT01", "OUT02"}


def to26(ratios):
    """The extension's `to26` for a 17-value vector (BLOCKIDS[BLOCKNUMS.index(17)] is BLOCKID17)."""
    ids = BLOCKID17
    output = [0] * 26
    for i, id in enumerate(ids):
        output[BLOCKID26.index(id)] = ratios[i]
    return output


def extension_vector(preset_text: str) -> dict[str, float]:
    return dict(zip([b.replace("M00", "MID") for b in BLOCKID26], to26([float(w) for w in preset_text.split(",")])))


@pytest.mark.parametrize("name", sorted(DEPTH_PRESETS))
def test_depth_presets_expand_as_the_extension_expands_them(name):
    assert dict(zip(BLOCK_IDS, parse_block_weights(name).values)) == extension_vector(DEPTH_PRESETS[name])


def _layer_blocks(family: str) -> dict[str, str]:
    """Every Linear / Conv2d of the real UNet (meta device) -> its block, by loramix's block_of on kohya names."""
    unet, cfg = _unet(family)
    out = {}
    for path, module in unet.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            name = "lora_unet_" + (unet_module_to_ldm(path, cfg) if family == "sdxl" else path).replace(".", "_")
            block = block_of(name)
            if block is not None:
                out[name] = BLOCK_IDS[block]
    return out


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_all_differs_from_the_extension_exactly_on_the_unnamed_blocks(family):
    theirs = extension_vector(EXTENSION_ALL)
    ours = dict(zip(BLOCK_IDS, parse_block_weights("ALL").values))
    layers = _layer_blocks(family)
    differ = {block for block in layers.values() if ours[block] != theirs[block]}
    assert differ == UNNAMED & set(layers.values())
    assert all(ours[b] == 1.0 for b in layers.values())
    if family == "sd1":  # a plain SD 1.x LoRA (attention only): the same multiplier on every layer
        assert all(ours[b] == theirs[b] for b in layers.values() if b in SD1_ATTENTION)
    else:  # SDXL: the extension's ALL drops the attention of output_blocks 0-2
        assert {"OUT00", "OUT01", "OUT02"} <= differ
    assert "IN00" in UNIFORM_NOTE and "OUT00-OUT02" in UNIFORM_NOTE


def test_sdxl_refuses_a_depth_preset_and_says_why():
    with pytest.raises(LoramixError, match="OUTD is an SD 1.x preset, whose blocks are not sdxl's"):
        parse_block_weights("OUTD").check_family("sdxl")
