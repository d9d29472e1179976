"""Fusing into a base loaded from safetensors files with no host copies: the originals are read back from disk."""

from __future__ import annotations

import pytest
import torch

from loramix.mix.mixer import Mixer
from tests.conftest import random_lora, unet_out


@pytest.fixture(scope="module")
def files(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return [random_lora(tiny_model, root / "a.safetensors", 1, text=True),
            random_lora(tiny_model, root / "b.safetensors", 2, rank=8, alpha=8.0, conv=True)]


def snapshot(mixer):
    return {f"{part}.{k}": v.clone() for part in ("unet", "text_encoder")
            for k, v in getattr(mixer.components, part).state_dict().items()}


def mixers(tiny_model, files, kinds=("memory", "file")):
    out = {}
    for originals in kinds:
        mixer = Mixer.from_base(str(tiny_model), originals=originals)
        mixer.set_blend([(files[0], 0.5, True), (files[1], -0.7, True)])
        out[originals] = mixer
    return out


def test_file_originals_fuse_and_restore_exactly_as_held_ones(tiny_model, files):
    m = mixers(tiny_model, files)
    before = snapshot(m["file"])
    for weights in ((0.5, -0.7), (1.5, 0.3), (-2.0, 2.0), (0.5, -0.7)):
        outs = {}
        for name, mixer in m.items():
            mixer.set_blend([(files[0], weights[0], True), (files[1], weights[1], True)])
            with mixer.applied("fused"):
                outs[name] = unet_out(mixer.components.unet)
        assert torch.equal(outs["file"], outs["memory"])
    assert m["memory"]._originals and not m["file"]._originals  # nothing held
    m["file"].restore()
    now = snapshot(m["file"])
    assert all(torch.equal(now[k], v) for k, v in before.items())


def test_auto_fuses_whatever_the_budget_when_originals_cost_nothing(tiny_model, files):
    mixer = mixers(tiny_model, files, ("file",))["file"]
    mixer.fuse_budget = 0.0
    with mixer.applied() as how:
        assert how == "fused"
    assert not mixer._originals


def test_a_weight_that_differs_from_the_file_is_held_instead(tiny_model, files):
    mixer = mixers(tiny_model, files, ("file",))["file"]
    changed = mixer.slots["a"].layers[0].module
    with torch.no_grad():
        changed.weight.mul_(1.5)  # the model no longer matches its file here
    before = snapshot(mixer)
    with mixer.applied("fused"):
        pass
    assert list(mixer._originals) == [changed]
    mixer.restore()
    now = snapshot(mixer)
    assert all(torch.equal(now[k], v) for k, v in before.items())
