import pytest
import torch
from safetensors.torch import save_file

from loramix.core.errors import AdapterFormatError
from loramix.formats.lora_io import (
    LoraAdapter,
    LoraLayer,
    from_peft,
    kohya_name,
    module_table,
    read_lora,
    save_lora,
)


def test_kohya_names_follow_sd_scripts():
    assert kohya_name("lora_unet", "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_out.0") == \
        "lora_unet_down_blocks_0_attentions_1_transformer_blocks_0_attn2_to_out_0"
    assert kohya_name("lora_te", "text_model.encoder.layers.3.self_attn.q_proj") == \
        "lora_te_text_model_encoder_layers_3_self_attn_q_proj"


def test_from_peft_pairs_a_and_b():
    peft = {"mid.attn.to_q.lora_A.weight": torch.ones(2, 5), "mid.attn.to_q.lora_B.weight": torch.zeros(7, 2)}
    layers = from_peft(peft, "lora_unet", alpha=1.0)
    assert list(layers) == ["lora_unet_mid_attn_to_q"]
    assert layers["lora_unet_mid_attn_to_q"].rank == 2 and layers["lora_unet_mid_attn_to_q"].scale == 0.5


def test_delta_linear_and_conv():
    down, up = torch.randn(4, 6), torch.randn(3, 4)
    assert torch.allclose(LoraLayer(down, up, 2.0).delta(), up @ down * 0.5)
    cdown, cup = torch.randn(4, 6, 3, 3), torch.randn(5, 4, 1, 1)
    d = LoraLayer(cdown, cup, 4.0).delta()
    assert d.shape == (5, 6, 3, 3)
    ref = torch.nn.functional.conv2d(torch.nn.functional.conv2d(torch.ones(1, 6, 3, 3), cdown), cup)
    assert torch.allclose(torch.nn.functional.conv2d(torch.ones(1, 6, 3, 3), d), ref, atol=1e-5)


def test_save_read_round_trip_keeps_values_and_metadata(tmp_path):
    layers = {"lora_unet_a_to_q": LoraLayer(torch.randn(4, 8), torch.randn(8, 4), 2.0)}
    path = save_lora(tmp_path / "x.safetensors", LoraAdapter(layers, {"ss_network_dim": "4"}), dtype="fp32")
    back = read_lora(path)
    assert back.metadata["ss_network_dim"] == "4"
    assert torch.equal(back.layers["lora_unet_a_to_q"].down, layers["lora_unet_a_to_q"].down)
    assert torch.equal(back.layers["lora_unet_a_to_q"].up, layers["lora_unet_a_to_q"].up)
    assert back.layers["lora_unet_a_to_q"].alpha == 2.0
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_pickle_and_foreign_files_are_refused(tmp_path):
    ckpt = tmp_path / "evil.ckpt"
    ckpt.write_bytes(b"\x80\x04")
    with pytest.raises(AdapterFormatError, match="evil.ckpt: pickle files .* can run code"):
        read_lora(ckpt)
    other = tmp_path / "model.safetensors"
    save_file({"conv.weight": torch.zeros(2)}, str(other))
    with pytest.raises(AdapterFormatError, match="no LoRA layers found"):
        read_lora(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"0123456789")
    with pytest.raises(AdapterFormatError, match="junk.safetensors: not a readable safetensors"):
        read_lora(junk)


def test_module_table_maps_kohya_names_back():
    model = torch.nn.Sequential()
    model.add_module("to_out", torch.nn.ModuleList([torch.nn.Linear(2, 2)]))
    assert module_table(model, "lora_unet")["lora_unet_to_out_0"] == "to_out.0"


def test_pickle_allowed_explicitly_uses_weights_only(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"lora_unet_a_to_q.lora_down.weight": torch.ones(2, 3),
                "lora_unet_a_to_q.lora_up.weight": torch.ones(4, 2)}, path)
    adapter = read_lora(path, allow_unsafe=True)
    assert adapter.layers["lora_unet_a_to_q"].rank == 2


def test_peft_and_old_diffusers_layouts_become_kohya_names(tmp_path):
    peft = {"unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_A.weight": torch.ones(2, 8),
            "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_B.weight": torch.ones(8, 2),
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 4),
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(4, 2)}
    save_file(peft, str(tmp_path / "peft.safetensors"))
    layers = read_lora(tmp_path / "peft.safetensors").layers
    assert set(layers) == {"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_out_0",
                           "lora_te_text_model_encoder_layers_0_self_attn_q_proj"}
    assert layers["lora_te_text_model_encoder_layers_0_self_attn_q_proj"].scale == 1.0  # no alpha: alpha = rank
    old = {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight": torch.ones(2, 8),
           "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.up.weight": torch.ones(8, 2)}
    save_file(old, str(tmp_path / "old.safetensors"))
    assert list(read_lora(tmp_path / "old.safetensors").layers) == [
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"]


def test_guess_architecture_from_metadata_names_and_shapes():
    def adapter(name, width, meta=None):
        return LoraAdapter({name: LoraLayer(torch.zeros(4, width), torch.zeros(320, 4), 4.0)}, meta or {})

    from loramix.formats.lora_io import guess_architecture

    k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    assert guess_architecture(adapter(k, 768)) == "SD 1.x"
    assert guess_architecture(adapter(k, 1024)) == "SD 2.x"
    assert guess_architecture(adapter("lora_te1_text_model_x", 768)) == "SDXL"
    assert guess_architecture(adapter(k, 768, {"ss_base_model_version": "sdxl_base_v1-0"})) == "SDXL"

