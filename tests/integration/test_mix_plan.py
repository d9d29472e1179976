"""`auto` decides per component and per module: fuse what fits the memory budget, hook the rest."""

from __future__ import annotations

import math

import pytest
import torch

from loramix.mix import stacked_hooks
from loramix.mix.mixer import Mixer
from tests.conftest import random_lora, unet_out


@pytest.fixture(scope="module")
def files(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {"a": random_lora(tiny_model, root / "a.safetensors", 1, text=True),
            "b": random_lora(tiny_model, root / "b.safetensors", 2, rank=8, alpha=8.0, text=True, conv=True)}


@pytest.fixture
def mixer(tiny_model, files):
    mixer = Mixer.from_base(str(tiny_model), originals="memory")  # the budget of held originals decides
    mixer.load(files["a"], weight=0.7, te_weight=-1.2)
    mixer.load(files["b"], weight=-1.3)
    return mixer


def modules(mixer, component=None, name=None):
    return {layer.module for slot in mixer.slots.values() if name in (None, slot.name)
            for layer in slot.layers if component in (None, layer.component)}


def nbytes(ms):
    return sum(m.weight.numel() * m.weight.element_size() for m in ms)


def model_bytes(mixer):
    return sum(p.numel() * p.element_size() for m in mixer.components.models() for p in m.parameters())


def text_out(mixer):
    ids = torch.arange(8)[None] % mixer.components.text_encoder.config.vocab_size
    with torch.no_grad():
        return mixer.components.text_encoder(ids)[0]


def outputs(mixer, mode=None):
    with mixer.applied(mode) as how:
        return how, unet_out(mixer.components.unet), text_out(mixer)


def assert_close(got, want):
    for g, w in zip(got[1:], want[1:]):
        assert (g - w).abs().max().item() < 1e-5 * max(1.0, w.abs().max().item())


def stacks(mixer, component):
    """The bytes the hooks' stacks hold for `component`'s modules (every module here has two low-rank layers:
    downs concatenated, ups scaled)."""
    return sum(t.numel() * t.element_size() for slot in mixer.slots.values() for layer in slot.layers
               if layer.component == component for t in (layer.down, layer.up))


def only_unet_fits(mixer):
    """A budget with room for the UNet's originals and the text encoder's stacks, not one text original more."""
    return (nbytes(modules(mixer, "unet")) + stacks(mixer, "text")) / model_bytes(mixer)


def fused(mixer):
    return {m for m, held in mixer._fused_blend.items() if held is not None}


def test_auto_fuses_the_unet_and_hooks_the_text_encoder_when_only_the_unet_fits(mixer):
    unet, text = modules(mixer, "unet"), modules(mixer, "text")
    base_text = {m: m.weight.detach().clone() for m in text}
    hooked = outputs(mixer, "unfused")
    mixer.fuse_budget = only_unet_fits(mixer)
    got = outputs(mixer)
    assert got[0] == "mixed"
    assert fused(mixer) == unet
    assert set(mixer._stacks) == text
    assert all(torch.equal(m.weight, w) for m, w in base_text.items())  # hooked on the base weights
    assert_close(got, hooked)
    assert mixer.held_bytes() <= mixer.fuse_budget * model_bytes(mixer)  # originals and stacks


def test_a_weight_change_in_a_mixed_blend_rebuilds_only_what_changed(mixer, monkeypatch):
    mixer.fuse_budget = only_unet_fits(mixer)
    outputs(mixer)
    rewritten, built = [], []
    real_fuse, real_build = Mixer._fuse_module, stacked_hooks.build_stack
    real_step = Mixer._step_module
    monkeypatch.setattr(Mixer, "_fuse_module", lambda self, m, pairs: rewritten.append(m) or real_fuse(self, m, pairs))
    monkeypatch.setattr(Mixer, "_step_module", lambda self, m, old, new: rewritten.append(m) or real_step(self, m, old, new))
    monkeypatch.setattr(stacked_hooks, "build_stack", lambda m, pairs: built.append(m) or real_build(m, pairs))
    mixer.set_weight("a", 0.7, te_weight=0.4)  # a's text encoder layers only: hooked, so only their stacks
    got = outputs(mixer)
    assert got[0] == "mixed" and rewritten == [] and set(built) == modules(mixer, "text", "a")
    assert_close(got, outputs(mixer, "unfused"))
    outputs(mixer)  # back to the mixed blend (the unfused preview put the UNet's base weights back)
    rewritten.clear(), built.clear()
    mixer.set_weight("a", 0.2, te_weight=0.4)  # a's UNet layers only: fused, so those weights stepped or their
    got = outputs(mixer)                         # change hooked (`_defer`), and nothing else
    assert got[0] == "mixed" and not set(rewritten) & set(built)
    assert set(rewritten) | set(built) == modules(mixer, "unet", "a")
    assert len(rewritten) + len(built) == len(modules(mixer, "unet", "a"))
    assert_close(got, outputs(mixer, "unfused"))


def test_within_the_unet_the_high_resolution_layers_fuse_first(mixer):
    unet = modules(mixer, "unet")
    names = {m: path for path, m in mixer.components.unet.named_modules()}
    mixer.fuse_budget = 0.5 * nbytes(unet) / model_bytes(mixer)
    got = outputs(mixer)
    assert got[0] == "mixed" and fused(mixer) & unet < unet  # (text layers may fill what the UNet's left)
    # the first block's self-attention sees the most tokens per weight: fused; the lowest resolution's
    # 3x3 convolutions see the fewest: hooked
    first = {m for m in unet if names[m].startswith("down_blocks.0.") and ".attn1." in names[m]}
    deepest = {m for m in unet if names[m].startswith("up_blocks.0.resnets.")}
    assert first and first <= fused(mixer)
    assert deepest and not deepest & fused(mixer)
    assert_close(got, outputs(mixer, "unfused"))


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A tiny model whose low-resolution level is wide (256 channels on 8 x 8 latents), with a text encoder of
    width 256, and a rank-16 adapter for it (the rank of kohya's defaults)."""
    from loramix.embedded.tiny import build_tiny_model
    from tests.conftest import WORDS

    root = tmp_path_factory.mktemp("wide")
    model = build_tiny_model(root / "model", seed=0, words=WORDS, unet_channels=(32, 256), text_dim=256)
    return model, random_lora(model, root / "a.safetensors", 1, rank=16, alpha=8.0, text=True, conv=True)


def deep_and_high(mixer):
    names = {m: path for path, m in mixer.components.unet.named_modules()}
    unet = modules(mixer, "unet")
    deep = {m for m in unet if names[m].startswith(("down_blocks.1.resnets.", "up_blocks.0.resnets.",
                                                    "mid_block.resnets.")) or names[m].startswith("mid_block.")
            and ".attn1." in names[m]}
    high = {m for m in unet if names[m].startswith(("down_blocks.0.", "up_blocks.1."))
            and not names[m].endswith(("attn2.to_k", "attn2.to_v"))}  # (those see the prompt's 77 tokens)
    assert deep and high
    return deep, high


def test_at_one_step_a_slider_change_hooks_the_deep_layers_change_until_the_hooks_cost_a_step(wide):
    """Originals from the file cost nothing, so everything is fused. A slider moved before a 1-step preview: a
    deep layer (64 rows x 512 or more against 256 x 256 weights and up) keeps its weight and hooks the change,
    a high-resolution one steps its weight at once. Previews of the same blend keep hooking the deep change
    until the hooks' summed work reaches a step's, and then step it: never more than twice the cheaper."""
    model, lora = wide
    mixer = Mixer.from_base(str(model), originals="file")
    mixer.load(lora, weight=0.8, te_weight=0.5)
    deep, high = deep_and_high(mixer)
    got = outputs(mixer)
    assert got[0] == "fused" and fused(mixer) == modules(mixer) and not mixer._originals
    before = {m: m.weight.detach().clone() for m in deep | high}
    mixer.set_weight(next(iter(mixer.slots.values())), 0.3, te_weight=0.5)
    got = outputs(mixer)
    assert got[0] == "mixed"
    assert deep <= set(mixer._stacks) and all(torch.equal(m.weight, before[m]) for m in deep)
    assert not high & set(mixer._stacks) and all(not torch.equal(m.weight, before[m]) for m in high)
    assert_close(got, outputs(mixer, "unfused"))
    outputs(mixer)  # the fused weights back (the unfused preview put the base back): a first write, not a change
    mixer.set_weight(next(iter(mixer.slots.values())), 0.6, te_weight=0.5)
    module = next(iter(deep))
    (layer, _), = [(layer, c) for layer, c in mixer.active() if layer.module is module]
    hook = mixer._hook_work(module, mixer._rank(module, layer), 1.0)
    step = mixer._step_work(module, mixer._rank(module, layer), mixer._rank(module, layer))
    previews = 0
    while module in mixer._stacks or previews == 0:
        got = outputs(mixer)
        previews += 1
        assert previews < 10_000
    assert previews == math.ceil(step / hook)  # the preview whose hooks would reach a step's work steps instead
    assert_close(got, outputs(mixer, "unfused"))


def test_at_eight_steps_a_slider_change_steps_the_deep_layers_too(wide):
    """A slider preview of 8 steps with CFG calls the UNet 16 times: a deep layer's hook of the change would then
    cost more than a step of its weight, so the change is stepped at once; a 1-step preview without CFG hooks it.
    The pixels count: half the native size is a quarter of the calls."""
    from loramix.mix.request import PreviewRequest

    model, lora = wide
    mixer = Mixer.from_base(str(model), originals="file")
    mixer.load(lora, weight=0.8, te_weight=0.5)
    deep, _ = deep_and_high(mixer)
    many = PreviewRequest("a red circle", steps=8, cfg_scale=6.0)
    assert mixer.unet_calls_of(many) == 16
    assert mixer.unet_calls_of(PreviewRequest("a", steps=8, cfg_scale=6.0, width=mixer.native_size() // 2,
                                              height=mixer.native_size() // 2)) == 4
    mixer.generate(many)
    slot = next(iter(mixer.slots.values()))
    mixer.set_weight(slot, 0.3, te_weight=0.5)
    mixer.generate(many)
    assert deep <= fused(mixer) and not deep & set(mixer._stacks) and not mixer._originals
    assert_close(outputs(mixer, "auto"), outputs(mixer, "unfused"))
    mixer.generate(many)
    mixer.set_weight(slot, 0.6, te_weight=0.5)
    mixer.generate(PreviewRequest("a red circle", steps=1, cfg_scale=1.0))
    assert deep <= set(mixer._stacks)


def test_a_text_encoder_module_is_weighed_by_one_call_whatever_the_steps(wide):
    """The text encoder runs once per preview, not once per UNet call: a change to its layers is hooked at any
    number of UNet calls (77 tokens, one call), where a UNet change of the same preview steps."""
    model, lora = wide
    mixer = Mixer.from_base(str(model), originals="file")
    mixer.load(lora, weight=0.8, te_weight=0.5)
    deep, high = deep_and_high(mixer)
    outputs(mixer)
    text = modules(mixer, "text")
    assert text
    mixer.set_weight(next(iter(mixer.slots.values())), 0.3, te_weight=-0.5)
    with mixer.applied("auto", unet_calls=1000):
        hooked = set(mixer._stacks)
    assert text <= hooked and not (deep | high) & hooked


def test_modules_whose_stack_outweighs_their_original_are_fused_whatever_the_budget(wide):
    """Many adapters: a module whose stack holds more than its original would is fused even with no budget for
    originals (it saves memory and work); one whose original is larger stays hooked. Ten rank-16 adapters on a
    256 x 256 projection stack 327 KB against a 262 KB original; on a 2304 -> 256 convolution 1.6 MB against
    2.4 MB."""
    from types import SimpleNamespace

    model, _ = wide
    mixer = Mixer.from_base(str(model), originals="memory")
    named = dict(mixer.components.unet.named_modules())
    conv, proj = named["mid_block.resnets.0.conv1"], named["mid_block.attentions.0.transformer_blocks.0.attn1.to_q"]
    assert (conv.weight[0].numel(), conv.weight.shape[0], proj.weight.shape) == (2304, 256, (256, 256))
    rank = 16

    def layers(module):
        fan_in, fan_out = module.weight[0].numel(), module.weight.shape[0]
        return [(SimpleNamespace(module=module, down=torch.zeros(rank, fan_in), up=torch.zeros(fan_out, rank)), 1.0)
                for _ in range(10)]

    mixer.fuse_budget = 0.0
    fused_pairs, hooked_pairs = mixer.plan(layers(conv) + layers(proj), unet_calls=1)
    assert {layer.module for layer, _ in fused_pairs} == {proj}
    assert {layer.module for layer, _ in hooked_pairs} == {conv}
    mixer.fuse_budget = 1.0
    fused_pairs, hooked_pairs = mixer.plan(layers(conv) + layers(proj), unet_calls=1)
    assert {layer.module for layer, _ in fused_pairs} == {proj, conv} and not hooked_pairs
