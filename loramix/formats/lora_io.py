"""LoRA file formats: the only module that knows kohya / AUTOMATIC1111 and PEFT key layouts.

In memory an adapter is a `LoraAdapter`: kohya layer names -> a layer from `loramix.adapters.adapter_layers`
(LoRA / LoCon down-up-alpha, LyCORIS LoHa, LoKr or full diff). On disk it is a safetensors file in
kohya layout (`lora_unet_…lora_down.weight`, `…lora_up.weight`, `…alpha`; LyCORIS layers as
`…hada_w1_a`, `…lokr_w1`, `…diff`) with `ss_*` metadata, which AUTOMATIC1111, ComfyUI and (for
LoRA) diffusers' `load_lora_weights` read. Files holding NaN or infinite numbers are refused on read
and never written.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from loramix import __version__
from loramix.adapters.adapter_layers import (
    AdapterLayer,
    DoraLayer,
    FullLayer,
    LoconTuckerLayer,
    LohaLayer,
    LokrLayer,
    LoraLayer,
)
from loramix.core.errors import AdapterFormatError
from loramix.core.writer import atomic_path

log = logging.getLogger(__name__)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class LoraAdapter:
    layers: dict[str, AdapterLayer]  # kohya layer name (e.g. lora_unet_down_blocks_0_…_to_q) -> layer
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
              rename: Callable[[str], str] | None = None, rank: int | None = None,
              rank_alpha: dict[str, tuple[int, float]] | None = None) -> dict[str, AdapterLayer]:
    """Layers from a PEFT state dict: LoRA (`<module>.lora_A.weight` / `.lora_B.weight`, with
    `.lora_magnitude_vector` a DoRA layer whose magnitude is written as LyCORIS' `dora_scale`), LoHa
    (`<module>.hada_w1_a` …, `LoHaConfig`) or LoKr (`<module>.lokr_w1` …, `LoKrConfig`).

    PEFT names LoHa / LoKr factors as LyCORIS does and scales by alpha / r, with one exception that
    is folded in here: a LoKr layer whose halves are both full matrices is scaled by alpha / r in PEFT
    but by 1 in LyCORIS, A1111 and ComfyUI, so alpha / `rank` is multiplied into its w1.
    `rename` maps a module path to the one kohya names it by (SDXL: the LDM UNet layout).
    `rank_alpha` gives the (rank, alpha) of modules trained with their own (PEFT rank_pattern /
    alpha_pattern, e.g. LoCon's conv_rank / conv_alpha), by PEFT module path; the rest use rank / alpha.
    """
    rename = rename or (lambda path: path)
    rank_alpha = rank_alpha or {}
    layers: dict[str, AdapterLayer] = {}
    lycoris: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in peft_state.items():
        module, _, suffix = key.rpartition(".")
        if suffix in _LOHA_KEYS | _LOKR_KEYS:
            lycoris.setdefault(module, {})[suffix] = value.detach()
        elif key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            up = peft_state[f"{module}.lora_B.weight"]
            layer_alpha = rank_alpha.get(module, (rank, alpha))[1]
            layer = LoraLayer(value.detach(), up.detach(), float(layer_alpha))
            magnitude = peft_state.get(f"{module}.lora_magnitude_vector")
            if magnitude is not None:  # PEFT: (out,) or (1, out, 1, 1); LyCORIS wd_on_out: (out, 1[, 1, 1])
                scale = magnitude.detach().reshape(-1, *[1] * (value.dim() - 1))
                layer = DoraLayer(layer.down, layer.up, layer.alpha, scale)
            layers[kohya_name(prefix, rename(module))] = layer
    for module, parts in lycoris.items():
        layer_rank, layer_alpha = rank_alpha.get(module, (rank, alpha))
        if "hada_w1_a" in parts:
            layer = LohaLayer(parts["hada_w1_a"], parts["hada_w1_b"], parts["hada_w2_a"], parts["hada_w2_b"],
                              float(layer_alpha), parts.get("hada_t1"), parts.get("hada_t2"))
        else:
            layer = LokrLayer(float(layer_alpha), **{k.removeprefix("lokr_"): v for k, v in parts.items()})
            if layer.rank is None:
                if not layer_rank:
                    raise AdapterFormatError(f"{module}: a LoKr layer with two full halves needs the PEFT rank "
                                             "to carry PEFT's alpha / r scale into the file.")
                layer.w1 = layer.w1 * (float(layer_alpha) / layer_rank)
        layers[kohya_name(prefix, rename(module))] = layer
    return layers


def lycoris_metadata(algo: str, dim: int, alpha: float, **network_args) -> dict[str, str]:
    """`ss_network_module`, `ss_network_dim`, `ss_network_alpha` and `ss_network_args` as a kohya run of
    LyCORIS writes them (`--network_module lycoris.kohya --network_args algo=loha conv_dim=4 …`): kohya
    keeps each network arg as the string after `=`, and stores the dict as JSON."""
    args = {"algo": algo, **{k: str(v) for k, v in network_args.items()}}
    return {"ss_network_module": "lycoris.kohya", "ss_network_dim": str(dim), "ss_network_alpha": str(alpha),
            "ss_network_args": json.dumps(args)}


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
def save_lora(path: str | Path, adapter: LoraAdapter, dtype: str = "fp16", warnings: list[str] | None = None,
              **rules) -> Path:
    """Write the adapter in kohya / LyCORIS layout through the writer (`rules`: replace, within, field).

    Never writes a non-finite number: a NaN or infinite value in memory is refused, naming the layer.
    A value that overflows the save precision (|x| > 65504 for fp16) is written in fp32 for that tensor
    instead, with a logged warning naming the file and layer that is also appended to `warnings`
    when the caller passes a list (the UI and CLI show it).
    """
    path = Path(path)
    tensors = {}
    for name, layer in adapter.layers.items():
        parts = {**layer.tensors(), "alpha": torch.tensor(float(layer.alpha))}
        if isinstance(layer, FullLayer):
            del parts["alpha"]  # LyCORIS writes none for full layers
        for suffix, value in parts.items():
            key = f"{name}.{suffix}"
            tensors[key] = _cast_finite(path.name, name, key, value, DTYPES[dtype], warnings)
    metadata = {k: str(v) for k, v in adapter.metadata.items()}
    metadata.update(file_hashes(tensors, metadata))
    with atomic_path(path, **rules) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def _cast_finite(file: str, layer: str, key: str, value: torch.Tensor, dtype: torch.dtype,
                 warnings: list[str] | None) -> torch.Tensor:
    value = value.detach()
    if not bool(torch.isfinite(value).all()):
        raise AdapterFormatError(f"Not saving {file}: layer {layer} ({key}) holds NaN or infinite values; "
                                 "the weights diverged, so use an earlier save or a lower learning rate.")
    cast = value.to(dtype)
    if not bool(torch.isfinite(cast).all()):
        biggest = float(value.abs().max())
        message = (f"{file}: layer {layer} ({key}) holds values up to {biggest:.4g}, beyond what "
                   f"{str(dtype).removeprefix('torch.')} can hold; that tensor is saved in fp32 instead.")
        log.warning(message)
        if warnings is not None:
            warnings.append(message)
        cast = value.float()
    return cast.contiguous()


def hashed_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """The metadata kohya's hashes are computed over: only the `ss_*` keys."""
    return {k: v for k, v in metadata.items() if k.startswith("ss_")}


def file_hashes_of(path: str | Path) -> dict[str, str]:
    """`file_hashes` of a file already written with `hashed_metadata` (a baked checkpoint, gigabytes: read back in
    1 MiB blocks instead of built in memory)."""
    with open(path, "rb") as f:
        return _addnet_hashes(f)


def file_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, str]:
    """`sshs_model_hash` and `sshs_legacy_hash` as kohya's `precalculate_safetensors_hashes` computes them.

    Both hash the safetensors bytes of `tensors` written with only the `ss_*` metadata (so editing
    other metadata later does not change them): the model hash is the SHA-256 of everything after
    the header (the tensor data), the legacy hash the first 8 hex digits of the SHA-256 of the
    64 KiB at offset 1 MiB (sd-webui-additional-networks' `addnet_hash_legacy`).
    Those bytes are built in memory, as kohya does for a LoRA (a checkpoint uses `file_hashes_of`).
    """
    import io

    from safetensors.torch import save

    return _addnet_hashes(io.BytesIO(save(tensors, hashed_metadata(metadata))))


def _addnet_hashes(f) -> dict[str, str]:
    header = int.from_bytes(f.read(8), "little")
    f.seek(8 + header)
    model = hashlib.sha256()
    for block in iter(lambda: f.read(0x100000), b""):
        model.update(block)
    f.seek(0x100000)
    return {"sshs_model_hash": model.hexdigest(), "sshs_legacy_hash": hashlib.sha256(f.read(0x10000)).hexdigest()[:8]}


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


# What each kind of layer stores under its kohya layer name (LyCORIS' `weight_list`s); `alpha` is common.
_LORA_KEYS = {"lora_down.weight", "lora_up.weight"}
_LOHA_KEYS = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"}
_LOKR_KEYS = {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"}
_FULL_KEYS = {"diff", "diff_b"}


def _to_kohya_keys(name: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename diffusers / PEFT keys to kohya ones; kohya and LyCORIS files pass through unchanged."""
    if any(k.startswith("lora_") for k in tensors):  # kohya / LyCORIS layer names; PEFT / diffusers keys never are
        return tensors
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
            if rest.endswith(".lora_magnitude_vector"):  # PEFT DoRA: per output channel, (out,) or (1, out, 1, 1)
                out[kohya_name(prefix, rest[: -len(".lora_magnitude_vector")]) + ".dora_scale"] = value.reshape(-1, 1)
                continue
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


def _check_finite(name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse a file holding NaN or inf anywhere (weights or alpha), naming the first bad key."""
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise AdapterFormatError(f"{name}: {key} holds NaN or infinite values, so this file would give "
                                     "black or noisy images; it was probably saved from a run that diverged. "
                                     "Use an earlier save of it.")


def _layers_from_tensors(name: str, tensors: dict[str, torch.Tensor], metadata: dict) -> dict[str, AdapterLayer]:
    _check_finite(name, tensors)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in _to_kohya_keys(name, tensors).items():
        layer, _, suffix = key.partition(".")
        if layer.startswith("lora_") and suffix:
            groups.setdefault(layer, {})[suffix] = value
    layers = {}
    for layer, parts in groups.items():
        made = _layer_from_parts(name, layer, parts)
        if made is not None:
            layers[layer] = made
    if not layers:
        raise AdapterFormatError(f"{name}: no LoRA layers found (kohya …lora_down.weight, LyCORIS …hada_w1_a / "
                                 f"…lokr_w1, or PEFT …lora_A.weight); first keys: {', '.join(list(tensors)[:3])}.")
    return layers


def _layer_from_parts(name: str, layer: str, parts: dict[str, torch.Tensor]) -> AdapterLayer | None:
    """One layer from its tensors (suffix -> tensor), or None for a name with only an alpha."""
    alpha_t = parts.get("alpha")
    keys = set(parts) - {"alpha"}
    if not keys:
        return None
    for known in (_LORA_KEYS | {"dora_scale"}, _LORA_KEYS | {"lora_mid.weight"}, _LOHA_KEYS, _LOKR_KEYS, _FULL_KEYS):
        if keys <= known:
            break
    else:
        what = "a DoRA layer with a Tucker middle (lora_mid)" if {"lora_mid.weight", "dora_scale"} <= keys else \
            f"stored as {', '.join(sorted(keys))}, a layer type"
        raise AdapterFormatError(f"{name}: {layer} is {what} loramix does not read (it reads LoRA / LoCon, LoHa, "
                                 "LoKr and full diff layers).")
    if "lora_mid.weight" in keys:
        return _tucker_locon(name, layer, parts)
    if "lora_down.weight" in keys or "lora_up.weight" in keys:
        down, up = parts.get("lora_down.weight"), parts.get("lora_up.weight")
        if up is None or down is None:
            raise AdapterFormatError(f"{name}: {layer} has lora_down but no lora_up weight." if up is None else
                                     f"{name}: {layer} has lora_up but no lora_down weight.")
        if up.shape[1] != down.shape[0]:
            raise AdapterFormatError(f"{name}: {layer} has lora_up {tuple(up.shape)} and lora_down "
                                     f"{tuple(down.shape)}, whose ranks differ.")
        made = LoraLayer(down, up, float(alpha_t) if alpha_t is not None else float(down.shape[0]))
        if "dora_scale" in parts:
            made = DoraLayer(down, up, made.alpha, parts["dora_scale"])
            if parts["dora_scale"].numel() not in (made.out_features, down.shape[1]):
                raise AdapterFormatError(f"{name}: {layer} has a dora_scale of {parts['dora_scale'].numel()} values "
                                         f"for a layer of {made.out_features} outputs.")
        return made
    missing = _missing(keys)
    if missing:
        raise AdapterFormatError(f"{name}: {layer} lacks {missing}, so its weight change cannot be computed.")
    if "diff" in keys:
        return _full(name, layer, parts)
    if "hada_w1_a" in keys:
        made = LohaLayer(parts["hada_w1_a"], parts["hada_w1_b"], parts["hada_w2_a"], parts["hada_w2_b"], 0.0,
                         parts.get("hada_t1"), parts.get("hada_t2"))
    else:
        made = LokrLayer(0.0, **{k.removeprefix("lokr_"): v for k, v in parts.items() if k != "alpha"})
    made.alpha = float(alpha_t) if alpha_t is not None and float(alpha_t) != 0 else float(made.rank or 1)
    return _checked(name, layer, made)


def _tucker_locon(name: str, layer: str, parts: dict[str, torch.Tensor]) -> AdapterLayer:
    """A LoCon layer with a Tucker middle (`lora_mid.weight`, LyCORIS `use_tucker` on a k×k conv)."""
    down, mid, up = parts.get("lora_down.weight"), parts["lora_mid.weight"], parts.get("lora_up.weight")
    if down is None or up is None:
        raise AdapterFormatError(f"{name}: {layer} has lora_mid but no {'lora_down' if down is None else 'lora_up'} "
                                 "weight.")
    alpha_t = parts.get("alpha")
    made = LoconTuckerLayer(down, mid, up, float(alpha_t) if alpha_t is not None else float(down.shape[0]))
    if mid.dim() != 4 or mid.shape[:2] != (up.shape[1], down.shape[0]):
        raise AdapterFormatError(f"{name}: {layer} has lora_up {tuple(up.shape)}, lora_mid {tuple(mid.shape)} and "
                                 f"lora_down {tuple(down.shape)}, which do not chain (up · mid · down).")
    return _checked(name, layer, made)


def _full(name: str, layer: str, parts: dict[str, torch.Tensor]) -> AdapterLayer:
    """A LyCORIS full layer: `diff`, and `diff_b` (the bias change) when the layer has a bias."""
    diff, diff_b = parts["diff"], parts.get("diff_b")
    if diff_b is not None and diff_b.numel() != diff.shape[0]:
        raise AdapterFormatError(f"{name}: {layer} has a diff_b of {diff_b.numel()} values for a layer of "
                                 f"{diff.shape[0]} outputs.")
    return _checked(name, layer, FullLayer(diff, diff_b=diff_b))


def _missing(keys: set[str]) -> str:
    if keys & _LOHA_KEYS:
        tucker = {"hada_t1", "hada_t2"}
        need = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} | (tucker if keys & tucker else set())
        return ", ".join(sorted(need - keys))
    if keys & _LOKR_KEYS:
        lack = [] if "lokr_w1" in keys or {"lokr_w1_a", "lokr_w1_b"} <= keys else ["lokr_w1 (or lokr_w1_a/_b)"]
        if not ("lokr_w2" in keys or {"lokr_w2_a", "lokr_w2_b"} <= keys):
            lack.append("lokr_w2 (or lokr_w2_a/_b)")
        return ", ".join(lack)
    return "" if "diff" in keys else "diff"


def _checked(name: str, layer: str, made: AdapterLayer) -> AdapterLayer:
    """Check the factors' shapes agree by computing ΔW on the meta device (no arithmetic, no memory)."""
    meta = dataclasses.replace(made, **{f.name: getattr(made, f.name).to("meta") for f in dataclasses.fields(made)
                                        if torch.is_tensor(getattr(made, f.name))})
    try:
        meta.delta()
    except RuntimeError as e:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in made.tensors().items())
        raise AdapterFormatError(f"{name}: {layer} is a {made.kind} layer whose factors do not fit together "
                                 f"({shapes}).") from e
    return made


# ---- what an adapter was made for --------------------------------------------------------------
_CONTEXT_WIDTH = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
_BASE_VERSIONS = {"sd_v1": "SD 1.x", "sd_v1_v": "SD 1.x (v-prediction)", "sd_v2": "SD 2.x",
                  "sd_v2_v": "SD 2.x (v-prediction)", "sdxl_base_v1-0": "SDXL", "loramix_tiny": "the loramix tiny model"}
# ss_base_model_version -> SAI model spec architecture, implementation and default resolution, as kohya's
# `library/sai_model_spec.py` chooses them for a LoRA (SDXL LoRAs name the Stability implementation). A whole
# checkpoint names the Stability implementation for every SD family (kohya's `is_stable_diffusion_ckpt`).
_STABILITY_AI = "https://github.com/Stability-AI/generative-models"
_MODELSPEC = {
    "sd_v1": ("stable-diffusion-v1", "diffusers", 512),
    "sd_v1_v": ("stable-diffusion-v1", "diffusers", 512),
    "sd_v2": ("stable-diffusion-v2-512", "diffusers", 512),
    "sd_v2_v": ("stable-diffusion-v2-768-v", "diffusers", 768),
    "sdxl_base_v1-0": ("stable-diffusion-xl-v1-base", _STABILITY_AI, 1024),
    "loramix_tiny": ("loramix-tiny", "diffusers", 64),
}


def modelspec(base_model_version: str, title: str, timestamp: float, resolution: int | str | None = None,
              prediction_type: str | None = None, merged_from: str | None = None, lora: bool = True) -> dict[str, str]:
    """The `modelspec.*` keys (SAI model spec 1.0.1) that kohya writes into a LoRA (or, with `lora=False`,
    into a whole checkpoint), or {} for an unknown base.

    As kohya's `build_metadata(..., lora=True)`: architecture `<arch>/lora` (`<arch>` for a checkpoint, whose
    implementation is the Stability-AI generative-models URL for SD 1.x / 2.x too), the date as
    `datetime.fromtimestamp(int(timestamp)).isoformat()`, resolution `WxH` (the base's default when not
    given), prediction type `v` or `epsilon`; `implementation_version` names loramix where kohya names
    its commit.
    """
    if base_model_version not in _MODELSPEC:
        return {}
    arch, implementation, side = _MODELSPEC[base_model_version]
    if not lora and base_model_version != "loramix_tiny":
        implementation = _STABILITY_AI
    if prediction_type is None:
        prediction_type = "v_prediction" if base_model_version.endswith("_v") else "epsilon"
    if resolution is None or isinstance(resolution, int):
        resolution = f"{resolution or side}x{resolution or side}"
    spec = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": f"{arch}/lora" if lora else arch,
        "modelspec.implementation": implementation,
        "modelspec.title": title,
        "modelspec.resolution": resolution,
        "modelspec.date": datetime.datetime.fromtimestamp(int(timestamp)).isoformat(),
        "modelspec.prediction_type": "v" if prediction_type == "v_prediction" else "epsilon",
        "modelspec.implementation_version": f"loramix/{__version__}",
    }
    if merged_from is not None:
        spec["modelspec.merged_from"] = merged_from
    return spec


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
            width = layer.in_features
            return _CONTEXT_WIDTH.get(width, f"a model with {width}-wide text conditioning")
    return "an unknown base model"


def loramix_config(adapter: LoraAdapter) -> dict | None:
    """The loramix training config stored in a file's metadata, if it was made by loramix (its paths are base
    names: `loramix.formats.published`)."""
    text = adapter.metadata.get("loramix_config")
    return json.loads(text) if text else None
