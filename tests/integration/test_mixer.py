"""The mixer on a tiny random model: blends against diffusers' own set_adapters, fusing, merging, refusals."""

from __future__ import annotations

import shutil

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from loramix.core.errors import AdapterFormatError, LoramixError
from loramix.embedded.tiny import build_tiny_model
from loramix.formats import lora_io
from loramix.formats.base_model import load_base_model
from loramix.formats.lora_io import LoraAdapter, LoraLayer, read_lora, save_lora
from loramix.mix.merge import blend_delta, merge_concat, merge_svd
from loramix.mix.mixer import Mixer, PreviewRequest
from loramix.mix.xy_grid import Axis, xy_grid
from tests.conftest import WORDS, random_lora, unet_out


@pytest.fixture(scope="module")
def files(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {"a": random_lora(tiny_model, root / "a.safetensors", 1, text=True),
            "b": random_lora(tiny_model, root / "b.safetensors", 2, rank=8, alpha=8.0, conv=True),
            "c": random_lora(tiny_model, root / "c.safetensors", 3, rank=2)}


@pytest.fixture
def mixer(tiny_model):
    return Mixer.from_base(str(tiny_model))


REQ = PreviewRequest("red stripes", seed=3, steps=4, cfg_scale=5.0)


def test_blend_matches_diffusers_set_adapters(mixer, files, tiny_model):
    mixer.load(files["a"], weight=0.7)
    mixer.load(files["b"], weight=-0.4)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    pipe.load_lora_weights(str(files["a"]), adapter_name="a")
    pipe.load_lora_weights(str(files["b"]), adapter_name="b")
    pipe.set_adapters(["a", "b"], adapter_weights=[0.7, -0.4])
    theirs = unet_out(pipe.unet)
    base = unet_out(mixer.components.unet)
    for mode in ("fused", "unfused"):
        with mixer.applied(mode):
            ours = unet_out(mixer.components.unet)
        # fp32 on CPU; the sums run in a different order in each implementation
        assert (ours - theirs).abs().max().item() < 1e-4, mode
    assert (theirs - base).abs().max().item() > 1e-2


def test_fused_and_unfused_previews_match_and_base_is_restored(mixer, files):
    before = {k: v.clone() for k, v in mixer.components.unet.state_dict().items()}
    te_before = {k: v.clone() for k, v in mixer.components.text_encoder.state_dict().items()}
    for name in "abc":
        mixer.load(files[name], weight=0.5)
    fused = torch.tensor(list(mixer.generate(REQ, mode="fused").getdata()), dtype=torch.float32)
    unfused = torch.tensor(list(mixer.generate(REQ, mode="unfused").getdata()), dtype=torch.float32)
    assert (fused - unfused).abs().max().item() <= 2  # 8-bit pixels; float sums differ in order only
    for k, v in mixer.components.unet.state_dict().items():
        assert torch.equal(v, before[k]), k  # bit-identical after unfusing
    for k, v in mixer.components.text_encoder.state_dict().items():
        assert torch.equal(v, te_before[k]), k


def _changed(a: list, b: list) -> tuple[float, float]:
    """The share of pixels that differ, and the mean absolute difference in 8-bit levels."""
    a, b = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    return float((a != b).any(-1).float().mean()), float((a - b).abs().mean())


def test_zero_weight_is_the_base_and_negative_weights_work(mixer, files):
    base = list(mixer.generate(REQ).getdata())
    mixer.load(files["a"], weight=0.0)
    assert list(mixer.generate(REQ).getdata()) == base
    mixer.set_weight("a", -1.5)
    negative = list(mixer.generate(REQ).getdata())
    mixer.set_weight("a", 1.5)
    positive = list(mixer.generate(REQ).getdata())
    # whole pictures change, not one pixel: most pixels differ, by more than a level on average
    for label, (a, b) in {"negative": (negative, base), "positive": (positive, base),
                          "negative vs positive": (negative, positive)}.items():
        share, mean = _changed(a, b)
        assert share > 0.5 and mean > 1.0, (label, share, mean)
    mixer.set_weight("a", 1.5, enabled=False)
    assert list(mixer.generate(REQ).getdata()) == base
    with pytest.raises(LoramixError, match="outside -2.0..2.0"):
        mixer.set_weight("a", 2.5)


def test_separate_text_encoder_weight(mixer, files):
    mixer.load(files["a"], weight=0.0, te_weight=1.0)
    ids = mixer.components.tokenizer(["red"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        base = mixer.components.text_encoder(ids)[0]
        with mixer.applied():
            text = mixer.components.text_encoder(ids)[0]
            unet_changed = unet_out(mixer.components.unet)
    assert not torch.equal(base, text)
    assert torch.equal(unet_changed, unet_out(mixer.components.unet))  # UNet weight 0: untouched


def test_weight_changes_read_no_file(mixer, files, monkeypatch):
    mixer.load(files["a"])
    mixer.load(files["b"])

    def no_disk(*a, **k):
        raise AssertionError("a weight change must not read from disk")

    monkeypatch.setattr(lora_io, "safe_open", no_disk)
    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", no_disk)
    mixer.set_weight("a", -0.3)
    mixer.set_weight("b", 1.2)
    mixer.generate(REQ)


def test_wrong_architecture_is_refused_with_the_reason(mixer, tmp_path):
    other = build_tiny_model(tmp_path / "other", words=WORDS, text_dim=48)  # 48-wide text conditioning
    path = random_lora(other, tmp_path / "wide.safetensors", 5)
    with pytest.raises(AdapterFormatError) as e:
        mixer.load(path)
    msg = str(e.value)
    assert msg.startswith("wide.safetensors was made for the loramix tiny model")
    assert "attn2_to_k (LoRA (32, 48) vs layer (32, 32))" in msg
    sdxl = {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj": LoraLayer(torch.ones(2, 768), torch.ones(768, 2), 2),
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k": LoraLayer(torch.ones(2, 2048),
                                                                                   torch.ones(640, 2), 2)}
    save_lora(tmp_path / "xl.safetensors", LoraAdapter(sdxl, {}), "fp16")
    with pytest.raises(AdapterFormatError, match=r"xl.safetensors was made for SDXL .* 2 of 2 layers do not match, "
                                                 r"first lora_te1_text_model_encoder_layers_0_self_attn_q_proj "
                                                 r"\(no such layer\)"):
        mixer.load(tmp_path / "xl.safetensors")
    assert not mixer.slots


def test_pickle_refused_unless_allowed(mixer, files, tmp_path):
    adapter = read_lora(files["c"])
    state = {}
    for n, layer in adapter.layers.items():
        state[f"{n}.lora_down.weight"], state[f"{n}.lora_up.weight"] = layer.down, layer.up
        state[f"{n}.alpha"] = torch.tensor(layer.alpha)
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(AdapterFormatError, match="c.pt: pickle files"):
        mixer.load(tmp_path / "c.pt")
    mixer.load(tmp_path / "c.pt", allow_unsafe=True)


def test_merges_reproduce_the_blend(files):
    from loramix.mix.merge import Source

    sources = [Source("a", read_lora(files["a"]), 0.8), Source("b", read_lora(files["b"]), -0.5, te_weight=0.3),
               Source("c", read_lora(files["c"]), 1.3)]
    exact, report = merge_concat(sources)
    names = sorted(set().union(*(s.adapter.layers for s in sources)))
    assert sorted(exact.layers) == names and report.relative_error == 0.0
    for n in names:
        assert torch.allclose(exact.layers[n].delta(), blend_delta(sources, n), atol=1e-6), n
    full, rep_full = merge_svd(sources, rank=4 + 8 + 2)
    assert rep_full.relative_error < 1e-5
    for n in names:
        assert torch.allclose(full.layers[n].delta(), blend_delta(sources, n), atol=1e-5), n
    low, rep_low = merge_svd(sources, rank=2)
    err = sum(float((low.layers[n].delta() - blend_delta(sources, n)).pow(2).sum()) for n in names)
    norm = sum(float(blend_delta(sources, n).pow(2).sum()) for n in names)
    assert rep_low.relative_error == pytest.approx((err / norm) ** 0.5, rel=1e-4)
    assert 0.01 < rep_low.relative_error < 1
    assert all(layer.rank <= 2 for layer in low.layers.values())


def test_merged_file_and_baked_model_match_the_blend(mixer, files, tmp_path):
    from loramix.mix.merge import merge_concat

    mixer.load(files["a"], weight=0.6)
    mixer.load(files["b"], weight=-0.8)
    with mixer.applied():
        blended = unet_out(mixer.components.unet)
    adapter, _ = merge_concat(mixer.sources())
    merged = save_lora(tmp_path / "merged.safetensors", adapter, "fp32")
    meta = read_lora(merged).metadata
    assert '"name": "a", "weight": 0.6' in meta["loramix_merge_sources"]
    mixer2 = Mixer.from_base(str(mixer.components.source))
    mixer2.load(merged)
    with mixer2.applied():
        assert (unet_out(mixer2.components.unet) - blended).abs().max().item() < 1e-4
    baked = mixer.bake(tmp_path / "baked", single_file=tmp_path / "baked.safetensors")
    unet = UNet2DConditionModel.from_pretrained(baked, subfolder="unet")
    assert (unet_out(unet) - blended).abs().max().item() < 1e-4
    shutil.copytree(baked / "tokenizer", tmp_path / "tokenizer")  # a single file carries no tokenizer
    single = load_base_model(str(tmp_path / "baked.safetensors"))
    assert single.family.name == "tiny"
    assert (unet_out(single.unet) - blended).abs().max().item() < 1e-4
    # Baking left the base as it was: every key of both models, once the fused cache is put back.
    mixer.restore()
    fresh = StableDiffusionPipeline.from_pretrained(mixer.components.source)
    for ours, theirs in ((mixer.components.unet, fresh.unet), (mixer.components.text_encoder, fresh.text_encoder)):
        ours, theirs = ours.state_dict(), theirs.state_dict()
        assert ours.keys() == theirs.keys()
        changed = [k for k in theirs if not torch.equal(ours[k], theirs[k])]
        assert changed == [], changed[:5]


def test_generate_refuses_a_bad_request_with_a_sentence(mixer):
    with pytest.raises(LoramixError, match="preview steps: 0 is not allowed"):
        mixer.generate(PreviewRequest("red", steps=0))
    with pytest.raises(LoramixError, match="preview width: 7 is not allowed"):
        mixer.generate(PreviewRequest("red", width=7, height=7))


def test_xy_grid_layout_and_restored_sliders(mixer, files):
    mixer.load(files["a"], weight=0.25)
    grid = xy_grid(mixer, REQ, Axis("weight", [-1.0, 0.0, 1.0], "a"), Axis("seed", [1, 2]))
    size = 128  # 64 px previews are shown enlarged 2x
    assert grid.size[0] >= 3 * size and grid.size[1] == 36 + 2 * size
    assert mixer.slots["a"].weight == 0.25
    left = grid.size[0] - 3 * size
    cells = [grid.crop((left + c * size, 36, left + (c + 1) * size, 36 + size)).tobytes() for c in range(3)]
    assert len(set(cells)) == 3


def test_set_blend_loads_once_and_drops_removed(mixer, files, monkeypatch):
    names = mixer.set_blend([(files["a"], 0.5, True), (files["b"], -1.0, True)])
    assert names == ["a", "b"]
    calls = []
    real = lora_io.read_lora
    monkeypatch.setattr("loramix.mix.mixer.read_lora", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert mixer.set_blend([(files["b"], 0.2, False), (files["c"], 1.0, True)]) == ["b", "c"]
    assert len(calls) == 1  # only c was read
    assert list(mixer.slots) == ["b", "c"] and mixer.slots["b"].weight == 0.2 and not mixer.slots["b"].enabled
    assert mixer.set_blend([(files["c"], 1.0, True), (files["c"], -1.0, True)]) == ["c", "c#2"]
