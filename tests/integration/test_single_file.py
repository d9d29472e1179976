"""Single-file (LDM layout) checkpoints: tiny SD1/SD2/SDXL-shaped models written, read back and compared,
the layout checked against diffusers' own single-file reader, and the UNet names on the real configs."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UNet2DConditionModel,
)
from diffusers.loaders import single_file_utils as reference
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from loramix.embedded.tiny import write_clip_tokenizer
from loramix.formats import single_file
from loramix.formats.ldm_layout import (
    TEXT_ENCODERS,
    text_encoder_state_to_ldm,
    unet_module_to_ldm,
    vae_state_to_ldm,
)
from loramix.formats.single_file import (
    CONFIG_DIR,
    CheckpointFormatError,
    detect_family,
    load_single_file,
    save_single_file,
)

VAE = dict(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
           up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1, norm_num_groups=8, latent_channels=4)
SD1_UNET = dict(sample_size=8, block_out_channels=[32, 64, 64, 64], layers_per_block=2, norm_num_groups=8,
                down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, cross_attention_dim=32, attention_head_dim=8)
SD2_UNET = dict(SD1_UNET, use_linear_projection=True, attention_head_dim=[4, 8, 8, 8])
SDXL_UNET = dict(sample_size=8, block_out_channels=[32, 64, 64], layers_per_block=2, norm_num_groups=8,
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                 transformer_layers_per_block=[1, 2, 3], attention_head_dim=[4, 8, 8], cross_attention_dim=80,
                 addition_embed_type="text_time", addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=24 + 6 * 8, use_linear_projection=True)


def real_config(family, name):
    config = json.loads((CONFIG_DIR / family / f"{name}.json").read_text())
    config.pop("_class_name")
    return config


def text_config(vocab, hidden=32, **kw):
    return dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=vocab, projection_dim=hidden, bos_token_id=0, eos_token_id=2, pad_token_id=1, **kw)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return write_clip_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer", ["red", "circle"])


def build(family, tokenizer_dir, seed=0, vocab=None):
    """Random-init components of a tiny model shaped like `family`, and the overrides that describe it."""
    torch.manual_seed(seed)
    vocab = vocab or len(CLIPTokenizer.from_pretrained(tokenizer_dir))
    unet = {"sd1": SD1_UNET, "sd2": SD2_UNET, "sdxl": SDXL_UNET}[family]
    te = text_config(vocab, hidden_act="gelu" if family == "sd2" else "quick_gelu")
    parts = {"unet": UNet2DConditionModel(**unet), "vae": AutoencoderKL(**VAE),
             "text_encoder": CLIPTextModel(CLIPTextConfig(**te))}
    overrides = {"unet": unet, "vae": VAE, "text_encoder": te}
    if family == "sdxl":
        te2 = text_config(vocab, hidden=48, hidden_act="gelu") | {"projection_dim": 24}
        parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**te2))
        overrides["text_encoder_2"] = te2
    parts["scheduler"] = {"sd1": PNDMScheduler, "sd2": DDIMScheduler, "sdxl": EulerDiscreteScheduler}[family](
        prediction_type="v_prediction" if family == "sd2" else "epsilon")
    return {k: v.eval() if hasattr(v, "eval") else v for k, v in parts.items()}, overrides


def strip_metadata(path):
    """A copy of the file as another tool would write it: same tensors, no loramix metadata."""
    foreign = path.with_name("foreign.safetensors")
    save_file(load_file(path), foreign)
    return foreign


@torch.no_grad()
def assert_same_outputs(a, b, family):
    """Bit-identical weights, and the same outputs. The outputs are compared to 1e-6, not bit for bit: with one
    thread (OMP_NUM_THREADS=1) torch picks other kernels for the loaded copy's memory layout, ~6e-7 apart."""
    for name in ("text_encoder", "text_encoder_2", "unet", "vae"):
        if name in a:
            sa, sb = a[name].state_dict(), b[name].state_dict()
            assert sa.keys() == sb.keys(), name
            for key in sa:
                assert torch.equal(sa[key], sb[key]), (name, key)
    _assert_same_outputs(a, b, family)


def _assert_same_outputs(a, b, family):
    torch.manual_seed(1)
    ids = torch.randint(0, a["text_encoder"].config.vocab_size, (2, 77))
    for name in ("text_encoder", "text_encoder_2"):
        if name in a:
            out_a, out_b = a[name](ids, output_hidden_states=True), b[name](ids, output_hidden_states=True)
            torch.testing.assert_close(out_a.hidden_states[-2], out_b.hidden_states[-2], rtol=0, atol=1e-6)
            torch.testing.assert_close(out_a[0], out_b[0], rtol=0, atol=1e-6)
            if name == "text_encoder_2":
                torch.testing.assert_close(out_a.text_embeds, out_b.text_embeds, rtol=0, atol=1e-6)
    latents = torch.randn(2, 4, 8, 8)
    context = torch.randn(2, 77, a["unet"].config.cross_attention_dim)
    extra = {}
    if family == "sdxl":
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn(2, 24), "time_ids": torch.randn(2, 6)}}
    torch.testing.assert_close(a["unet"](latents, 10, context, **extra).sample,
                               b["unet"](latents, 10, context, **extra).sample, rtol=0, atol=1e-6)
    torch.testing.assert_close(a["vae"].decode(latents).sample, b["vae"].decode(latents).sample, rtol=0, atol=1e-6)
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(a["vae"].encode(image).latent_dist.mean, b["vae"].encode(image).latent_dist.mean,
                               rtol=0, atol=1e-6)


# ---- round trips ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_save_then_load_gives_the_same_model(family, tokenizer_dir, tmp_path):
    parts, overrides = build(family, tokenizer_dir)
    path = save_single_file(parts, tmp_path / "model.safetensors", family)
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file was renamed over the target"
    loaded = load_single_file(path, tokenizer=tokenizer_dir, tokenizer_2=tokenizer_dir)  # configs from metadata
    assert_same_outputs(parts, loaded, family)
    assert type(loaded["scheduler"]) is type(parts["scheduler"])
    assert loaded["scheduler"].config.prediction_type == parts["scheduler"].config.prediction_type
    assert isinstance(loaded["tokenizer"], CLIPTokenizer)
    assert ("text_encoder_2" in loaded) == (family == "sdxl")


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_a_foreign_file_is_detected_and_read_with_config_overrides(family, tokenizer_dir, tmp_path):
    parts, overrides = build(family, tokenizer_dir)
    foreign = strip_metadata(save_single_file(parts, tmp_path / "model.safetensors", family))
    for name in ("tokenizer", "tokenizer_2"):  # the documented place: folders beside the checkpoint
        (tmp_path / name).mkdir()
        for f in tokenizer_dir.iterdir():
            (tmp_path / name / f.name).write_bytes(f.read_bytes())
    assert detect_family(load_file(foreign)) == family
    loaded = load_single_file(foreign, config_overrides=overrides)
    assert_same_outputs(parts, loaded, family)
    expected = "v_prediction" if family == "sd2" else "epsilon"  # sd2: from the `v_pred` marker key
    assert loaded["scheduler"].config.prediction_type == expected


def test_the_file_has_the_ldm_layout_diffusers_itself_reads(tokenizer_dir, tmp_path):
    """diffusers' single-file converters, an independent reader, give back the original tensors."""
    for family in ("sd1", "sd2", "sdxl"):
        parts, _ = build(family, tokenizer_dir)
        ckpt = load_file(save_single_file(parts, tmp_path / f"{family}.safetensors", family))
        got = {"unet": reference.convert_ldm_unet_checkpoint(ckpt, dict(parts["unet"].config)),
               "vae": reference.convert_ldm_vae_checkpoint(ckpt, dict(parts["vae"].config))}
        if family == "sd2":
            got["text_encoder"] = reference.convert_open_clip_checkpoint(parts["text_encoder"], ckpt)
        else:
            got["text_encoder"] = reference.convert_ldm_clip_checkpoint(ckpt)
        if family == "sdxl":
            got["text_encoder_2"] = reference.convert_open_clip_checkpoint(
                parts["text_encoder_2"], ckpt, prefix="conditioner.embedders.1.model.")
        for name, state in got.items():
            state = {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}
            want = {k.removeprefix("text_model."): v for k, v in parts[name].state_dict().items()}
            assert set(state) == set(want), (family, name, set(state) ^ set(want))
            for k, v in want.items():
                assert torch.equal(state[k], v), (family, name, k)
    assert "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight" in load_file(
        tmp_path / "sd1.safetensors")
    xl = load_file(tmp_path / "sdxl.safetensors")
    assert "model.diffusion_model.input_blocks.7.1.transformer_blocks.2.attn1.to_q.weight" in xl
    assert "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight" in xl
    assert xl["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4


# ---- UNet module names on the real configs (what kohya's SDXL LoRA keys are built from) ------------
def real_unet_modules(family):
    config = real_config(family, "unet")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    leaves = [n for n, m in unet.named_modules() if list(m.parameters(recurse=False))]
    return unet.config, leaves, list(unet.state_dict())


@functools.cache
def read_by_diffusers(family):
    """LDM parameter name -> the diffusers name that diffusers' own single-file reader gives it, for every
    parameter of the real UNet written by `unet_module_to_ldm` (each tensor holds its index to trace it)."""
    config, _, params = real_unet_modules(family)
    written = ["model.diffusion_model." + unet_module_to_ldm(k, config) for k in params]
    read = reference.convert_ldm_unet_checkpoint({k: torch.tensor([float(i)]) for i, k in enumerate(written)},
                                                 dict(config))
    by_index = {int(v.item()): k for k, v in read.items()}
    return {k: by_index.get(i) for i, k in enumerate(written)}


@pytest.mark.parametrize("family, diffusers, ldm", [
    ("sd1", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "input_blocks.1.1.transformer_blocks.0.attn1.to_q"),
    ("sd1", "down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_v", "input_blocks.5.1.transformer_blocks.0.attn2.to_v"),
    ("sd1", "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0", "middle_block.1.transformer_blocks.0.attn2.to_out.0"),
    ("sd1", "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k", "output_blocks.3.1.transformer_blocks.0.attn1.to_k"),
    ("sd1", "up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_q", "output_blocks.11.1.transformer_blocks.0.attn1.to_q"),
    ("sd1", "down_blocks.2.downsamplers.0.conv", "input_blocks.9.0.op"),
    ("sd1", "up_blocks.0.upsamplers.0.conv", "output_blocks.2.1.conv"),
    ("sd1", "up_blocks.2.upsamplers.0.conv", "output_blocks.8.2.conv"),
    ("sd1", "up_blocks.2.resnets.0.conv_shortcut", "output_blocks.6.0.skip_connection"),
    ("sd1", "mid_block.resnets.1.time_emb_proj", "middle_block.2.emb_layers.1"),
    ("sdxl", "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k", "input_blocks.4.1.transformer_blocks.1.attn2.to_k"),
    ("sdxl", "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.0.proj", "input_blocks.8.1.transformer_blocks.9.ff.net.0.proj"),
    ("sdxl", "up_blocks.0.attentions.2.transformer_blocks.0.attn1.to_out.0", "output_blocks.2.1.transformer_blocks.0.attn1.to_out.0"),
    ("sdxl", "up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
    ("sdxl", "down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
    ("sdxl", "add_embedding.linear_2", "label_emb.0.2"),
    ("sdxl", "up_blocks.2.resnets.2.conv2", "output_blocks.8.0.out_layers.3"),
])
def test_known_unet_names(family, diffusers, ldm):
    config = real_config(family, "unet")
    assert unet_module_to_ldm(diffusers, config) == ldm
    assert read_by_diffusers(family)["model.diffusion_model." + ldm + ".weight"] == diffusers + ".weight"


@pytest.mark.parametrize("family, attention_modules", [("sd1", 16), ("sd2", 16), ("sdxl", 70)])
def test_every_real_unet_name_maps_one_to_one(family, attention_modules):
    config, leaves, params = real_unet_modules(family)
    read = read_by_diffusers(family)
    for name in params:  # diffusers' reader gives every written name back
        assert read["model.diffusion_model." + unet_module_to_ldm(name, config)] == name
    mapped = [unet_module_to_ldm(n, config) for n in leaves]
    assert len(set(mapped)) == len(mapped)
    projections = [m for m in mapped if m.split(".")[-1] in ("to_q", "to_k", "to_v") or m.endswith("to_out.0")]
    assert len(projections) == attention_modules * 8  # attn1 and attn2, q/k/v/out, per transformer block
    for ldm in projections:  # the kohya key: lora_unet_{input_blocks_4_1_transformer_blocks_0_attn1_to_q}
        kohya = "lora_unet_" + ldm.replace(".", "_")
        block, index = ldm.split(".")[:2]
        assert block in ("input_blocks", "middle_block", "output_blocks")
        inside = "lora_unet_middle_block_1_" if block == "middle_block" else f"lora_unet_{block}_{index}_1_"
        assert kohya.startswith(inside + "transformer_blocks_")


def test_family_detection_without_text_encoders():
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert detect_family({key: torch.zeros(320, 768)}) == "sd1"
    assert detect_family({key: torch.zeros(320, 1024)}) == "sd2"
    assert detect_family({"model.diffusion_model.label_emb.0.0.weight": torch.zeros(1)}) == "sdxl"


# ---- wrong files ----------------------------------------------------------------------------------
def test_a_lora_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "style.safetensors"
    save_file({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(8, 4),
               "lora_unet_input_blocks_4_1_proj_in.alpha": torch.tensor(4.0)}, path)
    with pytest.raises(CheckpointFormatError, match="LoRA adapter"):
        load_single_file(path)


def test_a_diffusers_component_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({"down_blocks.0.resnets.0.conv1.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointFormatError, match="diffusers model folder"):
        load_single_file(path)


def test_pickles_are_refused_unless_allowed(tokenizer_dir, tmp_path):
    parts, overrides = build("sd1", tokenizer_dir)
    tensors = load_file(save_single_file(parts, tmp_path / "model.safetensors", "sd1"))
    pickle = tmp_path / "model.ckpt"
    torch.save({"state_dict": tensors, "global_step": 1}, pickle)
    with pytest.raises(CheckpointFormatError, match="allow_unsafe=True"):
        load_single_file(pickle)
    loaded = load_single_file(pickle, allow_unsafe=True, config_overrides=overrides, tokenizer=tokenizer_dir)
    assert_same_outputs(parts, loaded, "sd1")


def test_missing_tokenizer_and_wrong_architecture_say_what_to_do(tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(single_file, "_CACHED_TOKENIZERS", {f: [None, None] for f in ("sd1", "sd2", "sdxl")})
    parts, overrides = build("sd1", tokenizer_dir)
    foreign = strip_metadata(save_single_file(parts, tmp_path / "model.safetensors", "sd1"))
    with pytest.raises(CheckpointFormatError, match="holds no tokenizer.*tokenizer"):
        load_single_file(foreign, config_overrides=overrides)
    with pytest.raises(CheckpointFormatError, match="do not fit the sd1 architecture.*config_overrides"):
        load_single_file(foreign, tokenizer=tokenizer_dir)  # the real SD 1.5 config against tiny weights
    with pytest.raises(CheckpointFormatError, match="do not fit the sdxl architecture"):
        load_single_file(foreign, family="sdxl", tokenizer=tokenizer_dir, tokenizer_2=tokenizer_dir)
    with pytest.raises(CheckpointFormatError, match=r"\.safetensors"):
        save_single_file(parts, tmp_path / "model.ckpt", "sd1")
    with pytest.raises(CheckpointFormatError, match="without text_encoder_2"):
        save_single_file(parts, tmp_path / "xl.safetensors", "sdxl")


def test_a_file_missing_weights_is_refused_not_left_on_meta(tokenizer_dir, tmp_path):
    parts, overrides = build("sd1", tokenizer_dir)
    tensors = load_file(save_single_file(parts, tmp_path / "model.safetensors", "sd1"))
    for key, says in [("model.diffusion_model.out.2.bias", r"unet .* \(some of the weights it needs are missing"),
                      ("first_stage_model.decoder.conv_out.bias", r"vae .* \(some of the weights it needs are missing"),
                      ("cond_stage_model.transformer.text_model.final_layer_norm.bias",
                       r"text_encoder .*: 1 missing, e\.g\. '(text_model\.)?final_layer_norm\.bias'")]:
        save_file({k: v for k, v in tensors.items() if k != key}, tmp_path / "cut.safetensors")
        with pytest.raises(CheckpointFormatError, match=says.replace(" .*", " weights do not fit the sd1 architecture.*")):
            load_single_file(tmp_path / "cut.safetensors", config_overrides=overrides, tokenizer=tokenizer_dir)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_a_file_with_nothing_beside_it_gets_the_clip_tokenizer(family, tmp_path, monkeypatch):
    """A model-site file (CLIP's 49,408-token text encoders, half precision, no loramix metadata, no tokenizer
    folder, an empty Hugging Face cache) loads with the tokenizer built from the vendored CLIP vocabulary."""
    monkeypatch.setattr(single_file, "_CACHED_TOKENIZERS", {f: [None, None] for f in ("sd1", "sd2", "sdxl")})
    parts, overrides = build(family, None, vocab=49408)
    half = save_single_file(parts, tmp_path / "model.safetensors", family, dtype=torch.float16)
    foreign = strip_metadata(half)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.safetensors", "model.safetensors"]
    loaded = load_single_file(foreign, config_overrides=overrides)
    assert {loaded[n].dtype for n in parts if n != "scheduler"} == {torch.float16}  # as stored, not float32
    pads = {"sd1": ["<|endoftext|>"], "sd2": ["!"], "sdxl": ["<|endoftext|>", "!"]}[family]
    for name, pad in zip(("tokenizer", "tokenizer_2"), pads):
        tokenizer = loaded[name]
        assert len(tokenizer) == 49408 and tokenizer.pad_token == pad, (name, tokenizer.pad_token)
        ids = tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
        assert ids[0, 7].item() == {"<|endoftext|>": 49407, "!": 0}[pad]
        loaded[name.replace("tokenizer", "text_encoder")](ids)  # every id fits the encoder's embedding
    assert ("tokenizer_2" in loaded) == (family == "sdxl")


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_real_vae_and_text_encoder_names_are_the_ones_diffusers_reads(family):
    """The shipped SD 1.5 / 2.1 / SDXL configs, built without weights: every key survives the LDM layout."""
    with init_empty_weights():
        vae = AutoencoderKL.from_config(real_config(family, "vae"))
    ldm = vae_state_to_ldm(vae.state_dict(), vae.config)
    assert "first_stage_model.decoder.up.3.block.2.conv2.weight" in ldm  # the reversed decoder numbering
    assert set(reference.convert_ldm_vae_checkpoint(ldm, dict(vae.config))) == set(vae.state_dict())
    for name, kind, prefix in TEXT_ENCODERS[family]:
        config = real_config(family, name)
        cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
        with init_empty_weights():
            model = cls(CLIPTextConfig.from_dict(config))
        ldm = text_encoder_state_to_ldm(model.state_dict(), kind, prefix)
        if kind == "clip":
            assert prefix + "text_model.encoder.layers.11.self_attn.q_proj.weight" in ldm
            back = reference.convert_ldm_clip_checkpoint(ldm)
        else:
            last = config["num_hidden_layers"] - 1
            assert ldm[f"{prefix}transformer.resblocks.{last}.attn.in_proj_weight"].shape[0] == 3 * config["hidden_size"]
            back = reference.convert_open_clip_checkpoint(model, ldm, prefix=prefix)
        short = {k.removeprefix("text_model.") for k in model.state_dict()}
        assert {k.removeprefix("text_model.") for k in back} == short


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_a_real_size_file_loads_with_the_shipped_configs(family, tmp_path):
    """Random weights in the real SD 1.5 / SD 2.1-v shapes, written in half precision without loramix metadata
    (SD 2.x with the `v_pred` marker), read by diffusers with the shipped configs and the built CLIP tokenizer."""
    torch.manual_seed(0)
    parts = {"unet": UNet2DConditionModel.from_config(real_config(family, "unet")),
             "vae": AutoencoderKL.from_config(real_config(family, "vae")),
             "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(real_config(family, "text_encoder")))}
    prediction = "v_prediction" if family == "sd2" else "epsilon"
    foreign = strip_metadata(save_single_file(parts, tmp_path / "model.safetensors", family, dtype=torch.float16,
                                              prediction_type=prediction))
    loaded = load_single_file(foreign)  # no tokenizer beside it: CLIP's, built from the vendored vocabulary
    for name, model in parts.items():
        want = model.state_dict()
        for key, value in loaded[name].state_dict().items():
            if key in want:
                assert torch.equal(value, want[key].half()), (name, key)
    assert loaded["unet"].dtype == torch.float16
    assert loaded["scheduler"].config.prediction_type == prediction
    assert isinstance(loaded["scheduler"], PNDMScheduler if family == "sd1" else DDIMScheduler)
    assert loaded["tokenizer"].pad_token == ("!" if family == "sd2" else "<|endoftext|>")
