"""LyCORIS LoHa / LoKr / full files made by lycoris-lora itself: loramix's ΔW equals lycoris' own, and the
mixer applies them as lycoris' own forward does."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

lycoris = pytest.importorskip("lycoris", reason="lycoris-lora is the oracle (pip install lycoris-lora)")
from lycoris import LycorisNetwork, create_lycoris  # noqa: E402

from loramix.core.errors import AdapterFormatError, LoramixError  # noqa: E402
from loramix.formats.lora_io import (  # noqa: E402
    FullLayer,
    LohaLayer,
    LokrLayer,
    LoraAdapter,
    LoraLayer,
    read_lora,
    save_lora,
)
from loramix.mix.merge import Source, merge_concat, merge_svd  # noqa: E402
from tests.conftest import unet_out  # noqa: E402

_PRESET_ATTRS = ("ENABLE_CONV", "TARGET_REPLACE_MODULE", "TARGET_REPLACE_NAME", "LORA_PREFIX", "MODULE_ALGO_MAP",
                 "NAME_ALGO_MAP", "USE_FNMATCH", "TARGET_EXCLUDE_NAME")


@pytest.fixture(autouse=True)
def _lycoris_preset():
    """lycoris keeps its preset on the class: give it kohya's prefix for a test and put it back after."""
    saved = {k: getattr(LycorisNetwork, k) for k in _PRESET_ATTRS}
    logging.getLogger("LyCORIS").setLevel(logging.ERROR)
    yield
    for k, v in saved.items():
        setattr(LycorisNetwork, k, v)


class Small(nn.Module):
    """No biases (bias changes, `diff_b`, are tested in test_lycoris_tucker_bias.py)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 16, bias=False)  # LoKr factors: out 16 = 4·4, in 32 = 4·8
        self.wide = nn.Linear(64, 64, bias=False)  # 8·8 each: wide enough for LoKr to factorise w1 too
        self.conv = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.pw = nn.Conv2d(8, 12, 1, bias=False)


def lycoris_file(tmp_path, algo, seed=0, targets=("fc", "wide", "conv", "pw"), model=None, dim=2, alpha=3.0, **kw):
    """Make a network with lycoris on `model`, give every factor random values, save it as lycoris does."""
    torch.manual_seed(seed)
    model = model or Small()
    LycorisNetwork.apply_preset({"target_module": [], "target_name": [f"^{t}$" for t in targets],
                                 "lora_prefix": "lora_unet", "enable_conv": True})
    net = create_lycoris(model, 1.0, linear_dim=dim, linear_alpha=alpha, algo=algo, **kw)
    net.apply_to()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    path = tmp_path / f"{algo}-{seed}.safetensors"
    net.save_weights(str(path), torch.float32, {"ss_network_module": "lycoris.kohya"})
    return model, net, path


CASES = {  # id: (algo, extra lycoris arguments, the layer type loramix should make)
    "loha": ("loha", {}, LohaLayer),
    "loha-tucker": ("loha", {"use_tucker": True}, LohaLayer),
    "lokr": ("lokr", {}, LokrLayer),
    "lokr-tucker": ("lokr", {"use_tucker": True}, LokrLayer),
    "lokr-both-factorised": ("lokr", {"decompose_both": True}, LokrLayer),
    "lokr-full-matrices": ("lokr", {"full_matrix": True}, LokrLayer),
    "lokr-factor-4": ("lokr", {"factor": 4}, LokrLayer),
    "full": ("full", {}, FullLayer),
}


@pytest.mark.parametrize("case", list(CASES))
def test_delta_equals_lycoris_own_weight(tmp_path, case):
    algo, kw, kind = CASES[case]
    _, net, path = lycoris_file(tmp_path, algo, **kw)
    adapter = read_lora(path)
    assert set(adapter.layers) == {m.lora_name for m in net.loras}
    for module in net.loras:
        ours = adapter.layers[module.lora_name]
        assert isinstance(ours, kind), module.lora_name
        if algo == "full":
            theirs = module.get_diff_weight()[0]
        else:  # scale · ΔW; lycoris' get_diff_weight multiplies by the scale a second time (see test below)
            theirs = module.get_weight(module.shape) * module.scalar
        torch.testing.assert_close(ours.delta(module.shape), theirs.detach(), rtol=1e-5, atol=1e-6,
                                   msg=f"{case} {module.lora_name}")
        assert ours.fits(module.shape)


@pytest.mark.parametrize("case", ["loha", "loha-tucker", "lokr", "lokr-tucker", "lokr-full-matrices"])
def test_delta_equals_what_lycoris_forward_adds(tmp_path, case):
    """The strongest oracle: each lycoris module's forward output minus the base layer's output."""
    algo, kw, _ = CASES[case]
    model, net, path = lycoris_file(tmp_path, algo, alpha=5.0, **kw)
    adapter = read_lora(path)
    torch.manual_seed(1)
    for module in net.loras:
        base = module.org_module[0]
        x = torch.randn(3, base.in_features) if isinstance(base, nn.Linear) else torch.randn(2, base.in_channels, 6, 6)
        with torch.no_grad():
            added = module(x) - module.org_forward(x)
            delta = adapter.layers[module.lora_name].delta(base.weight.shape)
            ours = F.linear(x, delta) if isinstance(base, nn.Linear) else F.conv2d(x, delta, padding=base.padding)
        torch.testing.assert_close(ours, added, rtol=1e-4, atol=1e-5, msg=f"{case} {module.lora_name}")


def test_scale_rules(tmp_path):
    """LoHa: alpha / rank. LoKr: alpha / rank when a half is factorised, 1 when both are full matrices."""
    _, _, loha = lycoris_file(tmp_path, "loha", dim=2, alpha=3.0)
    assert read_lora(loha).layers["lora_unet_fc"].scale == pytest.approx(1.5)
    _, _, lokr = lycoris_file(tmp_path, "lokr", dim=2, alpha=3.0)
    layer = read_lora(lokr).layers["lora_unet_fc"]
    assert layer.w2_a is not None and layer.w1 is not None and layer.scale == pytest.approx(1.5)
    _, _, full = lycoris_file(tmp_path, "lokr", seed=1, dim=2, alpha=3.0, full_matrix=True)
    layer = read_lora(full).layers["lora_unet_fc"]
    assert layer.w1 is not None and layer.w2 is not None and layer.rank is None and layer.scale == 1.0


def test_lycoris_get_diff_weight_scales_twice(tmp_path):
    """Recorded, not followed: lycoris 4.1's `get_diff_weight` (and so its merge) multiplies the scale in
    twice for LoHa, while its forward, A1111 and ComfyUI use it once; loramix follows the forward."""
    _, net, _ = lycoris_file(tmp_path, "loha", dim=2, alpha=3.0)
    module = net.loras[0]
    once = module.get_weight(module.shape)
    torch.testing.assert_close(module.get_diff_weight(shape=module.shape)[0], once * module.scale)


def test_a_plain_conv_learns_its_kernel_when_bound(tmp_path):
    """A non-Tucker LoHa conv is stored flattened (out, in·k·k): the file alone does not give k."""
    _, _, path = lycoris_file(tmp_path, "loha")
    layer = read_lora(path).layers["lora_unet_conv"]
    assert layer.shape is None and (layer.out_features, layer.in_features) == (32, 16 * 9)
    assert layer.fits((32, 16, 3, 3)) and not layer.fits((32, 16, 1, 1)) and not layer.fits((16, 16, 3, 3))
    assert layer.delta((32, 16, 3, 3)).shape == (32, 16, 3, 3)


# ---- refusals ----------------------------------------------------------------------------------------
def _file(tmp_path, tensors):
    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / "x.safetensors"))
    return tmp_path / "x.safetensors"


def test_refuses_missing_and_mismatched_factors(tmp_path):
    def w():
        return torch.ones(4, 2)

    with pytest.raises(AdapterFormatError, match=r"x\.safetensors: lora_unet_a lacks hada_w2_b"):
        read_lora(_file(tmp_path, {"lora_unet_a.hada_w1_a": w(), "lora_unet_a.hada_w1_b": torch.ones(2, 4),
                                   "lora_unet_a.hada_w2_a": w()}))
    with pytest.raises(AdapterFormatError, match=r"lora_unet_a is a LoHa layer whose factors do not fit"):
        read_lora(_file(tmp_path, {"lora_unet_a.hada_w1_a": w(), "lora_unet_a.hada_w1_b": torch.ones(2, 3),
                                   "lora_unet_a.hada_w2_a": w(), "lora_unet_a.hada_w2_b": torch.ones(2, 5)}))
    with pytest.raises(AdapterFormatError, match=r"lora_unet_a lacks lokr_w2 \(or lokr_w2_a/_b\)"):
        read_lora(_file(tmp_path, {"lora_unet_a.lokr_w1": w()}))


def test_refuses_types_it_cannot_apply(tmp_path):
    with pytest.raises(AdapterFormatError, match=r"lora_unet_a is stored as oft_blocks, a layer type loramix does not"):
        read_lora(_file(tmp_path, {"lora_unet_a.oft_blocks": torch.ones(2, 4, 4), "lora_unet_a.alpha": torch.tensor(1.),
                                   "lora_unet_b.lora_down.weight": torch.ones(2, 4),
                                   "lora_unet_b.lora_up.weight": torch.ones(4, 2)}))
    with pytest.raises(AdapterFormatError, match=r"lora_unet_b is a DoRA layer with a Tucker middle \(lora_mid\)"):
        read_lora(_file(tmp_path, {"lora_unet_b.lora_down.weight": torch.ones(2, 4, 1, 1),
                                   "lora_unet_b.lora_mid.weight": torch.ones(2, 2, 3, 3),
                                   "lora_unet_b.lora_up.weight": torch.ones(4, 2, 1, 1),
                                   "lora_unet_b.dora_scale": torch.ones(4, 1, 1, 1)}))
    with pytest.raises(AdapterFormatError, match="lora_unet_a has a dora_scale of 3 values"):  # DoRA is read (test_dora.py)
        read_lora(_file(tmp_path, {"lora_unet_a.lora_down.weight": torch.ones(2, 4),
                                   "lora_unet_a.lora_up.weight": torch.ones(4, 2),
                                   "lora_unet_a.dora_scale": torch.ones(3, 1)}))


# ---- merge -------------------------------------------------------------------------------------------
def test_exact_merge_refuses_a_loha_and_svd_merges_it(tmp_path):
    _, _, path = lycoris_file(tmp_path, "loha", targets=("fc", "pw"))
    loha = read_lora(path)
    lora = LoraAdapter({"lora_unet_fc": LoraLayer(torch.randn(2, 32), torch.randn(16, 2), 2.0)})
    sources = [Source("loha", loha, 0.7), Source("plain", lora, -0.5)]
    with pytest.raises(LoramixError, match="loha: layer lora_unet_fc is a LoHa layer, not a low-rank product"):
        merge_concat(sources)
    merged, report = merge_svd(sources, rank=64)  # full rank: exact up to float error
    assert report.relative_error < 1e-5
    expect = 0.7 * loha.layers["lora_unet_fc"].delta() - 0.5 * lora.layers["lora_unet_fc"].delta()
    torch.testing.assert_close(merged.layers["lora_unet_fc"].delta(), expect, rtol=1e-4, atol=1e-5)
    back = read_lora(save_lora(tmp_path / "m.safetensors", merged, "fp32"))
    assert all(isinstance(layer, LoraLayer) for layer in back.layers.values())


def test_svd_merge_takes_a_conv_kernel_from_a_source_that_knows_it(tmp_path):
    _, _, path = lycoris_file(tmp_path, "lokr", targets=("conv",))
    lokr = read_lora(path)
    assert lokr.layers["lora_unet_conv"].shape is None  # plain LoKr conv: flattened
    locon = LoraAdapter({"lora_unet_conv": LoraLayer(torch.randn(2, 16, 3, 3), torch.randn(32, 2, 1, 1), 2.0)})
    merged, _ = merge_svd([Source("a", lokr, 1.0), Source("b", locon, 1.0)], rank=4)
    layer = merged.layers["lora_unet_conv"]
    assert tuple(layer.down.shape) == (4, 16, 3, 3) and tuple(layer.up.shape) == (32, 4, 1, 1)


# ---- write, and save/read round trip ----------------------------------------------------------------
@pytest.mark.parametrize("case", ["loha", "loha-tucker", "lokr-tucker", "lokr-both-factorised", "full"])
def test_save_and_read_back_keeps_the_layer(tmp_path, case):
    algo, kw, kind = CASES[case]
    _, _, path = lycoris_file(tmp_path, algo, **kw)
    adapter = read_lora(path)
    back = read_lora(save_lora(tmp_path / "again.safetensors", adapter, "fp32"))
    for name, layer in adapter.layers.items():
        assert type(back.layers[name]) is kind
        assert torch.equal(back.layers[name].delta(), layer.delta()), name


# ---- the mixer applies them ---------------------------------------------------------------------------
def _unet_out(unet, seed=0):
    return unet_out(unet, seed, timesteps=(500,))


UNET_TARGETS = (r".*attn1\.to_q", r".*attn2\.to_k", r"down_blocks\.0\.resnets\.0\.conv1",
                r"up_blocks\.1\.resnets\.0\.conv_shortcut", r"mid_block\.attentions\.0\.proj_in")


@pytest.mark.parametrize("case", ["loha-tucker", "lokr", pytest.param("loha", marks=pytest.mark.slow),
                                  pytest.param("lokr-tucker", marks=pytest.mark.slow)])
def test_mixer_applies_it_as_lycoris_does(tmp_path, tiny_model, case):
    from diffusers import UNet2DConditionModel

    from loramix.mix.mixer import Mixer

    algo, kw, kind = CASES[case]
    theirs_unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet").eval()
    _, net, path = lycoris_file(tmp_path, algo, model=theirs_unet, targets=UNET_TARGETS, dim=2, alpha=1.0, **kw)
    net.set_multiplier(0.6)
    theirs = _unet_out(theirs_unet)

    mixer = Mixer.from_base(str(tiny_model), device="cpu")
    base = _unet_out(mixer.components.unet)
    mixer.load(path, weight=0.6)
    slot = next(iter(mixer.slots.values()))
    assert len(slot.layers) == len(net.loras) >= 8 and {type(b.adapter_layer) for b in slot.layers} == {kind}
    assert (theirs - base).abs().max() > 1e-2  # the adapter changes the output
    for mode in ("fused", "unfused"):
        with mixer.applied(mode):
            ours = _unet_out(mixer.components.unet)
        assert (ours - theirs).abs().max().item() < 1e-4, mode
    assert torch.equal(_unet_out(mixer.components.unet), base)  # the base is back after the preview


@pytest.mark.slow
def test_bake_writes_the_lycoris_delta_into_the_model(tmp_path, tiny_model):
    from diffusers import UNet2DConditionModel

    from loramix.mix.mixer import Mixer

    theirs_unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet").eval()
    _, net, path = lycoris_file(tmp_path, "loha", model=theirs_unet, targets=UNET_TARGETS, use_tucker=True)
    theirs = _unet_out(theirs_unet)
    mixer = Mixer.from_base(str(tiny_model), device="cpu")
    mixer.load(path, weight=1.0)
    baked = mixer.bake(tmp_path / "baked")
    ours = _unet_out(UNet2DConditionModel.from_pretrained(baked, subfolder="unet").eval())
    assert (ours - theirs).abs().max().item() < 1e-4
