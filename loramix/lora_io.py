"""LoRA file formats: the only module that knows kohya / AUTOMATIC1111 and PEFT key layouts.

In memory an adapter is a `LoraAdapter`: kohya layer names -> (down, up, alpha). On disk it is a
safetensors file in kohya layout (`lora_unet_…lora_down.weight`, `…lora_up.weight`, `…alpha`)
with `ss_*` metadata, which AUTOMATIC1111, ComfyUI and diffusers' `load_lora_weights` all read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from loramix.atomic import atomic_path
from loramix.errors import AdapterFormatError

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class LoraLayer:
    down: torch.Tensor  # (r, in) or (r, in, k, k)
    up: torch.Tensor  # (out, r) or (out, r, 1, 1)
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self) -> torch.Tensor:
        """ΔW = (alpha / r) · up · down, shaped like the base layer's weight."""
        down, up = self.down.float(), self.up.float()
        if down.dim() == 4:  # conv: (r, in, k, k) and (out, r, 1, 1)
            d = up.flatten(1) @ down.flatten(1)
            return (d * self.scale).reshape(up.shape[0], *down.shape[1:])
        return (up @ down) * self.scale


@dataclass
class LoraAdapter:
    layers: dict[str, LoraLayer]  # kohya layer name (e.g. lora_unet_down_blocks_0_…_to_q) -> layer
    metadata: dict[str, str] = field(default_factory=dict)


# ---- PEFT <-> kohya ------------------------------------------------------------------------------
def kohya_name(prefix: str, module_path: str) -> str:
    """`down_blocks.0.attentions.0…to_out.0` -> `lora_unet_down_blocks_0_attentions_0…to_out_0`.

    Text encoders are named from `text_model.`, as in the original CLIP layout that kohya and
    AUTOMATIC1111 use; transformers 5 dropped that level from CLIPTextModel, so it is put back.
    """
    if prefix.startswith("lora_te") and not module_path.startswith("text_model."):
        module_path = "text_model." + module_path
    return f"{prefix}_{module_path.replace('.', '_')}"


def from_peft(peft_state: dict[str, torch.Tensor], prefix: str, alpha: float) -> dict[str, LoraLayer]:
    """Layers from a PEFT state dict (`<module>.lora_A.weight` / `<module>.lora_B.weight`)."""
    layers = {}
    for key, down in peft_state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")]
        up = peft_state[f"{module}.lora_B.weight"]
        layers[kohya_name(prefix, module)] = LoraLayer(down.detach(), up.detach(), float(alpha))
    return layers


def module_table(model: torch.nn.Module, prefix: str) -> dict[str, str]:
    """kohya layer name -> module path for every module of `model` (kohya names are lossy: `_` for `.`)."""
    table = {}
    for path, _module in model.named_modules():
        if path and ".lora_" not in path and not path.endswith(("base_layer", "lora_dropout")):
            table[kohya_name(prefix, path.replace(".base_layer", ""))] = path
    return table


# ---- files ---------------------------------------------------------------------------------------
def save_lora(path: str | Path, adapter: LoraAdapter, dtype: str = "fp16") -> Path:
    """Write the adapter in kohya layout, atomically."""
    tensors = {}
    for name, layer in adapter.layers.items():
        tensors[f"{name}.lora_down.weight"] = layer.down.to(DTYPES[dtype]).contiguous()
        tensors[f"{name}.lora_up.weight"] = layer.up.to(DTYPES[dtype]).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(layer.alpha, dtype=DTYPES[dtype])
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in adapter.metadata.items()})
    return path


def read_lora(path: str | Path) -> LoraAdapter:
    """Read a kohya-layout LoRA file into memory. Refuses pickle files."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise AdapterFormatError(f"{path.name}: only .safetensors LoRA files are read; pickle files "
                                 "(.ckpt/.pt/.bin) can run code when loaded.")
    if not path.is_file():
        raise AdapterFormatError(f"{path}: no such file.")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise AdapterFormatError(f"{path.name}: not a readable safetensors file ({e}).") from e
    layers = {}
    for key, down in tensors.items():
        if not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        up = tensors.get(f"{name}.lora_up.weight")
        if up is None:
            raise AdapterFormatError(f"{path.name}: {name} has lora_down but no lora_up weight.")
        alpha_t = tensors.get(f"{name}.alpha")
        alpha = float(alpha_t) if alpha_t is not None else float(down.shape[0])
        layers[name] = LoraLayer(down, up, alpha)
    if not layers:
        raise AdapterFormatError(f"{path.name}: no kohya LoRA layers (…lora_down.weight) found; "
                                 f"first keys: {', '.join(list(tensors)[:3])}.")
    return LoraAdapter(layers, metadata)


def loramix_config(adapter: LoraAdapter) -> dict | None:
    """The full loramix training config stored in a file's metadata, if it was made by loramix."""
    text = adapter.metadata.get("loramix_config")
    return json.loads(text) if text else None
