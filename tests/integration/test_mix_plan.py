"""`auto` decides per component and per module: fuse what fits the memory budget, hook the rest."""

from __future__ import annotations

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
    monkeypatch.setattr(Mixer, "_fuse_module", lambda self, m, pairs: rewritten.append(m) or real_fuse(self, m, pairs))
    monkeypatch.setattr(stacked_hooks, "build_stack", lambda m, pairs: built.append(m) or real_build(m, pairs))
    mixer.set_weight("a", 0.7, te_weight=0.4)  # a's text encoder layers only: hooked, so only their stacks
    got = outputs(mixer)
    assert got[0] == "mixed" and rewritten == [] and set(built) == modules(mixer, "text", "a")
    assert_close(got, outputs(mixer, "unfused"))
    outputs(mixer)  # back to the mixed blend (the unfused preview put the UNet's base weights back)
    rewritten.clear(), built.clear()
    mixer.set_weight("a", 0.2, te_weight=0.4)  # a's UNet layers only: fused, so only those weights
    got = outputs(mixer)
    assert got[0] == "mixed" and built == []
    assert set(rewritten) == modules(mixer, "unet", "a") and len(rewritten) == len(modules(mixer, "unet", "a"))
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
    """A tiny model whose low-resolution level is wide (256 channels on 8 x 8 latents) and an adapter for it."""
    from loramix.embedded.tiny import build_tiny_model
    from tests.conftest import WORDS

    root = tmp_path_factory.mktemp("wide")
    model = build_tiny_model(root / "model", seed=0, words=WORDS, unet_channels=(32, 256))
    return model, random_lora(model, root / "a.safetensors", 1, text=True, conv=True)


def test_auto_hooks_the_deep_layers_whose_rewrite_costs_more_than_their_hook(wide):
    model, lora = wide
    mixer = Mixer.from_base(str(model), originals="file")  # originals cost nothing: memory does not decide
    mixer.load(lora, weight=0.8, te_weight=0.5)
    names = {m: path for path, m in mixer.components.unet.named_modules()}
    unet = modules(mixer, "unet")
    deep = {m for m in unet if names[m].startswith(("down_blocks.1.resnets.", "up_blocks.0.resnets.",
                                                    "mid_block.resnets.")) or names[m].startswith("mid_block.")
            and ".attn1." in names[m]}
    high = {m for m in unet if names[m].startswith(("down_blocks.0.", "up_blocks.1."))}
    got = outputs(mixer)
    assert got[0] == "mixed" and not mixer._originals
    assert deep and not deep & fused(mixer)  # 64 rows x 512 or more against 256 x 256 weights and up
    assert high and high <= fused(mixer)
    assert_close(got, outputs(mixer, "unfused"))


def test_a_preview_of_many_steps_fuses_the_deep_layers_too(wide):
    """A slider preview of 8 steps with CFG calls the UNet 16 times: the deep layers' hooks then cost more than
    rewriting their weights once, so `auto` fuses them; a 1-step preview without CFG hooks them again. The text
    encoder is called once per preview whatever the steps, so its modules are weighed by one call."""
    from loramix.mix.request import PreviewRequest

    model, lora = wide
    mixer = Mixer.from_base(str(model), originals="file")
    mixer.load(lora, weight=0.8, te_weight=0.5)
    names = {m: path for path, m in mixer.components.unet.named_modules()}
    deep = {m for m in modules(mixer, "unet") if names[m].startswith(("down_blocks.1.resnets.",
                                                                      "up_blocks.0.resnets."))}
    many = PreviewRequest("a red circle", steps=8, cfg_scale=6.0)
    assert mixer.unet_calls_of(many) == 16
    assert mixer.unet_calls_of(PreviewRequest("a", steps=8, cfg_scale=6.0, width=mixer.native_size() // 2,
                                              height=mixer.native_size() // 2)) == 4
    mixer.generate(many)
    assert deep and deep <= fused(mixer) and not mixer._originals
    assert_close(outputs(mixer, "auto"), outputs(mixer, "unfused"))
    mixer.generate(PreviewRequest("a red circle", steps=1, cfg_scale=1.0))
    assert not deep & fused(mixer)


def test_a_text_encoder_module_is_weighed_by_one_call_whatever_the_steps(tmp_path):
    """The text encoder runs once per preview, not once per UNet call: a module whose hook costs less than its
    rewrite on one call (a 256 -> 512 MLP layer on 77 tokens) stays hooked at 8 steps with CFG too."""
    from types import SimpleNamespace

    from loramix.embedded.tiny import build_tiny_model
    from tests.conftest import WORDS

    model = build_tiny_model(tmp_path / "model", seed=0, words=WORDS, text_dim=256)
    mixer = Mixer.from_base(str(model), originals="file")
    fc1 = next(m for path, m in mixer.components.text_encoder.named_modules() if path.endswith("layers.0.mlp.fc1"))
    assert (fc1.in_features, fc1.out_features) == (256, 512)
    layer = SimpleNamespace(module=fc1, down=torch.zeros(4, 256), up=torch.zeros(512, 4))
    for calls in (1, 16, 1000):
        fused_pairs, hooked_pairs = mixer.plan([(layer, 1.0)], unet_calls=calls)
        assert hooked_pairs and not fused_pairs, calls


def test_over_the_budget_auto_fuses_where_a_slider_change_adds_the_least_work_per_byte_saved(wide):
    """Many adapters: the hooks' stacks alone exceed `fuse_budget`, so modules are fused to bring them under it.
    Of a deep 3x3 convolution (2304 -> 256: the larger stack, but a rewrite 9x its attention neighbour's) and a
    deep attention projection (256 -> 256), fusing the projection frees enough and costs far less per slider
    change: it goes first, and the convolution stays hooked."""
    from types import SimpleNamespace

    model, _ = wide
    mixer = Mixer.from_base(str(model), originals="file")
    named = dict(mixer.components.unet.named_modules())
    conv, proj = named["mid_block.resnets.0.conv1"], named["mid_block.attentions.0.transformer_blocks.0.attn1.to_q"]
    assert (conv.weight[0].numel(), conv.weight.shape[0], proj.weight.shape) == (2304, 256, (256, 256))
    rank = 16

    def layers(module):
        fan_in, fan_out = module.weight[0].numel(), module.weight.shape[0]
        return [(SimpleNamespace(module=module, down=torch.zeros(rank, fan_in), up=torch.zeros(fan_out, rank)), 1.0)
                for _ in range(2)]

    active = layers(conv) + layers(proj)
    stacks = {m: sum(layer.down.numel() * 4 + layer.up.numel() * 4 for layer, _ in active if layer.module is m)
              for m in (conv, proj)}
    mixer.fuse_budget = (sum(stacks.values()) - stacks[proj]) / model_bytes(mixer)  # fusing either one is enough
    fused_pairs, hooked_pairs = mixer.plan(active, unet_calls=1)
    assert {layer.module for layer, _ in fused_pairs} == {proj}
    assert {layer.module for layer, _ in hooked_pairs} == {conv}
