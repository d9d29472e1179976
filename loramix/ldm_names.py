"""Module paths of the original (LDM / CompVis) UNet, which kohya uses to name SDXL LoRA layers.

diffusers: down_blocks.{i}.{resnets|attentions}.{j}  ->  LDM: input_blocks.{i*(L+1)+j+1}.{0|1}
           down_blocks.{i}.downsamplers.0             ->       input_blocks.{(i+1)*(L+1)}.0.op
           mid_block.{resnets.j|attentions.0}          ->       middle_block.{2j|1}
           up_blocks.{i}.{resnets|attentions}.{j}     ->       output_blocks.{i*(L+1)+j}.{0|1}
           up_blocks.{i}.upsamplers.0                 ->       output_blocks.{i*(L+1)+L}.{1|2}.conv
where L = layers_per_block; resnet and embedding sub-layers are renamed as in the LDM code.
"""

from __future__ import annotations

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _layers(config: dict) -> int:
    lpb = config.get("layers_per_block", 2)
    return lpb if isinstance(lpb, int) else lpb[0]


def _sub(kind: str, rest: list[str]) -> str:
    """The path inside a block: resnet sub-layers are renamed, transformer paths are the same."""
    if kind == "resnets" and rest:
        return ".".join([_RESNET.get(rest[0], rest[0]), *rest[1:]])
    return ".".join(rest)


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def unet_module_to_ldm(path: str, config: dict) -> str:
    """The LDM path of a diffusers UNet module (or parameter) path, for SD 1.x/2.x/SDXL layouts."""
    for name, ldm in _TOP.items():
        if path == name or path.startswith(name + "."):
            return ldm + path[len(name):]
    parts = path.split(".")
    L = _layers(config)
    if parts[0] == "down_blocks":
        i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        if kind == "downsamplers":
            return _join(f"input_blocks.{(i + 1) * (L + 1)}.0.op", ".".join(rest[1:]))
        return _join(f"input_blocks.{i * (L + 1) + j + 1}.{0 if kind == 'resnets' else 1}", _sub(kind, rest))
    if parts[0] == "mid_block":
        kind, j, rest = parts[1], int(parts[2]), parts[3:]
        return _join(f"middle_block.{2 * j if kind == 'resnets' else 1}", _sub(kind, rest))
    if parts[0] == "up_blocks":
        i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        if kind == "upsamplers":
            has_attention = "CrossAttn" in config["up_block_types"][i]
            return _join(f"output_blocks.{i * (L + 1) + L}.{2 if has_attention else 1}.conv",
                         ".".join(rest[1:]))
        return _join(f"output_blocks.{i * (L + 1) + j}.{0 if kind == 'resnets' else 1}", _sub(kind, rest))
    raise ValueError(f"{path}: not a UNet2DConditionModel module path this mapping knows")
