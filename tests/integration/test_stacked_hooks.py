"""The unfused path's stacked hooks equal the per-adapter branches, and follow every coefficient change."""

from __future__ import annotations

import contextlib

import pytest
import torch

from loramix.mix import stacked_hooks
from loramix.mix.mixer import Mixer
from tests.conftest import random_lora, unet_out


@pytest.fixture(scope="module")
def files(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {"a": random_lora(tiny_model, root / "a.safetensors", 1, text=True),  # scale 2 / 4
            "b": random_lora(tiny_model, root / "b.safetensors", 2, rank=8, alpha=8.0, conv=True),  # scale 1
            "c": random_lora(tiny_model, root / "c.safetensors", 3, rank=4, alpha=6.0, text=True, conv=True)}


@pytest.fixture
def mixer(tiny_model, files):
    mixer = Mixer.from_base(str(tiny_model))
    mixer.load(files["a"], weight=0.7, te_weight=-1.2)
    mixer.load(files["b"], weight=-1.3)
    mixer.load(files["c"], weight=1.6, blocks="1,0.5,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1")
    return mixer


@contextlib.contextmanager
def per_adapter(mixer):
    """The unfused path as it was before stacking: per layer up(down(x)) * scale, times its coefficient."""
    per_module = {}
    for layer, coef in mixer.active():
        per_module.setdefault(layer.module, []).append((layer, coef))

    def hook(module, args, output):
        return output + sum(layer.branch(args[0]) * coef for layer, coef in per_module[module])

    handles = [m.register_forward_hook(hook) for m in per_module]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def text_out(mixer):
    ids = torch.arange(8)[None] % mixer.components.text_encoder.config.vocab_size
    with torch.no_grad():
        return mixer.components.text_encoder(ids)[0]


def outputs(mixer, mode=None):
    if mode is None:
        with per_adapter(mixer):
            return unet_out(mixer.components.unet), text_out(mixer)
    with mixer.applied(mode) as how:
        assert how == mode
        return unet_out(mixer.components.unet), text_out(mixer)


def assert_close(got, want):
    for g, w in zip(got, want):
        assert (g - w).abs().max().item() < 1e-5 * max(1.0, w.abs().max().item())


def base_outputs(mixer):
    for slot in mixer.slots.values():
        slot.enabled = False
    out = outputs(mixer)
    for slot in mixer.slots.values():
        slot.enabled = True
    return out


def test_stacked_equals_per_adapter(mixer):
    base = base_outputs(mixer)
    reference = outputs(mixer)
    assert all((r - b).abs().max().item() > 1e-2 for r, b in zip(reference, base))  # the blend does something
    assert_close(outputs(mixer, "unfused"), reference)
    assert_close(outputs(mixer, "fused"), reference)


def test_layers_without_down_up_keep_their_branch_in_the_same_module(mixer):
    class FullDelta:  # a LoHa / LoKr / full layer: only its full dW and its branch
        def __init__(self, layer):
            self.module, self.component, self._layer = layer.module, layer.component, layer
            self.branch, self.delta = layer.branch, layer.delta

    slot = mixer.slots["b"]
    slot.layers = [FullDelta(layer) for layer in slot.layers]
    slot.layer_blocks = {layer.module: b for layer, b in zip(slot.layers, slot.layer_blocks.values())}
    reference = outputs(mixer)
    assert_close(outputs(mixer, "unfused"), reference)
    shared = {layer.module for layer in slot.layers} & {layer.module for layer in mixer.slots["a"].layers}
    assert shared and all(len(mixer._stacks[m].others) == 1 and mixer._stacks[m].down is not None
                          for m in shared)


def test_only_changed_modules_are_rebuilt_and_follow_the_change(mixer, monkeypatch):
    built = []
    real = stacked_hooks.build_stack
    monkeypatch.setattr(stacked_hooks, "build_stack", lambda module, pairs: built.append(module) or real(module, pairs))
    a_text = {layer.module for layer in mixer.slots["a"].layers if layer.component == "text"}
    every = {layer.module for slot in mixer.slots.values() for layer in slot.layers}
    outputs(mixer, "unfused")
    assert set(built) == every and len(built) == len(every)
    built.clear()
    outputs(mixer, "unfused")  # an unchanged blend: nothing rebuilt
    assert built == []
    mixer.set_weight("a", 0.7, te_weight=0.4)  # only a's text encoder coefficient
    assert_close(outputs(mixer, "unfused"), outputs(mixer))
    assert set(built) == a_text and len(built) == len(a_text)
    built.clear()
    mixer.set_weight("c", 1.6, blocks="1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1")  # one block of c changes
    assert_close(outputs(mixer, "unfused"), outputs(mixer))
    assert built and set(built) < every
    mixer.set_weight("b", -1.3, enabled=False)
    assert_close(outputs(mixer, "unfused"), outputs(mixer))


def test_stacks_are_dropped_outside_the_hooks(mixer):
    outputs(mixer, "unfused")
    assert mixer._stacks
    outputs(mixer, "fused")
    assert not mixer._stacks
