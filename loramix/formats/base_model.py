"""Load a base model from wherever the user names it: a diffusers folder, a hub id or one checkpoint file.

This is the one entry the trainer and the mixer call. It sits above `families` (what each model family is
and how its folder loads) and `single_file` (the LDM-layout reader, which needs the families' configs), so
that neither of those imports the other back.
"""

from __future__ import annotations

import logging
from pathlib import Path

from loramix.core.errors import LoramixError
from loramix.formats.families import Components, detect_family, friendly_load_errors
from loramix.formats.single_file import load_single_file

log = logging.getLogger(__name__)


def default_base_model() -> str:
    from loramix.embedded import EMBEDDED_MODEL

    return str(EMBEDDED_MODEL)


def load_base_model(source: str = "", revision: str = "") -> Components:
    """Load a base model from a diffusers folder or a hub id; the family is read from its UNet config."""
    source = source or default_base_model()
    path = Path(source).expanduser()
    if path.suffix.lower() in (".safetensors", ".ckpt", ".pt"):
        return load_checkpoint_file(path)
    if path.exists() and not (path / "unet" / "config.json").is_file():
        raise LoramixError(f"model.base_model: {path} is not a diffusers model folder (no unet/config.json).")
    from diffusers import UNet2DConditionModel

    with friendly_load_errors(source):
        kw = {"revision": revision} if revision else {}
        unet_config = UNet2DConditionModel.load_config(str(path) if path.exists() else source,
                                                       subfolder="unet", **kw)
    family = detect_family(unet_config)
    log.info("Base model %s: family %s", source, family.name)
    return family.load(str(path) if path.exists() else source, revision)


def load_checkpoint_file(path: Path, allow_unsafe: bool = False) -> Components:
    """A single-file checkpoint in the original (LDM) layout, as model sites distribute them, read offline
    by diffusers with the family configs shipped in loramix/configs. The tokenizers come from folders next
    to the file, or are built from the vendored CLIP vocabulary (see `loramix.formats.single_file`)."""
    from diffusers import DDPMScheduler


    parts = load_single_file(path, allow_unsafe=allow_unsafe)
    family = detect_family(dict(parts["unet"].config))
    return Components(family=family, source=str(path), unet=parts["unet"], vae=parts["vae"],
                      text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                      noise_scheduler=DDPMScheduler.from_config(parts["scheduler"].config),
                      text_encoder_2=parts.get("text_encoder_2"), tokenizer_2=parts.get("tokenizer_2"))


def unet_config_of(source: str = "") -> dict | None:
    """The UNet config of a diffusers folder (empty: the embedded model), read without loading a weight; None
    for a hub id, a single-file checkpoint or a folder without one."""
    import json

    path = Path(source or default_base_model()).expanduser() / "unet" / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_toy_sized(unet_config: dict) -> bool:
    """A toy-sized UNet (the embedded demo model, the test models, an SDXL-layout test model too): text width under
    SD 1.x's 768 (SD 1.x 768, SD 2.x 1024, SDXL 2048). Its layers are too small to gain from bf16."""
    dim = unet_config.get("cross_attention_dim")
    return isinstance(dim, int) and dim < 768


def cpu_bf16_pays(unet_config: dict | None) -> bool:
    """Is bf16 faster than fp32 on this CPU for this model: the CPU multiplies bf16 natively (AVX-512-bf16 or AMX)
    and the model is full-size (not `is_toy_sized`; None, a hub id or single file not read yet, counts as
    full-size). The one rule behind `train.mixed_precision = "auto"` and the mixer's `precision="auto"`."""
    from loramix.core.cpu_features import native_bf16

    return native_bf16() and not (unet_config is not None and is_toy_sized(unet_config))
