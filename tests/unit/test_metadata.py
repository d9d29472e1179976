"""Metadata that A1111 / civitai show, as kohya writes it: sshs_* hashes, modelspec.*, ss_base_model_version."""

from __future__ import annotations

import datetime
import hashlib
import json
import struct
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

from loramix.core.config import load_config
from loramix.formats.families import Components, ModelFamily, SD2Family, SDXLFamily
from loramix.formats.lora_io import LoraAdapter, LoraLayer, file_hashes, modelspec, read_lora, save_lora
from loramix.mix.merge import Source, merge_concat, merge_svd
from trainers.checkpoint import adapter_metadata


def _meta(path):
    with safe_open(str(path), framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def _addnet_hash_safetensors(data: bytes) -> str:
    """sd-webui-additional-networks' `addnet_hash_safetensors`, written out: SHA-256 of all bytes after the header."""
    (n,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + n:]).hexdigest()


def test_model_hash_of_a_known_file_by_hand(tmp_path):
    # one fp32 tensor [1, 2, 3, 4]: the data section is exactly its 16 little-endian bytes
    adapter = LoraAdapter({"lora_unet_a": LoraLayer(torch.ones(1, 1), torch.ones(1, 1), 1.0)}, {"ss_x": "y"})
    tensors = {"t": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    assert file_hashes(tensors, {})["sshs_model_hash"] == hashlib.sha256(struct.pack("<4f", 1, 2, 3, 4)).hexdigest()
    # and in a saved file the stored hash is what A1111 recomputes from the file itself
    path = save_lora(tmp_path / "a.safetensors", adapter, "fp32")
    meta, _ = _meta(path)
    assert meta["sshs_model_hash"] == _addnet_hash_safetensors(path.read_bytes())


def test_legacy_hash_follows_kohyas_algorithm(tmp_path):
    """kohya hashes the file as written with only the ss_* metadata; the legacy hash reads 64 KiB at 1 MiB."""
    torch.manual_seed(0)
    layer = LoraLayer(torch.randn(8, 40000), torch.randn(40, 8), 8.0)  # > 1.1 MB in fp32
    meta = {"ss_network_dim": "8", "ss_output_name": "x", "modelspec.title": "not hashed", "loramix_config": "{}"}
    path = save_lora(tmp_path / "big.safetensors", LoraAdapter({"lora_unet_a": layer}, meta), "fp32")
    stored, tensors = _meta(path)
    by_hand = save(tensors, {k: v for k, v in stored.items() if k.startswith("ss_")})
    assert len(by_hand) > 0x110000
    assert stored["sshs_legacy_hash"] == hashlib.sha256(by_hand[0x100000:0x110000]).hexdigest()[:8]
    assert stored["sshs_model_hash"] == _addnet_hash_safetensors(by_hand) == _addnet_hash_safetensors(path.read_bytes())
    # non-ss metadata is not hashed: editing it later keeps both hashes
    assert file_hashes(tensors, {**stored, "modelspec.title": "renamed"}) == \
        {k: stored[k] for k in ("sshs_model_hash", "sshs_legacy_hash")}
    assert file_hashes(tensors, {**stored, "ss_output_name": "a much longer output name"})["sshs_legacy_hash"] != stored["sshs_legacy_hash"]


def test_a_stale_hash_in_the_metadata_is_replaced(tmp_path):
    adapter = LoraAdapter({"lora_unet_a": LoraLayer(torch.ones(2, 4), torch.ones(4, 2), 2.0)},
                          {"sshs_model_hash": "stale", "sshs_legacy_hash": "stale"})
    meta, _ = _meta(save_lora(tmp_path / "a.safetensors", adapter, "fp16"))
    assert meta["sshs_model_hash"] == _addnet_hash_safetensors((tmp_path / "a.safetensors").read_bytes())
    assert meta["sshs_legacy_hash"] != "stale"


# ---- ss_base_model_version and modelspec -------------------------------------------------------------
def _components(family, prediction_type):
    scheduler = SimpleNamespace(config=SimpleNamespace(prediction_type=prediction_type))
    return Components(family=family, source="x", unet=None, vae=None, text_encoder=None, tokenizer=None,
                      noise_scheduler=scheduler)


@pytest.mark.parametrize("family, prediction, version", [
    (SD2Family, "v_prediction", "sd_v2_v"), (SD2Family, "epsilon", "sd_v2"), (ModelFamily, "epsilon", "sd_v1"),
    (ModelFamily, "v_prediction", "sd_v1_v"), (SDXLFamily, "v_prediction", "sdxl_base_v1-0"),
])
def test_base_model_version_as_kohya_writes_it(family, prediction, version):
    assert _components(family(), prediction).family.base_model_version == version


def test_a_family_class_is_not_changed_by_a_load():
    _components(SD2Family, "v_prediction")  # a class by mistake: the registry's classes stay as they are
    assert SD2Family.prediction_type == "epsilon" and SD2Family().base_model_version == "sd_v2"


def _adapter_meta(family, *overrides):
    cfg = load_config(overrides=["output.output_name=my-style", "dataset.resolution=768", *overrides])
    return adapter_metadata(cfg, family, step=10, epoch=1, num_images=4, tag_frequency={}, started_at=0.0)


def test_adapter_metadata_for_v_prediction_sd2():
    meta = _adapter_meta(_components(SD2Family(), "v_prediction").family)
    assert meta["ss_base_model_version"] == "sd_v2_v" and meta["ss_v2"] == "True"
    assert meta["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert meta["modelspec.implementation"] == "diffusers"
    assert meta["modelspec.prediction_type"] == "v"
    assert meta["modelspec.resolution"] == "768x768"
    assert meta["modelspec.title"] == "my-style"
    assert meta["modelspec.sai_model_spec"] == "1.0.1"
    finished = float(meta["ss_training_finished_at"])
    assert meta["modelspec.date"] == datetime.datetime.fromtimestamp(int(finished)).isoformat()
    assert all(isinstance(v, str) for v in meta.values())


def test_adapter_metadata_for_sdxl_names_the_stability_implementation():
    meta = _adapter_meta(_components(SDXLFamily(), "epsilon").family)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_v2"] == "False"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert meta["modelspec.prediction_type"] == "epsilon"


def test_disabled_options_are_written_as_kohya_writes_them():
    """kohya's --noise_offset and --min_snr_gamma default to None, and its metadata is str(value)."""
    off = _adapter_meta(ModelFamily())
    assert off["ss_noise_offset"] == "None" and off["ss_min_snr_gamma"] == "None"
    on = _adapter_meta(ModelFamily(), "train.noise_offset=0.05", "train.min_snr_gamma=5")
    assert on["ss_noise_offset"] == "0.05" and on["ss_min_snr_gamma"] == "5.0"


def test_unknown_base_gets_no_modelspec():
    assert modelspec("", "t", 0) == {} and modelspec("something_else", "t", 0) == {}


# ---- merges carry ss_v2, modelspec and the hashes -------------------------------------------------------
def _source(name, version, seed):
    torch.manual_seed(seed)
    layers = {"lora_unet_a": LoraLayer(torch.randn(2, 8), torch.randn(8, 2), 2.0)}
    meta = {"ss_base_model_version": version, "modelspec.title": f"{name} title", "modelspec.resolution": "768x768"}
    return Source(name, LoraAdapter(layers, meta), 0.5)


@pytest.mark.parametrize("merge", [merge_concat, lambda s: merge_svd(s, 2)])
def test_merged_file_carries_ss_v2_modelspec_and_hashes(tmp_path, merge):
    adapter, _ = merge([_source("one", "sd_v2_v", 0), _source("two", "sd_v2_v", 1)])
    path = save_lora(tmp_path / "m.safetensors", adapter, "fp16")
    meta, _ = _meta(path)
    assert meta["ss_v2"] == "True" and meta["ss_base_model_version"] == "sd_v2_v"
    assert meta["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert meta["modelspec.prediction_type"] == "v" and meta["modelspec.resolution"] == "768x768"
    assert meta["modelspec.merged_from"] == "one title, two title"
    assert meta["sshs_model_hash"] == _addnet_hash_safetensors(path.read_bytes())
    assert len(meta["sshs_legacy_hash"]) == 8
    assert json.loads(meta["loramix_merge_sources"])[0]["name"] == "one"
    assert read_lora(path).metadata["ss_v2"] == "True"


def test_merge_of_sd1_files_says_not_v2(tmp_path):
    adapter, _ = merge_concat([_source("one", "sd_v1", 0)])
    assert adapter.metadata["ss_v2"] == "False"
    assert adapter.metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"


# ---- bakes carry ss_v2, modelspec, the hashes and what was baked in -------------------------------------
def test_baked_single_file_carries_identification_hashes_and_what_was_baked_in(tmp_path, tiny_model):
    from loramix.mix.mixer import Mixer
    from tests.conftest import random_lora

    a = random_lora(tiny_model, tmp_path / "a.safetensors", seed=1)
    b = random_lora(tiny_model, tmp_path / "b.safetensors", seed=2, text=True)
    mixer = Mixer.from_base(str(tiny_model), device="cpu")
    mixer.load(a, weight=0.6)
    mixer.load(b, weight=-0.8, te_weight=0.3)
    mixer.load(a, name="off", weight=1.0)
    mixer.slots["off"].enabled = False  # a disabled adapter is not baked in, so not named
    path = tmp_path / "baked.safetensors"
    mixer.bake(tmp_path / "baked", single_file=path)

    meta, tensors = _meta(path)
    assert meta["ss_base_model_version"] == "loramix_tiny" and meta["ss_v2"] == "False"
    # the hashes, recomputed here from the file as kohya's precalculate_safetensors_hashes does
    by_hand = save(tensors, {k: v for k, v in meta.items() if k.startswith("ss_")})
    assert len(by_hand) > 0x110000  # the legacy hash reads real bytes
    assert meta["sshs_model_hash"] == _addnet_hash_safetensors(by_hand) == _addnet_hash_safetensors(path.read_bytes())
    assert meta["sshs_legacy_hash"] == hashlib.sha256(by_hand[0x100000:0x110000]).hexdigest()[:8]
    assert meta["modelspec.sai_model_spec"] == "1.0.1"
    assert meta["modelspec.architecture"] == "loramix-tiny"  # a checkpoint, not ".../lora"
    assert meta["modelspec.title"] == "baked" and meta["modelspec.resolution"] == "64x64"
    assert meta["modelspec.prediction_type"] == "epsilon"
    assert abs(datetime.datetime.fromisoformat(meta["modelspec.date"]) - datetime.datetime.now()).total_seconds() < 600
    assert meta["modelspec.merged_from"] == f"{tiny_model.name}, a, b"
    assert json.loads(meta["loramix_baked_from"]) == [
        {"name": "a", "file": "a.safetensors", "weight": 0.6, "te_weight": None, "blocks": None},
        {"name": "b", "file": "b.safetensors", "weight": -0.8, "te_weight": 0.3, "blocks": None}]


def kohya_determine_implementation(lora: bool, textual_inversion: bool, sdxl: bool,
                                   is_stable_diffusion_ckpt: bool | None = None) -> str:
    """kohya sd-scripts `library/sai_model_spec.py` (commit 48d368f), `build_metadata_dataclass`'s default for
    `is_stable_diffusion_ckpt` and `determine_implementation` for SD 1.x / 2.x / SDXL (retyped)."""
    if not lora and not textual_inversion and is_stable_diffusion_ckpt is None:
        is_stable_diffusion_ckpt = True
    if (lora and sdxl) or textual_inversion or is_stable_diffusion_ckpt:
        return "https://github.com/Stability-AI/generative-models"
    return "diffusers"


@pytest.mark.parametrize("version", ["sd_v1", "sd_v1_v", "sd_v2", "sd_v2_v", "sdxl_base_v1-0"])
@pytest.mark.parametrize("lora", [True, False])
def test_modelspec_implementation_is_kohyas_for_loras_and_checkpoints(version, lora):
    """A baked SD 1.x / 2.x single-file checkpoint names the Stability implementation, a LoRA for them diffusers."""
    ours = modelspec(version, "t", 0, lora=lora)["modelspec.implementation"]
    assert ours == kohya_determine_implementation(lora, False, version.startswith("sdxl"))
