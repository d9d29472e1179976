"""The adapter forms users copy from A1111 prompts with the block-weight extension: accepted, or refused at
parse time with a sentence, never taken into the file path.

The extension's reading is retyped from hako-mikan/sd-webui-lora-block-weight `scripts/lora_block_weight.py`
(commit b403cb7, 2025-06-19): `syntaxdealer` and the part of `loradealer` that picks te / unet / lbw / w.
"""

from __future__ import annotations

import pytest

from loramix.core.errors import LoramixError
from loramix.mix.block_weights import parse_block_weights
from loramix.mix.lora_spec import parse_adapter_spec


def syntaxdealer(items, target, index):  # type "unet=", "x=", "lwbe="
    """The extension's `syntaxdealer` (retyped)."""
    for item in items:
        if target in item:
            return item.replace(target, "")
    if index is None or index + 1 > len(items):
        return None
    if "=" in items[index]:
        return None
    return items[index] if "@" not in items[index] else 1


def extension_reads(spec: str) -> dict:
    """What `loradealer` takes from `<lora:SPEC>` (A1111 splits the tag's text on ':')."""
    items = spec.split(":")
    weights = syntaxdealer(items, "lbw=", 2) if syntaxdealer(items, "lbw=", 2) is not None \
        else syntaxdealer(items, "w=", 2)
    return {"te": syntaxdealer(items, "te=", 1), "unet": syntaxdealer(items, "unet=", 2), "lbw": weights,
            "start": syntaxdealer(items, "start=", None), "stop": syntaxdealer(items, "stop=", None)}


@pytest.mark.parametrize("spec", ["ink.safetensors:0.8:OUTD", "ink.safetensors:w=OUTD", "ink.safetensors:1:lbw=OUTD",
                                  "ink.safetensors:te=0.5:unet=0.8", "ink.safetensors:0.7:w=INS",
                                  "ink.safetensors:1:1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0"])
def test_the_extensions_forms_read_as_the_extension_reads_them(spec):
    ours, theirs = parse_adapter_spec(spec), extension_reads(spec)
    assert ours.path == "ink.safetensors"
    if theirs["lbw"] is not None:
        assert ours.blocks == parse_block_weights(theirs["lbw"])
    else:
        assert ours.blocks is None
    if theirs["te"] is not None and "=" not in spec.split(":")[1]:
        assert ours.weight == float(theirs["te"])  # one number: the weight of both, as A1111's te/unet default
    if "unet=" in spec:
        assert (ours.weight, ours.te_weight) == (float(theirs["unet"]), float(theirs["te"]))


def test_two_positional_numbers_keep_loramix_order():
    """Recorded difference: A1111 reads `name:A:B` as te=A, unet=B; loramix's documented PATH:WEIGHT:TE_WEIGHT
    reads A as the UNet (the main) weight. The named forms te= / unet= mean the same in both."""
    theirs = extension_reads("ink.safetensors:0.8:0.5")
    assert (theirs["te"], theirs["unet"]) == ("0.8", "0.5")
    assert parse_adapter_spec("ink.safetensors:0.8:0.5")[1:3] == (0.8, 0.5)
    assert parse_adapter_spec("ink.safetensors:te=0.8:unet=0.5")[1:3] == (0.5, 0.8)


@pytest.mark.parametrize("spec, says", [
    ("ink.safetensors:lbw=ALL:start=5:stop=20", "start= (a per-step start"),
    ("ink.safetensors:1:lbw=OUTD:stop=20", "stop= (a per-step stop"),
    ("ink.safetensors:1:lbw=OUTD:step=5-10", "step= (a per-step range"),
    ("ink.safetensors:1:lbwe=ATTNON", "lbwe= (per-element weights"),
    ("ink.safetensors:lbw=OUTD:0.8", "put lbw=OUTD after the weights"),
    ("ink.safetensors:w=OUTD:lbw=INS", "give lbw= once"),
    ("ink.safetensors:te=half", "te='half' is not a number"),
])
def test_what_loramix_cannot_do_is_refused_at_parse_time(spec, says):
    if "stop=" in spec:
        assert extension_reads(spec)["stop"] == "20"  # the extension takes it; loramix says why it does not
    with pytest.raises(LoramixError, match=f"^--lora '{spec}': " + says.replace("(", r"\(")):
        parse_adapter_spec(spec)


def test_paths_with_colons_and_equals_signs_stay_paths():
    assert parse_adapter_spec("C:/x/a=b.safetensors:0.8").path == "C:/x/a=b.safetensors"
    assert parse_adapter_spec("C:/x/OUTD").path == "C:/x/OUTD"  # a block preset needs a weight before it
