"""Key maps from diffusers to the original LDM ("single-file checkpoint") layout, SD 1.x/2.x/SDXL: the writer.

Pure functions on names and state dicts; files, configs and models live in `single_file.py`. Only this
direction is hand-written: diffusers reads the LDM layout (`diffusers.loaders.single_file_utils`, used by
`single_file.load_single_file`) but has no writer. The tests check every name written here against
diffusers' reader, so the two directions cannot drift apart. kohya names SDXL LoRA layers after the LDM
UNet paths, so `unet_module_to_ldm` also serves `families.SDXLFamily.kohya_path`.

UNet (L = layers_per_block; kohya names SDXL LoRA layers after these LDM paths):
    conv_in                               <-> input_blocks.0.0
    down_blocks.i.{resnets|attentions}.j  <-> input_blocks.{i*(L+1)+j+1}.{0|1}
    down_blocks.i.downsamplers.0.conv     <-> input_blocks.{(i+1)*(L+1)}.0.op
    mid_block.resnets.j / attentions.0    <-> middle_block.{2j} / middle_block.1
    up_blocks.i.{resnets|attentions}.j    <-> output_blocks.{i*(L+1)+j}.{0|1}
    up_blocks.i.upsamplers.0.conv         <-> output_blocks.{i*(L+1)+L}.{2 with attention, else 1}.conv
Resnet and embedding sub-layers are renamed (`_RESNET`, `_UNET_TOP`); transformer paths are equal.
VAE: `down_blocks.i` <-> `down.i`, decoder `up_blocks.i` <-> `up.{n-1-i}` (reversed), mid attention
linear q/k/v/out weights <-> 1x1 convs `q/k/v/proj_out`. Text: OpenAI CLIP keeps the transformers
names under a prefix; OpenCLIP (SD2, SDXL's second encoder) fuses q/k/v into `in_proj_*`.
"""

from __future__ import annotations

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# family -> the text encoders of its LDM checkpoint: (component name, layout kind, key prefix)
TEXT_ENCODERS = {
    "sd1": [("text_encoder", "clip", "cond_stage_model.transformer.")],
    "sd2": [("text_encoder", "openclip", "cond_stage_model.model.")],
    "sdxl": [("text_encoder", "clip", "conditioner.embedders.0.transformer."),
             ("text_encoder_2", "openclip", "conditioner.embedders.1.model.")],
}

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2", "class_embedding.linear_1": "label_emb.0.0",
             "class_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


# ---- UNet module paths ----------------------------------------------------------------------------
def _layers(config: dict) -> int:
    lpb = config.get("layers_per_block", 2)
    if isinstance(lpb, (list, tuple)):
        if len(set(lpb)) != 1:
            raise ValueError(f"layers_per_block={lpb}: the LDM layout needs the same count in every block")
        lpb = lpb[0]
    return int(lpb)


def _rename(mapping: dict[str, str], parts: list[str]) -> str:
    """Rename the longest dotted head of `parts` found in `mapping`; keep the tail."""
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head in mapping:
            return ".".join([mapping[head], *parts[n:]])
    return ".".join(parts)


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _unet_top(path: str, config: dict) -> str | None:
    embed = "class_embedding" if config.get("class_embed_type") else "add_embedding"
    table = {k: v for k, v in _UNET_TOP.items() if not k.startswith(("add_", "class_")) or k.startswith(embed)}
    for name, other in table.items():
        if path == name or path.startswith(name + "."):
            return other + path[len(name):]
    return None


def unet_module_to_ldm(diffusers_module_path: str, unet_config: dict) -> str:
    """The LDM path of a diffusers UNet module (or parameter) path, e.g.
    `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q` -> `input_blocks.4.1.transformer_blocks.0.attn1.to_q`
    for SD 1.x. Works for parameter paths too (`….conv1.weight` -> `….in_layers.2.weight`)."""
    path, config = diffusers_module_path, unet_config
    top = _unet_top(path, config)
    if top is not None:
        return top
    parts, L = path.split("."), _layers(config)
    try:
        if parts[0] in ("down_blocks", "up_blocks"):
            i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        elif parts[0] == "mid_block":
            i, kind, j, rest = 0, parts[1], int(parts[2]), parts[3:]
        else:
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(f"{path}: not a UNet2DConditionModel module path the LDM layout knows") from None
    inner = _rename(_RESNET, rest) if kind == "resnets" else ".".join(rest)
    sub = {"resnets": 0, "attentions": 1}.get(kind)
    if parts[0] == "down_blocks":
        if kind == "downsamplers":  # down_blocks.i.downsamplers.0.conv(.weight)
            return _join(f"input_blocks.{(i + 1) * (L + 1)}.0.op", ".".join(rest[1:]))
        if sub is not None:
            return _join(f"input_blocks.{i * (L + 1) + j + 1}.{sub}", inner)
    elif parts[0] == "mid_block" and sub is not None:
        return _join(f"middle_block.{2 * j if kind == 'resnets' else 1}", inner)
    elif parts[0] == "up_blocks":
        if kind == "upsamplers":  # up_blocks.i.upsamplers.0.conv(.weight)
            slot = 2 if "CrossAttn" in config["up_block_types"][i] else 1
            return _join(f"output_blocks.{i * (L + 1) + L}.{slot}", ".".join(rest))
        if sub is not None:
            return _join(f"output_blocks.{i * (L + 1) + j}.{sub}", inner)
    raise ValueError(f"{path}: not a UNet2DConditionModel module path the LDM layout knows")


def unet_state_to_ldm(state_dict: dict, unet_config: dict) -> dict:
    """diffusers UNet state dict -> LDM keys under `model.diffusion_model.`."""
    return {UNET_PREFIX + unet_module_to_ldm(k, unet_config): v for k, v in state_dict.items()}


# ---- VAE ------------------------------------------------------------------------------------------
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_key_to_ldm(key: str, n_blocks: int) -> str:
    side, parts = key.split(".", 1)[0], key.split(".")
    if side not in ("encoder", "decoder"):
        return key  # quant_conv, post_quant_conv
    body = parts[1:]
    if body[0] == "conv_norm_out":
        return _join(side, "norm_out", *body[1:])
    if body[0] in ("down_blocks", "up_blocks"):
        i = int(body[1]) if body[0] == "down_blocks" else n_blocks - 1 - int(body[1])
        where = f"{'down' if body[0] == 'down_blocks' else 'up'}.{i}"
        if body[2] == "resnets":
            return _join(side, where, "block", body[3], _rename(_VAE_RESNET, body[4:]))
        return _join(side, where, "downsample" if body[2] == "downsamplers" else "upsample", *body[4:])
    if body[0] == "mid_block":
        if body[1] == "resnets":
            return _join(side, f"mid.block_{int(body[2]) + 1}", _rename(_VAE_RESNET, body[3:]))
        return _join(side, "mid.attn_1", _rename(_VAE_ATTN, body[3:]))
    return key  # conv_in, conv_out


def vae_state_to_ldm(state_dict: dict, vae_config: dict) -> dict:
    """diffusers AutoencoderKL state dict -> LDM keys under `first_stage_model.` (attention as 1x1 convs)."""
    n, out = len(vae_config["up_block_types"]), {}
    for key, value in state_dict.items():
        if ".attentions." in key and key.endswith(".weight") and "group_norm" not in key:  # linear -> 1x1 conv
            value = value.reshape(*value.shape, 1, 1)
        out[VAE_PREFIX + _vae_key_to_ldm(key, n)] = value
    return out


# ---- text encoders --------------------------------------------------------------------------------
_OPENCLIP = {"embeddings.token_embedding.weight": "token_embedding.weight",
             "embeddings.position_embedding.weight": "positional_embedding",
             "final_layer_norm": "ln_final", "encoder.layers": "transformer.resblocks"}
_OPENCLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}
# keys of LDM text encoders that no transformers model holds
_TEXT_IGNORED = ("embeddings.position_ids", "logit_scale", "attn_mask")


def _strip_text_model(state_dict: dict) -> dict:
    """transformers 4 keys start `text_model.`, transformers 5's CLIPTextModel's do not: use the short form."""
    return {k.removeprefix("text_model."): v for k, v in state_dict.items()
            if not k.endswith(_TEXT_IGNORED)}


def _openclip_key(key: str) -> str:
    if key.startswith("encoder.layers."):
        _, _, layer, rest = key.split(".", 3)
        return f"transformer.resblocks.{layer}." + _rename(_OPENCLIP_LAYER, rest.split("."))
    return _rename(_OPENCLIP, key.split("."))


def text_encoder_state_to_ldm(state_dict: dict, kind: str, prefix: str) -> dict:
    """A transformers CLIP text model state dict -> LDM keys under `prefix`; `kind` is "clip" or "openclip"."""
    inner = _strip_text_model(state_dict)
    if kind == "clip":
        return {f"{prefix}text_model.{k}" if k != "text_projection.weight" else prefix + k: v
                for k, v in inner.items()}
    if kind != "openclip":
        raise ValueError(f"text encoder layout {kind!r}: expected 'clip' or 'openclip'")
    out = {}
    for key, value in inner.items():
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()  # OpenCLIP applies x @ text_projection
        elif ".self_attn.q_proj." in key:
            param = key.rsplit(".", 1)[1]  # weight / bias
            fused = torch.cat([inner[key.replace(".q_proj.", f".{p}_proj.")] for p in "qkv"])
            layer = key.split(".")[2]  # encoder.layers.{layer}.self_attn.q_proj.weight
            out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{param}"] = fused
        elif ".self_attn.k_proj." in key or ".self_attn.v_proj." in key:
            continue
        else:
            out[prefix + _openclip_key(key)] = value
    return out
