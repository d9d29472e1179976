"""train.mixed_precision=auto (the default): bf16 where the CPU multiplies bf16 natively and the base is full-size,
fp32 for the tiny models, on other CPUs and on GPUs."""

from __future__ import annotations

import json

import pytest

from loramix.core import cpu_features
from loramix.core.config import LoramixConfig
from trainers.speed import resolve_precision


@pytest.fixture
def sd_sized(tmp_path):
    """A folder whose UNet config is SD 1.5's (no weights: nothing is loaded to decide)."""
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": 768}))
    return str(tmp_path)


@pytest.mark.parametrize("native, cuda, want", [(True, False, "bf16"), (False, False, "no"), (True, True, "no")])
def test_auto_follows_the_cpu_for_a_full_size_base(monkeypatch, sd_sized, native, cuda, want):
    monkeypatch.setattr(cpu_features, "native_bf16", lambda: native)
    monkeypatch.setattr("torch.cuda.is_available", lambda: cuda)
    assert resolve_precision("auto", sd_sized) == want
    assert resolve_precision("auto", "someone/a-hub-model") == want  # a hub id: assumed full-size
    for given in ("no", "fp16", "bf16"):
        assert resolve_precision(given, sd_sized) == given


def test_auto_keeps_the_tiny_models_in_fp32_even_on_a_bf16_cpu(monkeypatch, tiny_model, tmp_path):
    monkeypatch.setattr(cpu_features, "native_bf16", lambda: True)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert resolve_precision("auto", "") == "no"  # the embedded demo model: 0.7x in bf16
    assert resolve_precision("auto", str(tiny_model)) == "no"
    tiny_xl = tmp_path / "tiny-xl"  # an SDXL-layout test model is toy-sized too
    (tiny_xl / "unet").mkdir(parents=True)
    (tiny_xl / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": 80,
                                                             "addition_embed_type": "text_time"}))
    assert resolve_precision("auto", str(tiny_xl)) == "no"


def test_auto_is_the_default():
    assert LoramixConfig().train.mixed_precision == "auto"
