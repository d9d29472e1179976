import pytest

from loramix.core.errors import LoramixError
from loramix.formats.base_model import load_base_model
from loramix.formats.families import SD2Family, SDXLFamily, TinyFamily, detect_family


def test_family_detection_from_unet_config():
    assert detect_family({"cross_attention_dim": 768}).name == "sd1"
    assert isinstance(detect_family({"cross_attention_dim": 1024}), SD2Family)
    assert isinstance(detect_family({"cross_attention_dim": 2048, "addition_embed_type": "text_time"}), SDXLFamily)
    assert isinstance(detect_family({"cross_attention_dim": 32}), TinyFamily)
    with pytest.raises(LoramixError, match="not a supported family"):
        detect_family({"cross_attention_dim": 4096, "addition_embed_type": "image"})


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at call time
    with pytest.raises(LoramixError, match="cannot load 'someone/no-such-model'.*network connection"):
        load_base_model("someone/no-such-model")


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(LoramixError, match="is not a diffusers model folder"):
        load_base_model(str(tmp_path))
