"""What a mixer computes in (`Mixer.from_base(precision=...)`): bf16 previews on CPUs that multiply bf16 natively,
fp32 for the tiny models, and a bake that is written from fp32 weights whatever the previews computed in."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from loramix.core import cpu_features
from loramix.core.errors import LoramixError
from loramix.mix.mixer import Mixer, preview_dtype
from loramix.mix.request import PreviewRequest
from tests.conftest import random_lora, unet_out

SD15_UNET = {"cross_attention_dim": 768, "sample_size": 64}
SDXL_UNET = {"cross_attention_dim": 2048, "addition_embed_type": "text_time", "sample_size": 128}
TINY_UNET = {"cross_attention_dim": 64, "sample_size": 16}
TINY_XL_UNET = {"cross_attention_dim": 80, "addition_embed_type": "text_time", "sample_size": 8}  # a test model


@pytest.mark.parametrize("native", [True, False])
def test_auto_previews_in_bf16_only_on_a_native_bf16_cpu_and_a_full_size_base(monkeypatch, native):
    monkeypatch.setattr(cpu_features, "native_bf16", lambda: native)
    want = torch.bfloat16 if native else torch.float32
    assert preview_dtype("auto", "cpu", SD15_UNET) == want
    assert preview_dtype("auto", "cpu", SDXL_UNET) == want
    assert preview_dtype("auto", "cpu", TINY_UNET) == torch.float32  # the embedded model: too small to pay the casts
    assert preview_dtype("auto", "cpu", TINY_XL_UNET) == torch.float32
    assert preview_dtype("auto", "cuda", SD15_UNET) == torch.float16
    for given, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        assert preview_dtype(given, "cpu", SD15_UNET) == dtype


def test_an_unknown_precision_is_refused_before_the_model_loads(monkeypatch):
    import loramix.mix.mixer as mixer_module

    monkeypatch.setattr(mixer_module, "load_base_model", lambda *a: pytest.fail("the model loaded"))
    with pytest.raises(LoramixError, match="precision 'half'"):
        Mixer.from_base("", precision="half")


@pytest.fixture(scope="module")
def files(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return [random_lora(tiny_model, root / "a.safetensors", 1, text=True),
            random_lora(tiny_model, root / "b.safetensors", 2, rank=8, alpha=8.0, conv=True)]


def test_a_bf16_mixer_previews_in_bf16_and_gives_its_base_back_bit_for_bit(tiny_model, files):
    mixer = Mixer.from_base(str(tiny_model), precision="bf16")  # originals read back from the files
    assert mixer.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for m in mixer.components.models() for p in m.parameters())
    base = {k: v.clone() for k, v in mixer.components.unet.state_dict().items()}
    base_out = unet_out(mixer.components.unet)
    mixer.set_blend([(files[0], 0.8, True), (files[1], -0.6, True)])
    for mode in ("fused", "unfused", "auto"):
        with mixer.applied(mode):
            out = unet_out(mixer.components.unet)
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
        assert (out.float() - base_out.float()).abs().max() > 1e-3, mode  # the adapters act
    mixer.set_blend([])
    with mixer.applied():
        pass
    assert all(torch.equal(mixer.components.unet.state_dict()[k], v) for k, v in base.items())


def test_a_bf16_preview_draws_what_the_fp32_one_draws(tiny_model, files):
    req = PreviewRequest("a large red circle in the center, blue background", seed=1, steps=4)
    pictures = {}
    for precision in ("fp32", "bf16"):
        mixer = Mixer.from_base(str(tiny_model), precision=precision)
        mixer.set_blend([(files[0], 0.5, True)])
        pictures[precision] = torch.tensor(list(mixer.generate(req).getdata()), dtype=torch.float32)
    diff = (pictures["bf16"] - pictures["fp32"]).abs()
    assert diff.mean() < 6, diff.mean()  # levels of 255: the same picture, rounded differently
    assert diff.max() > 0  # ... and not the fp32 one: the bf16 weights were used


def test_a_bake_from_a_bf16_mixer_writes_the_fp32_sums(tiny_model, files, tmp_path):
    outs = {}
    for precision in ("fp32", "bf16"):
        mixer = Mixer.from_base(str(tiny_model), precision=precision)
        mixer.set_blend([(files[0], 0.7, True, "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1"), (files[1], -0.4, True)])
        outs[precision] = mixer.bake(tmp_path / f"baked-{precision}", tmp_path / f"baked-{precision}.safetensors")
        assert mixer.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)  # previews unchanged
    for part in ("unet", "text_encoder", "vae"):
        a, b = (load_file(next((outs[p] / part).glob("*.safetensors"))) for p in ("fp32", "bf16"))
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == torch.float32 and torch.equal(a[key], b[key]), (part, key)
    a, b = (load_file(tmp_path / f"baked-{p}.safetensors") for p in ("fp32", "bf16"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with safe_open(tmp_path / "baked-bf16.safetensors", "pt") as f:  # the block weights went with the adapters
        baked_from = json.loads(f.metadata()["loramix_baked_from"])
    assert baked_from[0]["blocks"] == "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1"


def test_on_a_native_bf16_cpu_a_bf16_weight_is_fused_in_place_within_one_bf16_step(tiny_model, files, monkeypatch):
    """A bf16 mixer on a CPU that multiplies bf16 natively takes the low-rank product in place (`addmm` in bf16,
    accumulated in float32). Against the float32 sum that other CPUs round once, each weight is within one bf16
    step of itself plus one of the products it sums (the factors are rounded to bf16: the usual bound of a dot
    product, which matters where W + dW nearly cancels)."""
    fused, terms = {}, {}
    for native in (False, True):
        monkeypatch.setattr(cpu_features, "native_bf16", lambda native=native: native)
        mixer = Mixer.from_base(str(tiny_model), precision="bf16")
        mixer.set_blend([(files[0], 0.8, True), (files[1], -1.6, True)])
        with mixer.applied("fused"):
            fused[native] = {k: v.float().clone() for k, v in mixer.components.unet.state_dict().items()}
    names = {m: path for path, m in mixer.components.unet.named_modules()}
    for slot in mixer.slots.values():
        for layer in slot.layers:
            if layer.module in names:
                key = f"{names[layer.module]}.weight"
                up = (layer.up.flatten(1).float() * slot.coef(layer.component, layer) * layer.scale).abs()
                term = (up @ layer.down.flatten(1).float().abs()).reshape(fused[True][key].shape)
                terms[key] = terms.get(key, 0) + term
    assert terms
    changed = 0
    for key, slow in fused[False].items():
        fast = fused[True][key]
        step = (torch.maximum(slow.abs(), fast.abs()) + terms.get(key, 0)) * 2.0 ** -7
        assert ((fast - slow).abs() <= step).all(), key
        changed += int((fast != slow).any())
    assert changed > 0  # the in-place product was taken


def test_a_bakes_fp32_twin_holds_no_copies_of_the_base_and_bakes_the_same(tiny_model, files, tmp_path, monkeypatch):
    """A base whose originals are not on disk (a single-file or hub base; `originals="memory"` here): the fp32
    twin a bake loads fuses each module once and is dropped, so it holds no copies beside itself."""
    blend = [(files[0], 0.7, True), (files[1], -0.4, True)]
    reference = Mixer.from_base(str(tiny_model), precision="fp32", originals="memory")
    reference.set_blend(blend)
    reference.bake(tmp_path / "reference")
    seen, real = [], Mixer._bake
    monkeypatch.setattr(Mixer, "_bake", lambda self, *a: seen.append(self) or real(self, *a))
    mixer = Mixer.from_base(str(tiny_model), precision="bf16", originals="memory")
    mixer.set_blend(blend)
    out = mixer.bake(tmp_path / "baked")
    (twin,) = seen
    assert twin is not mixer and twin.dtype == torch.float32 and not twin._originals and twin.held_bytes() == 0
    a, b = (load_file(next((folder / "unet").glob("*.safetensors"))) for folder in (tmp_path / "reference", out))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_one_use_applier_refuses_a_second_rewrite_instead_of_adding_onto_a_fused_weight(tiny_model, files):
    mixer = Mixer.from_base(str(tiny_model), originals="memory", hold_originals=False)
    mixer.set_blend([(files[0], 0.7, True)])
    with mixer.applied("fused"):
        pass
    mixer.set_blend([(files[0], 0.2, True)])
    with pytest.raises(LoramixError, match="fused for one use"):
        with mixer.applied("fused"):
            pass


@pytest.mark.parametrize("native", [True, False])
def test_a_bf16_mixers_slider_steps_round_once_each_and_the_eighth_change_is_rewritten(tiny_model, files, monkeypatch,
                                                                                      native):
    """A slider change steps a bf16 weight in place, one more rounding each (within a bf16 step of the weight and of
    the product added); the 8th change since the last rewrite (`exact_every` for half precision) is rewritten from
    the original, bit for bit what a fresh mixer fuses."""
    monkeypatch.setattr(cpu_features, "native_bf16", lambda: native)

    def unet_weights(mixer):
        return {k: v.float().clone() for k, v in mixer.components.unet.state_dict().items()}

    def exact(weight):
        fresh = Mixer.from_base(str(tiny_model), precision="bf16")
        fresh.set_blend([(files[0], weight, True), (files[1], -1.6, True)])
        with fresh.applied("fused"):
            return unet_weights(fresh)

    mixer = Mixer.from_base(str(tiny_model), precision="bf16")
    mixer.set_blend([(files[0], 0.8, True), (files[1], -1.6, True)])
    with mixer.applied("fused"):
        pass
    slot = next(iter(mixer.slots.values()))
    names = {m: path for path, m in mixer.components.unet.named_modules()}
    terms = {}  # what each step adds, in magnitude: the bound of a dot product of rounded factors
    weights = [0.8, 0.1, 1.3, -0.7, 0.5, 1.9, -1.2, 0.6]
    for before, after in zip(weights, weights[1:]):  # 7 changes: all steps
        for layer in slot.layers:
            if layer.module in names:
                key = f"{names[layer.module]}.weight"
                up = (layer.up.flatten(1).float() * abs(after - before) * layer.scale).abs()
                terms[key] = terms.get(key, 0) + (up @ layer.down.flatten(1).float().abs()).reshape(
                    layer.module.weight.shape)
        mixer.set_weight(slot, after)
        with mixer.applied("fused"):
            pass
    stepped, want = unet_weights(mixer), exact(weights[-1])
    changed = 0
    for key, w in want.items():
        bound = 8 * 2.0 ** -8 * torch.maximum(w.abs(), stepped[key].abs()) + 2.0 ** -6 * terms.get(key, 0)
        assert ((stepped[key] - w).abs() <= bound).all(), key
        changed += int(not torch.equal(stepped[key], w))
    assert changed > 0  # the steps rounded differently from one rewrite
    mixer.set_weight(slot, 0.3)  # the 8th change
    with mixer.applied("fused"):
        now = unet_weights(mixer)
    want = exact(0.3)
    assert all(torch.equal(now[k], w) for k, w in want.items())
