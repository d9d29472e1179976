"""LoRA file formats: the only module that knows kohya / AUTOMATIC1111 and PEFT key layouts.

In memory an adapter is a `LoraAdapter`: kohya layer names -> (down, up, alpha). On disk it is a
safetensors file in kohya layout (`lora_unet_…lora_down.weight`, `…lora_up.weight`, `…alpha`)
with `ss_*` metadata, which AUTOMATIC1111, ComfyUI and diffusers' `load_lora_weights` all read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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


def from_peft(peft_state: dict[str, torch.Tensor], prefix: str, alpha: float,
              rename: Callable[[str], str] | None = None) -> dict[str, LoraLayer]:
    """Layers from a PEFT state dict (`<module>.lora_A.weight` / `<module>.lora_B.weight`).

    `rename` maps a module path to the one kohya names it by (SDXL: the LDM UNet layout).
    """
    rename = rename or (lambda path: path)
    layers = {}
    for key, down in peft_state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")]
        up = peft_state[f"{module}.lora_B.weight"]
        layers[kohya_name(prefix, rename(module))] = LoraLayer(down.detach(), up.detach(), float(alpha))
    return layers


def module_table(model: torch.nn.Module, prefix: str, rename: Callable[[str], str] | None = None) -> dict[str, str]:
    """kohya layer name -> module path for every module of `model` (kohya names are lossy: `_` for `.`)."""
    rename = rename or (lambda path: path)
    table = {}
    for path, module in model.named_modules():
        if path and ".lora_" not in path and not path.endswith(("base_layer", "lora_dropout")) and \
                hasattr(module, "weight"):
            table[kohya_name(prefix, rename(path.replace(".base_layer", "")))] = path
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


def read_lora(path: str | Path, allow_unsafe: bool = False) -> LoraAdapter:
    """Read a LoRA file (kohya / A1111, diffusers or PEFT layout) into memory with kohya names.

    Pickle files (.ckpt/.pt/.bin) can run code when loaded: they are refused unless
    `allow_unsafe` is set, and then read with torch's weights-only unpickler.
    """
    path = Path(path)
    if not path.is_file():
        raise AdapterFormatError(f"{path}: no such file.")
    if path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
        if not allow_unsafe:
            raise AdapterFormatError(f"{path.name}: pickle files (.ckpt/.pt/.bin) can run code when loaded; "
                                     "convert it to .safetensors, or allow unsafe loading explicitly.")
        metadata, tensors = {}, _read_pickle(path)
    elif path.suffix.lower() != ".safetensors":
        raise AdapterFormatError(f"{path.name}: not a LoRA file; expected .safetensors.")
    else:
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise AdapterFormatError(f"{path.name}: not a readable safetensors file ({e}).") from e
    return LoraAdapter(_layers_from_tensors(path.name, tensors, metadata), metadata)


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise AdapterFormatError(f"{path.name}: cannot read this pickle file ({e}).") from e
    data = data.get("state_dict", data) if isinstance(data, dict) else data
    if not isinstance(data, dict):
        raise AdapterFormatError(f"{path.name}: does not hold a dictionary of tensors.")
    return {k: v for k, v in data.items() if torch.is_tensor(v)}


_PEFT_TO_KOHYA = {".lora_A.weight": ".lora_down.weight", ".lora_B.weight": ".lora_up.weight"}
_OLD_DIFFUSERS = {"to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v", "to_out_lora": "to_out.0"}
_OLD_TEXT = {"to_q_lora": "q_proj", "to_k_lora": "k_proj", "to_v_lora": "v_proj", "to_out_lora": "out_proj"}
_COMPONENT_PREFIX = {"unet": "lora_unet", "text_encoder": "lora_te", "text_encoder_2": "lora_te2"}


def _to_kohya_keys(name: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename diffusers / PEFT keys to kohya ones; kohya files pass through unchanged."""
    if any(k.endswith(".lora_down.weight") and k.startswith("lora_") for k in tensors):
        return tensors
    if any("lora_magnitude_vector" in k or k.endswith("dora_scale") for k in tensors):
        raise AdapterFormatError(f"{name}: DoRA adapters are not supported; use a plain LoRA.")
    out = {}
    for key, value in tensors.items():
        component, _, rest = key.partition(".")
        if component not in _COMPONENT_PREFIX:  # a bare PEFT UNet state dict
            component, rest = "unet", key
        prefix = _COMPONENT_PREFIX[component]
        for suffix, kohya_suffix in _PEFT_TO_KOHYA.items():
            if rest.endswith(suffix):
                out[kohya_name(prefix, rest[: -len(suffix)]) + kohya_suffix] = value
                break
        else:
            for old, new in (_OLD_DIFFUSERS if prefix == "lora_unet" else _OLD_TEXT).items():
                marker = f".{old}."
                if marker in rest and rest.endswith((".down.weight", ".up.weight")):
                    module = rest.split(marker)[0].replace(".processor", "") + "." + new
                    which = "lora_down" if rest.endswith(".down.weight") else "lora_up"
                    out[f"{kohya_name(prefix, module)}.{which}.weight"] = value
                    break
            else:
                if rest.endswith(".alpha"):
                    out[kohya_name(prefix, rest[: -len(".alpha")]) + ".alpha"] = value
    return out


def _layers_from_tensors(name: str, tensors: dict[str, torch.Tensor], metadata: dict) -> dict[str, LoraLayer]:
    kohya = _to_kohya_keys(name, tensors)
    layers = {}
    for key, down in kohya.items():
        if not key.endswith(".lora_down.weight"):
            continue
        layer = key[: -len(".lora_down.weight")]
        up = kohya.get(f"{layer}.lora_up.weight")
        if up is None:
            raise AdapterFormatError(f"{name}: {layer} has lora_down but no lora_up weight.")
        if up.shape[1] != down.shape[0]:
            raise AdapterFormatError(f"{name}: {layer} has lora_up {tuple(up.shape)} and lora_down "
                                     f"{tuple(down.shape)}, whose ranks differ.")
        alpha_t = kohya.get(f"{layer}.alpha")
        alpha = float(alpha_t) if alpha_t is not None else float(down.shape[0])
        layers[layer] = LoraLayer(down, up, alpha)
    if not layers:
        raise AdapterFormatError(f"{name}: no LoRA layers found (kohya …lora_down.weight or PEFT …lora_A.weight); "
                                 f"first keys: {', '.join(list(tensors)[:3])}.")
    return layers


# ---- what an adapter was made for --------------------------------------------------------------
_CONTEXT_WIDTH = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
_BASE_VERSIONS = {"sd_v1": "SD 1.x", "sd_v2": "SD 2.x", "sdxl_base_v1-0": "SDXL", "loramix_tiny": "the loramix tiny model"}


def guess_architecture(adapter: LoraAdapter) -> str:
    """A readable guess of the base model a LoRA was trained on: metadata first, then key names and shapes."""
    version = adapter.metadata.get("ss_base_model_version", "")
    if version in _BASE_VERSIONS:
        return _BASE_VERSIONS[version]
    names = adapter.layers.keys()
    if any(n.startswith(("lora_te1_", "lora_te2_")) for n in names):
        return "SDXL"
    for name, layer in adapter.layers.items():
        if name.startswith("lora_unet") and name.endswith("attn2_to_k"):
            width = layer.down.shape[1]
            return _CONTEXT_WIDTH.get(width, f"a model with {width}-wide text conditioning")
    return "an unknown base model"


def loramix_config(adapter: LoraAdapter) -> dict | None:
    """The full loramix training config stored in a file's metadata, if it was made by loramix."""
    text = adapter.metadata.get("loramix_config")
    return json.loads(text) if text else None
