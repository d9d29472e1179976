"""Block weights on the tiny model: which layers each preset changes, diffusers' per-block scales,
merges equal to the blend, and the `:lbw=` command-line form.

The test model has 2 UNet levels with 1 layer per block; by loramix's rule (SD 1.x numbering at the
same level and position) its blocks are: down_blocks.0 -> IN01, down_blocks.1 -> IN04, mid -> MID,
up_blocks.0 -> OUT00/OUT01, up_blocks.1 -> OUT03/OUT04. The table below is written from that rule and
the extension's preset vectors, by hand.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline

from loramix.formats.lora_io import read_lora, save_lora
from loramix.mix.block_weights import BLOCK_IDS, format_block_weights, parse_block_weights
from loramix.mix.merge import merge_concat, merge_svd
from loramix.mix.mixer import Mixer
from tests.conftest import random_lora

TEXT = "text"
EXPECTED = {  # preset -> (value, the module prefixes it keeps); every other adapted module gets 0
    "ALL": (1.0, [TEXT, "down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]),
    "ALL0.5": (0.5, [TEXT, "down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]),
    "NONE": (0.0, []),
    "INS": (1.0, [TEXT, "down_blocks.0", "down_blocks.1"]),  # BASE, IN01, IN02, IN04
    "IND": (1.0, [TEXT]),  # BASE, IN05, IN07, IN08: none of those exists here
    "INALL": (1.0, [TEXT, "down_blocks.0", "down_blocks.1"]),
    "MIDD": (1.0, [TEXT, "mid_block", "up_blocks.1"]),  # BASE, IN05-08, MID, OUT03-06
    "OUTD": (1.0, [TEXT, "up_blocks.1"]),  # BASE, OUT03-06
    "OUTS": (1.0, [TEXT]),  # BASE, OUT07-11
    "OUTALL": (1.0, [TEXT, "up_blocks.1"]),  # BASE, OUT03-11 (OUT00/01 are not in the 17 layout)
}


@pytest.fixture(scope="module")
def files(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("lbw-loras")
    return {"a": random_lora(tiny_model, root / "a.safetensors", 1, text=True, conv=True),
            "b": random_lora(tiny_model, root / "b.safetensors", 2, rank=2, text=True)}


@pytest.fixture(scope="module")
def mixer(tiny_model):
    return Mixer.from_base(str(tiny_model))


@pytest.fixture(autouse=True)
def _empty(mixer):
    yield
    for name in list(mixer.slots):
        mixer.remove(name)


def adapted_weights(mixer) -> dict[str, torch.Tensor]:
    """Every adapted module's weight as the model holds it now, by a readable name."""
    c = mixer.components
    named = {f"{TEXT}.{p}": m for p, m in c.text_encoder.named_modules()}
    named.update({p: m for p, m in c.unet.named_modules()})
    modules = {layer.module for slot in mixer.slots.values() for layer in slot.layers}
    return {name: m.weight.detach().clone() for name, m in named.items() if m in modules}


def blended(mixer, blocks) -> dict[str, torch.Tensor]:
    mixer.set_weight("a", 0.8, blocks=blocks)
    with mixer.applied("fused"):
        return adapted_weights(mixer)


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_each_preset_changes_exactly_its_blocks(mixer, files, preset):
    mixer.load(files["a"])
    with mixer.applied("fused"):
        pass
    mixer.set_weight("a", 0.0)
    with mixer.applied("fused"):
        base = adapted_weights(mixer)
    full = blended(mixer, None)
    got = blended(mixer, preset)
    value, kept = EXPECTED[preset]
    assert len(base) > 20 and any(n.startswith("up_blocks.0") for n in base)  # the conv layers are there too
    for name in base:
        want = value if any(name.startswith(p + ".") for p in kept) else 0.0
        delta, unit = got[name] - base[name], full[name] - base[name]
        assert unit.abs().max() > 0, name
        torch.testing.assert_close(delta, want * unit, atol=1e-6, rtol=1e-4, msg=f"{preset}: {name}")


def test_matches_diffusers_per_block_scales(mixer, files, tiny_model):
    from tests.conftest import unet_out

    values = dict.fromkeys(BLOCK_IDS, 3.0)  # blocks without layers here: any value must change nothing
    values.update(BASE=0.4, IN01=0.3, MID=-0.5, OUT03=0.7, OUT04=1.2)
    blocks = parse_block_weights(format_block_weights([values[b] for b in BLOCK_IDS]))
    mixer.load(files["b"], weight=0.8, blocks=blocks)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    pipe.load_lora_weights(str(files["b"]), adapter_name="b")
    pipe.set_adapters(["b"], adapter_weights=[{
        "text_encoder": 0.8 * 0.4,
        "unet": {"down": {"block_0": [0.8 * 0.3]}, "mid": 0.8 * -0.5, "up": {"block_1": [0.8 * 0.7, 0.8 * 1.2]}}}])
    ids = pipe.tokenizer(["red circle"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        theirs_text = pipe.text_encoder(ids)[0]
        base_text = mixer.components.text_encoder(ids)[0]
    theirs = unet_out(pipe.unet)
    base = unet_out(mixer.components.unet)
    for mode in ("fused", "unfused"):
        with torch.no_grad(), mixer.applied(mode):
            ours = unet_out(mixer.components.unet)
            ours_text = mixer.components.text_encoder(ids)[0]
        assert (ours - theirs).abs().max().item() < 1e-4, mode
        assert (ours_text - theirs_text).abs().max().item() < 1e-4, mode
    assert (theirs - base).abs().max().item() > 5e-3 and (theirs_text - base_text).abs().max().item() > 1e-3
    mixer.set_weight("b", 0.8, blocks=None)  # without the block weights the outputs differ
    with mixer.applied("fused"):
        assert (unet_out(mixer.components.unet) - theirs).abs().max().item() > 1e-3


def test_a_merge_with_block_weights_equals_the_blend(mixer, files, tmp_path, tiny_model):
    from tests.conftest import unet_out

    mixer.load(files["a"], weight=0.7, blocks="MIDD")
    mixer.load(files["b"], weight=-0.6, te_weight=0.5, blocks="0.5,1,0,1,1,1,1,-1,2,1,1,1,1,1,1,1,1")
    with mixer.applied("fused"):
        blend = unet_out(mixer.components.unet)
    adapter, _ = merge_concat(mixer.sources())
    save_lora(tmp_path / "merged.safetensors", adapter, "fp32")
    svd, report = merge_svd(mixer.sources(), rank=64)  # full rank here: exact up to float error
    assert report.relative_error < 1e-5
    other = Mixer.from_base(str(tiny_model))
    other.load(tmp_path / "merged.safetensors", weight=1.0)
    with other.applied("fused"):
        merged = unet_out(other.components.unet)
    assert (merged - blend).abs().max().item() < 1e-4
    mixer.set_weight("a", 0.7, blocks=None)
    with mixer.applied("fused"):
        assert (unet_out(mixer.components.unet) - merged).abs().max().item() > 1e-3  # the blocks mattered


def test_set_blend_rows_carry_block_weights(mixer, files):
    names = mixer.set_blend([(files["a"], 0.5, True, "OUTD"), (files["b"], 1.0, True)])
    assert mixer.slots[names[0]].blocks.text == "OUTD" and mixer.slots[names[1]].blocks is None
    mixer.set_weight(names[0], 0.2)  # leaving blocks out keeps them
    assert mixer.slots[names[0]].blocks.text == "OUTD"
    mixer.set_blend([(files["a"], 0.5, True)])  # a 3-tuple row means no block weights
    assert mixer.slots[names[0]].blocks is None
    with pytest.raises(Exception, match="value 2"):
        mixer.set_blend([(files["a"], 0.5, True, "1,x")])


def test_lbw_on_the_command_line(tiny_model, files, tmp_path):
    from PIL import Image

    from loramix.cli import main
    from loramix.mix.lora_spec import parse_adapter_spec

    spec = parse_adapter_spec(f"{files['a']}:0.8:0.5:lbw=OUTD")
    assert (spec.path, spec.weight, spec.te_weight, spec.blocks.text) == (str(files["a"]), 0.8, 0.5, "OUTD")
    assert parse_adapter_spec("C:/x/a.safetensors:lbw=1," + "0," * 15 + "1").blocks.layout == 17
    base = ["mix", "--base", str(tiny_model), "--prompt", "red circle", "--steps", "2"]
    assert main([*base, "--lora", f"{files['a']}:1.5:lbw=OUTD", "--out", str(tmp_path / "d.png")]) == 0
    assert main([*base, "--lora", f"{files['a']}:1.5", "--out", str(tmp_path / "all.png")]) == 0
    assert main([*base, "--lora", f"{files['a']}:1.5:lbw=NONE", "--out", str(tmp_path / "none.png")]) == 0
    assert main([*base, "--out", str(tmp_path / "base.png")]) == 0
    pixels = {k: Image.open(tmp_path / f"{k}.png").tobytes() for k in ("d", "all", "none", "base")}
    assert pixels["none"] == pixels["base"] and len({pixels["d"], pixels["all"], pixels["base"]}) == 3
    assert main(["merge", "--lora", f"{files['a']}:0.8:lbw=OUTD", "--out", str(tmp_path / "m.safetensors")]) == 0
    merged = read_lora(tmp_path / "m.safetensors")
    assert not any(name.startswith("lora_unet_down") for name in merged.layers)  # OUTD drops the IN blocks
