"""The fused-weight cache: only changed layers are rewritten, by what changed or from the originals, kept once."""

from __future__ import annotations

import pytest
import torch

from loramix.mix.mixer import Mixer
from tests.conftest import random_lora, unet_out


@pytest.fixture(scope="module")
def files(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {"a": random_lora(tiny_model, root / "a.safetensors", 1, text=True),
            "b": random_lora(tiny_model, root / "b.safetensors", 2, rank=8, alpha=8.0, conv=True)}


@pytest.fixture
def mixer(tiny_model, files):
    mixer = Mixer.from_base(str(tiny_model))
    mixer.load(files["a"], weight=0.5)
    mixer.load(files["b"], weight=-0.7)
    return mixer


@pytest.fixture
def memory_mixer(tiny_model, files):
    """A mixer that holds host copies of the originals it fuses (as for a single-file or hub base)."""
    mixer = Mixer.from_base(str(tiny_model), originals="memory")
    mixer.load(files["a"], weight=0.5)
    mixer.load(files["b"], weight=-0.7)
    return mixer


def snapshot(mixer):
    return {f"{part}.{k}": v.clone() for part in ("unet", "text_encoder")
            for k, v in getattr(mixer.components, part).state_dict().items()}


def assert_bit_identical(mixer, before):
    now = snapshot(mixer)
    assert now.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(now[k], v), k


def modules_of(mixer, name, component=None):
    return {layer.module for layer in mixer.slots[name].layers if component in (None, layer.component)}


@pytest.fixture
def fused_calls(monkeypatch):
    """Every module whose fused weight is written, from its original (`_fuse_module`) or by a step
    (`_step_module`), in order."""
    calls = []
    real_fuse, real_step = Mixer._fuse_module, Mixer._step_module
    monkeypatch.setattr(Mixer, "_fuse_module", lambda self, module, pairs: calls.append(module) or
                        real_fuse(self, module, pairs))
    monkeypatch.setattr(Mixer, "_step_module", lambda self, module, old, new: calls.append(module) or
                        real_step(self, module, old, new))
    return calls


@pytest.fixture
def writes(monkeypatch):
    """Each fused weight written: (module, "original" or "step", {layer: coefficient added})."""
    calls, where = [], {}
    real_fuse, real_step, real_add = Mixer._fuse_module, Mixer._step_module, Mixer._add_into

    def add_into(weight, start, pairs):
        calls.append((where["module"], "step" if start is None else "original", {id(layer): c for layer, c in pairs}))
        return real_add(weight, start, pairs)

    def fuse(self, module, pairs):
        where["module"] = module
        return real_fuse(self, module, pairs)

    def step(self, module, old, new):
        where["module"] = module
        return real_step(self, module, old, new)

    monkeypatch.setattr(Mixer, "_fuse_module", fuse)
    monkeypatch.setattr(Mixer, "_step_module", step)
    monkeypatch.setattr(Mixer, "_add_into", staticmethod(add_into))
    return calls


def weights(mixer):
    return {m: m.weight.detach().clone() for slot in mixer.slots.values() for layer in slot.layers
            for m in [layer.module]}


def exact_weights(mixer):
    """The fused weights of the mixer's current blend, each rewritten from its original and rounded once."""
    with mixer.applied("fused", exact=True):
        return weights(mixer)


def test_base_is_bit_identical_after_enable_change_disable(mixer):
    before = snapshot(mixer)
    with mixer.applied("fused"):
        first = unet_out(mixer.components.unet)
    for weight in (1.3, -2.0, 0.1, 0.0, 0.5):  # many rewrites of the same layers, then the first blend
        mixer.set_weight("a", weight)
        with mixer.applied("fused"):
            pass
    mixer.set_weight("b", 0.2, enabled=False)
    with mixer.applied("fused"):
        pass
    mixer.set_weight("b", -0.7, enabled=True)
    with mixer.applied("fused"):
        again = unet_out(mixer.components.unet)
    # 7 changes, each a step in place: the first blend again within float32 rounding of the first time
    assert (again - first).abs().max().item() <= 1e-5 * first.abs().max().item()
    mixer.set_weight("a", 0.5, enabled=False)
    mixer.set_weight("b", -0.7, enabled=False)
    with mixer.applied() as how:
        assert how == "base"
        assert_bit_identical(mixer, before)
    mixer.set_weight("a", 1.0, enabled=True)
    with mixer.applied("fused"):
        pass
    with mixer.applied("unfused") as how:  # hooks run on the base weights, never on fused ones
        assert how == "unfused"
        assert_bit_identical(mixer, before)
    with mixer.applied("fused"):
        pass
    mixer.restore()
    assert_bit_identical(mixer, before)


def test_a_weight_change_rewrites_only_the_affected_modules(mixer, fused_calls):
    a_unet, a_text, b_all = modules_of(mixer, "a", "unet"), modules_of(mixer, "a", "text"), modules_of(mixer, "b")
    assert a_text and b_all - a_unet  # b also adapts the resnet convolutions, a does not
    with mixer.applied("fused"):
        pass
    assert set(fused_calls) == a_unet | a_text | b_all and len(fused_calls) == len(a_unet | a_text | b_all)
    fused_calls.clear()
    with mixer.applied("fused"):  # an unchanged blend: nothing to do
        pass
    assert fused_calls == []
    mixer.set_weight("a", 0.5, te_weight=-1.0)  # only the text encoder coefficient changed
    with mixer.applied("fused"):
        pass
    assert set(fused_calls) == a_text and len(fused_calls) == len(a_text)
    fused_calls.clear()
    mixer.set_weight("a", 0.9, te_weight=-1.0)  # the UNet layers of a, which b shares, not b's convolutions
    with mixer.applied("fused"):
        pass
    assert set(fused_calls) == a_unet and len(fused_calls) == len(a_unet)
    fused_calls.clear()
    mixer.set_weight("b", -0.7, enabled=False)  # a's layers that b shared are rewritten, b's own restored
    with mixer.applied("fused"):
        pass
    assert set(fused_calls) == a_unet & b_all
    assert all(m not in mixer._fused_blend for m in b_all - a_unet - a_text)


def test_fused_equals_unfused_after_changes(mixer):
    for weight_a, weight_b in ((0.5, -0.7), (1.5, 0.3), (-2.0, 2.0)):
        mixer.set_weight("a", weight_a)
        mixer.set_weight("b", weight_b)
        with mixer.applied("fused"):
            fused = unet_out(mixer.components.unet)
        with mixer.applied("unfused"):
            hooked = unet_out(mixer.components.unet)
        with mixer.applied("fused"):  # back to fused after the hooks: rewritten from the originals, still right
            again = unet_out(mixer.components.unet)
        scale = hooked.abs().max().item()
        assert (fused - hooked).abs().max().item() < 1e-5 * max(1.0, scale)
        assert (fused - again).abs().max().item() < 1e-5 * max(1.0, scale)  # a step, then a rewrite
    mixer.set_weight("a", 0.0)
    mixer.set_weight("b", 0.0)
    with mixer.applied():
        base = unet_out(mixer.components.unet)
    assert (fused - base).abs().max().item() > 1e-2


def test_originals_are_kept_once_in_the_model_dtype(tiny_model, files):
    mixer = Mixer.from_base(str(tiny_model), originals="memory")  # held copies (a base not read from files)
    for module in mixer.components.models():
        module.to(torch.bfloat16)
    mixer.load(files["a"], weight=0.5)
    mixer.load(files["b"], weight=-0.7)
    adapted = modules_of(mixer, "a") | modules_of(mixer, "b")
    bases = {m: m.weight.detach().clone() for m in adapted}
    with mixer.applied("fused"):
        pass
    kept = dict(mixer._originals)
    assert set(kept) == adapted  # adapted weights only, one each
    for module, original in kept.items():
        assert original.dtype == torch.bfloat16 and original.device.type == "cpu"
        assert torch.equal(original, bases[module])
    for weight in (1.0, -1.0, 0.0, 2.0):
        mixer.set_weight("a", weight)
        mixer.set_weight("b", -weight, enabled=weight != 0.0)
        with mixer.applied("fused"):
            pass
    assert mixer._originals.keys() == kept.keys()
    assert all(mixer._originals[m] is kept[m] for m in kept)  # never copied again
    assert all(m.weight.dtype == torch.bfloat16 for m in adapted)
    mixer.restore()
    assert all(torch.equal(m.weight, bases[m]) for m in adapted)


class FullDelta:
    """A layer that only knows its full dW (as LoHa / LoKr layers do): no down / up fast path."""

    def __init__(self, layer):
        self.module, self.component, self._layer = layer.module, layer.component, layer

    def delta(self):
        return self._layer.delta()

    def branch(self, x):
        return self._layer.branch(x)


def test_layers_without_down_up_fuse_through_their_delta(mixer):
    with mixer.applied("fused"):
        low_rank = unet_out(mixer.components.unet)
    mixer.restore()
    slot = mixer.slots["b"]
    slot.layers = [FullDelta(layer) for layer in slot.layers]
    with mixer.applied("fused"):
        full = unet_out(mixer.components.unet)
    assert (full - low_rank).abs().max().item() < 1e-5 * max(1.0, low_rank.abs().max().item())


def test_auto_uses_hooks_when_the_originals_would_exceed_the_budget(memory_mixer):
    mixer = memory_mixer
    before = snapshot(mixer)
    adapted = modules_of(mixer, "a") | modules_of(mixer, "b")
    needed = sum(m.weight.numel() * m.weight.element_size() for m in adapted)
    model = sum(p.numel() * p.element_size() for m in mixer.components.models() for p in m.parameters())
    mixer.fuse_budget = needed / model  # just enough
    with mixer.applied() as how:
        assert how == "fused"
    smallest = min(m.weight.numel() * m.weight.element_size() for m in adapted)
    mixer.fuse_budget = 0.99 * smallest / model  # `auto` decides per module: no room for a single original
    with mixer.applied() as how:
        assert how == "unfused"
        assert_bit_identical(mixer, before)  # hooks on the base weights
        assert not mixer._originals  # the host copies are handed back
    with mixer.applied("fused") as how:  # an explicit mode is obeyed (bake)
        assert how == "fused"


def test_a_slider_change_adds_only_the_moved_adapters_product_to_the_fused_weights(mixer, writes):
    with mixer.applied("fused"):
        pass
    assert {how for _, how, _ in writes} == {"original"}
    writes.clear()
    mixer.set_weight("a", 0.9, te_weight=0.5)  # the UNet slider only
    with mixer.applied("fused"):
        stepped = weights(mixer)
    a_layers = {id(layer): layer for layer in mixer.slots["a"].layers}
    assert {m for m, _, _ in writes} == modules_of(mixer, "a", "unet")
    for _, how, added in writes:  # one product each: a's own layer, by the change of its coefficient
        assert how == "step" and len(added) == 1
        (key, change), = added.items()
        assert key in a_layers and change == pytest.approx(0.4)
    exact = exact_weights(mixer)
    for module, w in exact.items():
        assert (stepped[module] - w).abs().max().item() <= 1e-6 * max(1.0, w.abs().max().item())


def test_a_slider_set_to_zero_takes_the_adapter_out_by_a_step_and_back_in(mixer, writes):
    with mixer.applied("fused"):
        before = weights(mixer)
    writes.clear()
    mixer.set_weight("b", 0.0)  # b's layers leave the blend: shared modules step, b's own are put back
    with mixer.applied("fused"):
        pass
    shared = modules_of(mixer, "a") & modules_of(mixer, "b")
    assert shared and {m for m, how, _ in writes if how == "step"} == shared
    assert all(m not in mixer._fused_blend for m in modules_of(mixer, "b") - modules_of(mixer, "a"))
    mixer.set_weight("b", -0.7)
    with mixer.applied("fused"):
        again = weights(mixer)
    for module, w in before.items():
        assert (again[module] - w).abs().max().item() <= 1e-6 * max(1.0, w.abs().max().item())


def test_every_exact_every_th_change_and_a_bake_rewrite_from_the_original_bit_for_bit(mixer, writes):
    mixer.exact_every = 3
    with mixer.applied("fused"):
        pass
    hows = []
    for weight in (0.9, -0.3, 1.7, 0.2):
        writes.clear()
        mixer.set_weight("a", weight, te_weight=0.5)
        with mixer.applied("fused"):
            now = weights(mixer)
        hows.append({how for _, how, _ in writes})
        if hows[-1] == {"original"}:
            assert all(torch.equal(now[m], w) for m, w in exact_weights(mixer).items())
    assert hows == [{"step"}, {"step"}, {"original"}, {"step"}]
    writes.clear()
    exact = exact_weights(mixer)  # what a bake writes: a stepped module is rewritten, an exact one kept
    assert {how for _, how, _ in writes} == {"original"}
    assert {m for m, _, _ in writes} == modules_of(mixer, "a", "unet")
    mixer.restore()
    with mixer.applied("fused"):
        fresh = weights(mixer)
    assert all(torch.equal(fresh[m], w) for m, w in exact.items())


def test_a_bake_after_many_slider_changes_equals_a_fresh_mixers_bake(tiny_model, files, tmp_path):
    from safetensors.torch import load_file

    fresh = Mixer.from_base(str(tiny_model))
    fresh.load(files["a"], weight=0.9)
    fresh.load(files["b"], weight=-0.7)
    fresh.bake(tmp_path / "fresh")
    moved = Mixer.from_base(str(tiny_model))
    moved.load(files["a"], weight=0.5)
    moved.load(files["b"], weight=-0.7)
    for weight in (0.1, 1.3, -0.6, 0.9):  # stepped previews, none of them a rewrite
        moved.set_weight("a", weight)
        with moved.applied("fused"):
            unet_out(moved.components.unet)
    assert any(moved._steps.values())
    moved.bake(tmp_path / "moved")
    for part in ("unet", "text_encoder"):
        a, b = (load_file(next((tmp_path / name / part).glob("*.safetensors"))) for name in ("fresh", "moved"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
