"""Non-finite numbers never enter or leave a LoRA file (issue 12): read refuses, save refuses or widens."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from loramix.core.errors import AdapterFormatError
from loramix.formats.lora_io import LohaLayer, LoraAdapter, LoraLayer, read_lora, save_lora
from loramix.mix.merge import Source, merge_svd


def _kohya(path, **bad):
    """A two-layer kohya file; `bad` maps a key to a value planted in its first element."""
    torch.manual_seed(0)
    tensors = {}
    for layer in ("lora_unet_a_to_q", "lora_unet_b_to_k"):
        tensors[f"{layer}.lora_down.weight"] = torch.randn(2, 8)
        tensors[f"{layer}.lora_up.weight"] = torch.randn(8, 2)
        tensors[f"{layer}.alpha"] = torch.tensor(2.0)
    for key, value in bad.items():
        key = key.replace("__", ".")
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = value
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("key, value", [
    ("lora_unet_b_to_k__lora_up__weight", float("nan")),
    ("lora_unet_a_to_q__lora_down__weight", float("inf")),
    ("lora_unet_b_to_k__alpha", float("nan")),
    ("lora_unet_a_to_q__alpha", float("-inf")),
])
def test_read_refuses_a_non_finite_tensor_naming_file_and_key(tmp_path, key, value):
    path = _kohya(tmp_path / "broken.safetensors", **{key: value})
    with pytest.raises(AdapterFormatError) as err:
        read_lora(path)
    message = str(err.value)
    assert message.startswith("broken.safetensors: ") and key.replace("__", ".") in message
    assert "NaN or infinite" in message


def test_read_names_the_first_bad_key_in_file_order(tmp_path):
    path = _kohya(tmp_path / "two.safetensors", lora_unet_b_to_k__lora_up__weight=float("nan"),
                  lora_unet_a_to_q__lora_up__weight=float("inf"))
    with pytest.raises(AdapterFormatError, match=r"lora_unet_a_to_q\.lora_up\.weight"):
        read_lora(path)


def test_read_refuses_a_non_finite_lycoris_layer(tmp_path):
    t = {"lora_unet_x.hada_w1_a": torch.ones(4, 2), "lora_unet_x.hada_w1_b": torch.ones(2, 4),
         "lora_unet_x.hada_w2_a": torch.ones(4, 2), "lora_unet_x.hada_w2_b": torch.full((2, 4), float("nan")),
         "lora_unet_x.alpha": torch.tensor(1.0)}
    save_file(t, str(tmp_path / "h.safetensors"))
    with pytest.raises(AdapterFormatError, match=r"h\.safetensors: lora_unet_x\.hada_w2_b holds NaN"):
        read_lora(tmp_path / "h.safetensors")


def test_a_finite_file_still_reads(tmp_path):
    assert len(read_lora(_kohya(tmp_path / "ok.safetensors")).layers) == 2


def test_the_mixer_refuses_it_before_binding(tmp_path):
    """Mixer.load is the way in for previews, the Mix tab and bake; the file is refused before any model work."""
    from loramix.mix.mixer import Mixer

    path = _kohya(tmp_path / "nan.safetensors", lora_unet_b_to_k__alpha=float("nan"))
    with pytest.raises(AdapterFormatError, match=r"nan\.safetensors: lora_unet_b_to_k\.alpha holds NaN"):
        Mixer(components=None).load(path)


def test_cli_merge_refuses_it_and_writes_nothing(tmp_path, capsys):
    from loramix.cli import main

    bad = _kohya(tmp_path / "bad.safetensors", lora_unet_a_to_q__lora_up__weight=float("nan"))
    good = _kohya(tmp_path / "good.safetensors")
    out = tmp_path / "merged.safetensors"
    assert main(["merge", "--lora", str(good), "--lora", f"{bad}:0.5", "--out", str(out)]) == 2
    assert "bad.safetensors: lora_unet_a_to_q.lora_up.weight holds NaN" in capsys.readouterr().err
    assert not out.exists()


# ---- save ------------------------------------------------------------------------------------------
def _adapter(**layers):
    return LoraAdapter(layers, {"ss_network_module": "networks.lora"})


def test_save_refuses_a_non_finite_tensor_naming_the_layer(tmp_path):
    up = torch.ones(8, 2)
    up[3, 1] = float("nan")
    adapter = _adapter(lora_unet_fine=LoraLayer(torch.ones(2, 8), torch.ones(8, 2), 2.0),
                       lora_unet_broken=LoraLayer(torch.ones(2, 8), up, 2.0))
    with pytest.raises(AdapterFormatError, match=r"Not saving out\.safetensors: layer lora_unet_broken "
                                                 r"\(lora_unet_broken\.lora_up\.weight\) holds NaN"):
        save_lora(tmp_path / "out.safetensors", adapter, "fp16")
    assert not (tmp_path / "out.safetensors").exists()


def test_save_refuses_an_infinite_alpha(tmp_path):
    adapter = _adapter(lora_unet_a=LoraLayer(torch.ones(2, 8), torch.ones(8, 2), float("inf")))
    with pytest.raises(AdapterFormatError, match="lora_unet_a.alpha"):
        save_lora(tmp_path / "out.safetensors", adapter, "fp32")


def test_save_refuses_a_non_finite_loha_factor(tmp_path):
    w = torch.ones(4, 2)
    adapter = _adapter(lora_unet_h=LohaLayer(w, torch.ones(2, 4), w * float("inf"), torch.ones(2, 4), 2.0))
    with pytest.raises(AdapterFormatError, match=r"layer lora_unet_h \(lora_unet_h\.hada_w2_a\)"):
        save_lora(tmp_path / "out.safetensors", adapter, "bf16")


def test_fp16_overflow_is_saved_in_fp32_with_a_warning(tmp_path, caplog):
    big = torch.ones(8, 2)
    big[0, 0] = 1e6  # beyond fp16's 65504
    adapter = _adapter(lora_unet_small=LoraLayer(torch.ones(2, 8) * 0.5, torch.ones(8, 2), 2.0),
                       lora_unet_big=LoraLayer(torch.ones(2, 8), big, 2.0))
    warnings: list[str] = []
    with caplog.at_level(logging.WARNING, logger="loramix.formats.lora_io"):
        path = save_lora(tmp_path / "wide.safetensors", adapter, "fp16", warnings=warnings)
    assert path == tmp_path / "wide.safetensors"
    with safe_open(str(path), framework="pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}
        assert f.get_tensor("lora_unet_big.lora_up.weight")[0, 0].item() == 1e6
    assert dtypes["lora_unet_big.lora_up.weight"] == torch.float32
    assert dtypes["lora_unet_big.lora_down.weight"] == torch.float16  # only the overflowing tensor widens
    assert dtypes["lora_unet_small.lora_up.weight"] == torch.float16
    assert len(warnings) == 1 and "wide.safetensors" in warnings[0] and "lora_unet_big" in warnings[0]
    assert any("lora_unet_big" in r.getMessage() and "wide.safetensors" in r.getMessage() for r in caplog.records)
    back = read_lora(path)  # and the file is finite, so it reads
    assert torch.equal(back.layers["lora_unet_big"].up.float(), big)


def test_bf16_holds_what_fp16_cannot(tmp_path):
    adapter = _adapter(lora_unet_a=LoraLayer(torch.ones(2, 8), torch.full((8, 2), 1e6), 2.0))
    warnings: list[str] = []
    save_lora(tmp_path / "b.safetensors", adapter, "bf16", warnings=warnings)
    assert warnings == []
    with safe_open(str(tmp_path / "b.safetensors"), framework="pt") as f:
        assert f.get_tensor("lora_unet_a.lora_up.weight").dtype == torch.bfloat16


def test_merge_of_a_good_file_saves_finite(tmp_path):
    adapter = read_lora(_kohya(tmp_path / "ok.safetensors"))
    merged, _ = merge_svd([Source("ok", adapter, 1.0)], rank=2)
    path = save_lora(tmp_path / "m.safetensors", merged, "fp16")
    assert all(torch.isfinite(layer.delta()).all() for layer in read_lora(path).layers.values())
