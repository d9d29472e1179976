"""Read and write single-file Stable Diffusion checkpoints (the original LDM layout) for SD 1.x/2.x/SDXL.

Reading is diffusers' own code, offline. The UNet and VAE come from `from_single_file(checkpoint,
config=<folder>, subfolder=..., local_files_only=True)`, the text encoders from diffusers'
`create_diffusers_clip_model_from_ldm`, which is what `StableDiffusionPipeline.from_single_file` calls
for them. This works offline for SD 1.x, SD 2.x (v-prediction), SDXL and tiny models of each layout
(the loramix tiny model is written in the SD 1.x layout). Writing (`save_single_file`,
`ldm_layout`) stays hand-written: diffusers has no writer.

What diffusers is given, and why (measured with diffusers 0.42, transformers 5.23):
- `config=` is a temporary diffusers config folder (`unet/config.json`, ...). It is written from the
  shipped `loramix/configs/<family>/*.json` (the real SD 1.5, SD 2.x and SDXL base configs), replaced
  by the configs `save_single_file` records in the file's metadata, then updated by
  `config_overrides` and the prediction type. `config=` takes only a hub id or a folder, never a
  dict. Without it, diffusers looks up a hub repo (`stable-diffusion-v1-5/stable-diffusion-v1-5`),
  which fails offline with "does not appear to have a file named config.json".
- The checkpoint is passed as tensors that `read_checkpoint` has already read. That function refuses
  pickles unless asked and names a LoRA or a diffusers component file (`check_is_checkpoint`).
  A pipeline's `from_single_file` takes only a path and would read the file itself.
- `torch_dtype` is the file's own dtype unless one is given. Otherwise diffusers casts every weight
  to float32, and a half-precision file would double in memory.
- Weights the file lacks are refused with a sentence. diffusers' text encoder reader leaves them on
  the `meta` device without an error, and its UNet/VAE reader fails on them with "Cannot copy out of
  meta tensor".

Still hand-written on the reading side, about 60 lines:
- `detect_family`. diffusers' `infer_diffusers_model_type` answers "v1" for tiny SD 2.x and SDXL
  files, for an SD 2.x UNet known only by its 1024-wide cross-attention, and for an SDXL UNet known
  only by `label_emb`. It keys on `input_blocks.2.1`'s width and on OpenCLIP layer 9, and it answers
  with a hub repo, which cannot be reached offline.
- `_prediction_type`: the `v_pred` marker, the recorded metadata, or the SD 2.x 768 file name.
  diffusers reads none of these. It takes the prediction type from the config of the hub repo it
  infers, or, on its legacy path, from the checkpoint's `global_step` (875000 means epsilon), which a
  `.safetensors` file does not have.
- `_tokenizer`. A checkpoint holds no tokenizer, so one is looked for in this order:
  `tokenizer=` (and `tokenizer_2=` for SDXL); a `tokenizer/` (`tokenizer_2/`) folder beside the
  checkpoint; the local Hugging Face cache, which is never downloaded into; and, when the text
  encoder has CLIP's 49,408-token vocabulary, the CLIP tokenizer built from the vendored BPE file
  (`clip_vocab`), padding with "!" for the OpenCLIP encoders of SD 2.x and SDXL. So a model file
  from a model site loads with nothing beside it. The tiny model has its own 631-token vocabulary,
  so it needs its `tokenizer/` folder beside the file.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from loramix.core.errors import LoramixError
from loramix.core.writer import atomic_path
from loramix.formats.families import FAMILIES, ModelFamily
from loramix.formats.ldm_layout import (
    TEXT_ENCODERS,
    UNET_PREFIX,
    VAE_PREFIX,
    text_encoder_state_to_ldm,
    unet_state_to_ldm,
    vae_state_to_ldm,
)
from loramix.formats.lora_io import file_hashes_of, hashed_metadata, modelspec

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parents[1] / "configs"
UNSAFE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# where a tokenizer may already sit in the local Hugging Face cache: family -> (repo, subfolder) per tokenizer
_CACHED_TOKENIZERS = {
    "sd1": [("openai/clip-vit-large-patch14", "")],
    "sd2": [("stabilityai/stable-diffusion-2-1", "tokenizer")],
    "sdxl": [("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer"),
             ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer_2")],
}
# the CLIP tokenizers of SD 1.x / SDXL's first encoder pad with <|endoftext|>, OpenCLIP's (SD 2.x, SDXL's second) with "!"
_PAD_TOKEN = {"clip": "<|endoftext|>", "openclip": "!"}


class CheckpointFormatError(LoramixError):
    """A file cannot be read as a single-file Stable Diffusion checkpoint."""


# ---- writing --------------------------------------------------------------------------------------
def _components_of(source: Any) -> dict:
    """A pipeline, a dict of components or a `families.Components`: the named parts as a dict."""
    if isinstance(source, dict):
        parts = dict(source)
    elif hasattr(source, "components"):
        parts = dict(source.components)
    else:
        parts = {k: getattr(source, k) for k in ("unet", "vae", "text_encoder", "text_encoder_2", "noise_scheduler")
                 if getattr(source, k, None) is not None}
    parts.setdefault("scheduler", parts.get("noise_scheduler"))
    return parts


def _layout(family: Any) -> str:
    """The LDM layout name of a family given as "sd1"/"sd2"/"sdxl" or as an object with `ldm_layout`/`name`."""
    name = getattr(family, "ldm_layout", None) or getattr(family, "name", family)
    if name not in TEXT_ENCODERS:
        raise CheckpointFormatError(f"family {name!r} has no single-file (LDM) layout; use one of "
                                    f"{', '.join(TEXT_ENCODERS)}")
    return name


def _config_of(model) -> dict:
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
    return {**{k: v for k, v in config.items() if k != "_name_or_path"}, "_class_name": type(model).__name__}


def save_single_file(pipe_or_components: Any, path: str | Path, family: Any, *, dtype: torch.dtype | None = None,
                     prediction_type: str | None = None, metadata: dict[str, str] | None = None, **rules) -> Path:
    """Write one `.safetensors` checkpoint in the LDM layout through the writer (`rules`: replace, within).

    `family` is "sd1", "sd2" or "sdxl" (or a family object). The metadata records the family, the
    prediction type and every component's config, so `load_single_file` rebuilds the same architecture;
    and identifies the file as kohya does a checkpoint: `ss_base_model_version`, `ss_v2`, `modelspec.*`
    (title: the file name) and the `sshs_*` hashes of the tensors as written (`lora_io.file_hashes`).
    `metadata` adds keys or replaces those (the mixer's bake names what was baked in).
    """
    path, layout = Path(path), _layout(family)
    if path.suffix != ".safetensors":
        raise CheckpointFormatError(f"{path}: single-file checkpoints are written as .safetensors; change the name")
    parts = _components_of(pipe_or_components)
    needed = ["unet", "vae"] + [name for name, _, _ in TEXT_ENCODERS[layout]]
    missing = [n for n in needed if parts.get(n) is None]
    if missing:
        raise CheckpointFormatError(f"{path}: cannot write a {layout} checkpoint without {', '.join(missing)}")
    unet, vae = parts["unet"], parts["vae"]
    state = {**unet_state_to_ldm(unet.state_dict(), unet.config), **vae_state_to_ldm(vae.state_dict(), vae.config)}
    configs = {"unet": _config_of(unet), "vae": _config_of(vae)}
    for name, kind, prefix in TEXT_ENCODERS[layout]:
        state.update(text_encoder_state_to_ldm(parts[name].state_dict(), kind, prefix))
        configs[name] = _config_of(parts[name])
    scheduler = parts.get("scheduler")
    if scheduler is not None:
        configs["scheduler"] = _config_of(scheduler)
    prediction_type = prediction_type or (scheduler.config.prediction_type if scheduler is not None else "epsilon")
    if prediction_type == "v_prediction":
        state["v_pred"] = torch.tensor([])  # the marker ComfyUI and others look for
    version = _base_model_version(family, layout, prediction_type)
    metadata = {"format": "pt", "loramix.family": layout, "loramix.prediction_type": prediction_type,
                "loramix.configs": json.dumps(configs), "ss_base_model_version": version, "ss_v2": str(layout == "sd2"),
                **modelspec(version, path.stem, time.time(), prediction_type=prediction_type, lora=False),
                **(metadata or {})}
    _write(state, path, metadata, dtype, **rules)
    return path


def _base_model_version(family: Any, layout: str, prediction_type: str) -> str:
    """kohya's `ss_base_model_version` of the checkpoint, by the family's own rule
    (`ModelFamily.base_model_version`) for `prediction_type`; a family named by its layout is that family."""
    family = copy.copy(family) if isinstance(family, ModelFamily) else next(f for f in FAMILIES if f.name == layout)()
    family.prediction_type = prediction_type
    return family.base_model_version


def _write(state: dict, path: Path, metadata: dict, dtype: torch.dtype | None, **rules) -> None:
    from safetensors.torch import save_file

    tensors, seen = {}, set()
    for key, value in state.items():
        value = value.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        if value.numel() and value.data_ptr() in seen:  # safetensors refuses shared storage
            value = value.clone()
        seen.add(value.data_ptr())
        tensors[key] = value.contiguous()
    with atomic_path(path, **rules) as tmp:  # hashed from the temp file, then written over it with the hashes
        save_file(tensors, str(tmp), metadata=hashed_metadata(metadata))
        metadata = {**metadata, **file_hashes_of(tmp)}
        save_file(tensors, str(tmp), metadata=metadata)


# ---- reading --------------------------------------------------------------------------------------
def read_checkpoint(path: str | Path, allow_unsafe: bool = False) -> tuple[dict, dict]:
    """The tensors and metadata of a checkpoint file; pickled files only with `allow_unsafe=True`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: no such checkpoint file")
    if path.suffix.lower() in UNSAFE_SUFFIXES:
        if not allow_unsafe:
            raise CheckpointFormatError(
                f"{path}: {path.suffix} files are Python pickles and can run code when opened. Convert it to "
                ".safetensors, or pass allow_unsafe=True to read its tensors (torch.load with weights_only=True).")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses anything but tensors and plain containers
            raise CheckpointFormatError(f"{path}: cannot be read as plain tensors ({e}); convert it to .safetensors") from e
        data = data.get("state_dict", data) if isinstance(data, dict) else data
        return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}, {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:
        raise CheckpointFormatError(f"{path}: not a readable .safetensors file ({e})") from e


def check_is_checkpoint(checkpoint: dict, path: str | Path = "checkpoint") -> None:
    """Refuse LoRA adapters and other files that are not LDM-layout base models, saying what they are."""
    keys = list(checkpoint)
    if keys and all(k.startswith(("lora_", "lycoris_")) or ".lora_" in k or ".alpha" in k for k in keys):
        raise CheckpointFormatError(f"{path}: this is a LoRA adapter, not a base model; load it as an adapter "
                                    "(in the mixer) on top of a base model")
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        hint = (" It looks like one diffusers component file: give the diffusers model folder instead."
                if any(k.startswith(("down_blocks.", "encoder.down_blocks.", "text_model.")) for k in keys) else "")
        raise CheckpointFormatError(f"{path}: not a single-file Stable Diffusion checkpoint: none of its {len(keys)} "
                                    f"keys is under '{UNET_PREFIX}'.{hint}")


def detect_family(checkpoint: dict, path: str | Path = "checkpoint") -> str:
    """"sd1", "sd2" or "sdxl" from the keys (text encoder layouts) or, failing that, the cross-attention width."""
    check_is_checkpoint(checkpoint, path)
    keys = list(checkpoint)
    for family, encoders in reversed(TEXT_ENCODERS.items()):  # sdxl first: its first prefix is unique
        if all(any(k.startswith(prefix) for k in keys) for _, _, prefix in encoders):
            return family
    if UNET_PREFIX + "label_emb.0.0.weight" in checkpoint:
        return "sdxl"
    width = next((v.shape[-1] for k, v in checkpoint.items() if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")), None)
    if width in (768, 1024):
        return {768: "sd1", 1024: "sd2"}[width]
    raise CheckpointFormatError(f"{path}: cannot tell SD 1.x, 2.x and SDXL apart (no text encoder, cross-attention "
                                f"width {width}); pass family='sd1', 'sd2' or 'sdxl'")


def _prediction_type(checkpoint: dict, metadata: dict, path: Path, family: str, explicit: str | None) -> str | None:
    if explicit:
        if explicit not in ("epsilon", "v_prediction", "v"):
            raise CheckpointFormatError(f"prediction_type={explicit!r}: use 'epsilon' or 'v_prediction'")
        return "v_prediction" if explicit == "v" else explicit
    if "v_pred" in checkpoint:
        return "v_prediction"
    recorded = metadata.get("loramix.prediction_type") or metadata.get("modelspec.prediction_type")
    if recorded:
        return "v_prediction" if recorded in ("v", "v_prediction") else recorded
    if family == "sd2" and re.search(r"v[-_]?pred|768", path.name, re.IGNORECASE):
        return "v_prediction"  # SD 2.x 768 px checkpoints (v2-1_768-ema-pruned, 768-v-ema) predict v
    return None


def _configs(family: str, metadata: dict, overrides: dict | None, prediction_type: str | None) -> dict:
    """Shipped configs, replaced by the ones recorded in the file, then updated by `overrides`."""
    configs = {p.stem: json.loads(p.read_text()) for p in (CONFIG_DIR / family).glob("*.json")}
    variant = configs.pop("v_prediction", {})
    if prediction_type == "v_prediction":
        for name, changes in variant.items():
            configs[name].update(changes)
    if "loramix.configs" in metadata:
        configs.update(json.loads(metadata["loramix.configs"]))
    for name, changes in (overrides or {}).items():
        configs[name] = {**configs.get(name, {}), **changes}
    if prediction_type:
        configs["scheduler"]["prediction_type"] = prediction_type
    return configs


def _model_class(name: str):
    import diffusers
    import transformers

    if name in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        return getattr(transformers, name)
    if name in ("UNet2DConditionModel", "AutoencoderKL") or (name.endswith("Scheduler") and hasattr(diffusers, name)):
        return getattr(diffusers, name)
    raise CheckpointFormatError(f"config class {name!r} is not one a single-file checkpoint can hold")


@contextlib.contextmanager
def _config_folder(configs: dict, names: list[str]):
    """The resolved configs as a scratch diffusers model folder (`unet/config.json`, ...): the only form of an
    architecture that diffusers' `from_single_file(config=...)` takes besides a hub id. Removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="loramix-configs-") as folder:
        for name in names:
            (Path(folder) / name).mkdir()
            (Path(folder) / name / "config.json").write_text(json.dumps(configs[name]), encoding="utf-8")
        yield Path(folder)


def _file_dtype(checkpoint: dict, prefix: str) -> torch.dtype | None:
    """The floating dtype the file stores a component in (diffusers would cast it to float32)."""
    return next((v.dtype for k, v in checkpoint.items() if k.startswith(prefix) and v.is_floating_point()), None)


def _read_component(name: str, configs: dict, checkpoint: dict, folder: Path, path: Path, family: str,
                    torch_dtype: torch.dtype | None):
    """One component through diffusers' own single-file code: `from_single_file` for the UNet and VAE,
    `create_diffusers_clip_model_from_ldm` (what `from_single_file` of a pipeline uses) for text encoders."""
    from diffusers.loaders.single_file_utils import (
        SingleFileComponentError,
        create_diffusers_clip_model_from_ldm,
    )

    cls = _model_class(configs[name]["_class_name"])
    prefix = {"unet": UNET_PREFIX, "vae": VAE_PREFIX, **{n: p for n, _, p in TEXT_ENCODERS[family]}}[name]
    dtype = torch_dtype or _file_dtype(checkpoint, prefix)

    try:
        if hasattr(cls, "from_single_file"):
            model = cls.from_single_file(checkpoint, config=str(folder), subfolder=name, local_files_only=True,
                                         torch_dtype=dtype)
        else:
            model = create_diffusers_clip_model_from_ldm(cls, checkpoint, subfolder=name, config=str(folder),
                                                         local_files_only=True, torch_dtype=dtype)
    except (ValueError, KeyError, IndexError, RuntimeError, SingleFileComponentError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "meta" in first:  # diffusers left weights the file lacks on `meta`, then failed to move them
            first = "some of the weights it needs are missing from the file"
        raise CheckpointFormatError(f"{path}: the {name} weights do not fit the {family} architecture ({first}). "
                                    f"Pass family=... if the detection was wrong, or config_overrides="
                                    f"{{'{name}': ...}} for a non-standard architecture.") from e
    # diffusers' text encoder reader leaves a weight the file lacks on the `meta` device without failing
    missing = [k for k, v in [*model.named_parameters(), *model.named_buffers()] if v.is_meta]
    if missing:
        raise CheckpointFormatError(
            f"{path}: the {name} weights do not fit the {family} architecture: {len(missing)} missing, e.g. "
            f"'{missing[0]}'. Pass family=... if the detection was wrong, or config_overrides={{'{name}': ...}} "
            "for a non-standard architecture.")
    return model.eval()


def _tokenizer(given: Any, folder: Path, cached: tuple[str, str] | None, family: str, path: Path,
               pad_token: str, vocab_size: int | None):
    """The tokenizer passed, else one in `folder` beside the checkpoint, else one in the local Hugging Face
    cache (never downloaded), else the CLIP tokenizer built from the vendored BPE file (`clip_vocab`)
    when the text encoder has CLIP's 49,408-token vocabulary."""
    from huggingface_hub import try_to_load_from_cache
    from transformers import CLIPTokenizer

    from loramix.formats.clip_vocab import CLIP_VOCAB_SIZE, sd_clip_tokenizer

    if given is not None and not isinstance(given, (str, Path)):
        return given
    source = Path(given) if given is not None else folder
    if given is None and not folder.is_dir() and cached:
        vocab = try_to_load_from_cache(cached[0], f"{cached[1]}/vocab.json" if cached[1] else "vocab.json")
        source = Path(vocab).parent if isinstance(vocab, str) else folder
    if (source / "vocab.json").is_file() or (source / "tokenizer.json").is_file():
        # transformers 5 quietly returns a 2-token tokenizer for a folder without vocabulary: checked above
        return CLIPTokenizer.from_pretrained(str(source))
    if given is None and vocab_size == CLIP_VOCAB_SIZE:
        log.info("%s: no %s/ beside it; using the CLIP tokenizer built from the vendored vocabulary (pad %r)",
                 path, folder.name, pad_token)
        return sd_clip_tokenizer(pad_token=pad_token)
    raise CheckpointFormatError(
        f"{path}: a single-file checkpoint holds no tokenizer, and {source} has none"
        + (f" (its text encoder has {vocab_size} tokens, not CLIP's {CLIP_VOCAB_SIZE})" if given is None else "")
        + f". Put the {family} CLIP tokenizer files (vocab.json, merges.txt, tokenizer_config.json) in "
        f"{folder}/, or pass {folder.name}=<folder or CLIPTokenizer>; take them from the '{folder.name}' folder "
        f"of the matching diffusers model{f' ({cached[0]})' if cached else ''}.")


def load_single_file(path: str | Path, *, family: str | None = None, prediction_type: str | None = None,
                     config_overrides: dict[str, dict] | None = None, tokenizer: Any = None, tokenizer_2: Any = None,
                     torch_dtype: torch.dtype | None = None, allow_unsafe: bool = False) -> dict:
    """Read an LDM-layout checkpoint into diffusers components: `unet`, `vae`, `text_encoder`, `tokenizer`,
    `scheduler` (+ `text_encoder_2`, `tokenizer_2` for SDXL), ready for the matching diffusers pipeline."""
    path = Path(path)
    checkpoint, metadata = read_checkpoint(path, allow_unsafe=allow_unsafe)
    check_is_checkpoint(checkpoint, path)
    family = family or metadata.get("loramix.family") or detect_family(checkpoint, path)
    family = _layout(family)
    prediction = _prediction_type(checkpoint, metadata, path, family, prediction_type)
    configs = _configs(family, metadata, config_overrides, prediction)
    if not any(k.startswith(VAE_PREFIX) for k in checkpoint):
        raise CheckpointFormatError(f"{path}: has no VAE weights ('{VAE_PREFIX}...'); this loader needs a full "
                                    "checkpoint (UNet, VAE and text encoders)")
    given = {"tokenizer": tokenizer, "tokenizer_2": tokenizer_2}
    out = {}  # tokenizers first: a missing one fails before minutes of weight loading
    for (name, kind, _), cached in zip(TEXT_ENCODERS[family], _CACHED_TOKENIZERS[family]):
        tok = name.replace("text_encoder", "tokenizer")
        out[tok] = _tokenizer(given[tok], path.parent / tok, cached, family, path, _PAD_TOKEN[kind],
                              configs[name].get("vocab_size"))
    names = ["unet", "vae"] + [name for name, _, _ in TEXT_ENCODERS[family]]
    with _config_folder(configs, names) as folder:
        for name in names:
            out[name] = _read_component(name, configs, checkpoint, folder, path, family, torch_dtype)
    scheduler = dict(configs["scheduler"])
    out["scheduler"] = _model_class(scheduler.pop("_class_name")).from_config(scheduler)
    return out
