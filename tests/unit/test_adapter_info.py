"""The adapter card reads a file's own metadata (and its first down weight for the rank) without loading it."""

import json

import pytest
import torch
from safetensors.torch import save_file

from loramix.core.errors import AdapterFormatError
from loramix.formats.adapter_info import adapter_info


def test_card_shows_base_rank_alpha_trigger_tags_steps_resolution(tmp_path):
    meta = {"ss_base_model_version": "sd_v1", "ss_network_dim": "32", "ss_network_alpha": "16.0",
            "ss_steps": "1500", "ss_resolution": "(512, 512)",
            "ss_tag_frequency": json.dumps({"10_style": {"red": 3, "blue": 9, "star": 1}}),
            "loramix_config": json.dumps({"dataset": {"trigger_word": "pastelz"}})}
    path = tmp_path / "style.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(32, 4)}, str(path), metadata=meta)
    card = adapter_info(path).markdown()
    for text in ("sd_v1", "rank 32, alpha 16.0", "trigger **pastelz**", "1500 steps at 512 px", "tags: blue, red, star"):
        assert text in card, card
    assert "last in the prompt" not in card
    meta["loramix_config"] = json.dumps({"dataset": {"trigger_word": "style", "trigger_position": "end"}})
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(32, 4)}, str(path), metadata=meta)
    assert "trigger **style**, last in the prompt" in adapter_info(path).markdown()


def test_rank_comes_from_the_weights_when_the_metadata_lacks_it(tmp_path):
    path = tmp_path / "bare.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(8, 4)}, str(path))
    info = adapter_info(path)
    assert info.rank == "8" and info.base == "unknown"


def test_lycoris_files_name_their_algorithm(tmp_path):
    path = tmp_path / "loha.safetensors"
    save_file({"lora_unet_x.hada_w1_a": torch.zeros(4, 2)}, str(path),
              metadata={"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"algo": "loha"})})
    assert adapter_info(path).network == "LoHa"


def test_a_broken_file_is_one_sentence(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\xff" * 20)
    with pytest.raises(AdapterFormatError, match="broken.safetensors: not a readable safetensors file"):
        adapter_info(path)


def test_card_names_the_best_validation_step(tmp_path):
    path = tmp_path / "v.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 4)}, str(path),
              metadata={"loramix_best_validation_step": "400"})
    assert "best validation at step 400" in adapter_info(path).markdown()
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 4)}, str(path))
    assert "best validation" not in adapter_info(path).markdown()
