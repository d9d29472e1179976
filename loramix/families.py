"""Model families: how to load a base model, encode text and name LoRA keys, one small class each.

The trainer and mixer only talk to a `ModelFamily`; no `if sdxl:` elsewhere. Families are found in
a registry by inspecting the loaded UNet config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loramix.errors import LoramixError

log = logging.getLogger(__name__)


@dataclass
class Components:
    """The pieces of a loaded base model."""

    family: ModelFamily
    source: str
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type


class ModelFamily:
    """SD 1.x-shaped models: one CLIP text encoder, epsilon or v prediction, diffusers UNet names."""

    name = "sd1"
    label = "SD 1.x"
    ss_base_model_version = "sd_v1"
    unet_prefix = "lora_unet"
    text_encoder_prefix = "lora_te"
    text_encoder_targets = ["q_proj", "k_proj", "v_proj", "out_proj"]

    @classmethod
    def matches(cls, unet_config: dict) -> bool:
        return unet_config.get("cross_attention_dim") == 768 and not unet_config.get("addition_embed_type")

    # ---- loading ------------------------------------------------------------------------------
    def load(self, source: str, revision: str = "") -> Components:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        kw = {"revision": revision} if revision else {}
        with _friendly_load_errors(source):
            return Components(
                family=self,
                source=source,
                unet=UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kw),
                vae=AutoencoderKL.from_pretrained(source, subfolder="vae", **kw),
                text_encoder=CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw),
                tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw),
                noise_scheduler=DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kw),
            )

    # ---- text --------------------------------------------------------------------------------
    def tokenize(self, components: Components, captions: list[str]):
        tok = components.tokenizer
        return tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids

    def encode_text(self, components: Components, input_ids) -> dict:
        """Returns the UNet conditioning as keyword arguments."""
        hidden = components.text_encoder(input_ids, return_dict=False)[0]
        return {"encoder_hidden_states": hidden}

    def text_encoders(self, components: Components) -> dict[str, Any]:
        """Text encoder modules by their kohya key prefix."""
        return {self.text_encoder_prefix: components.text_encoder}

    def set_text_encoder(self, components: Components, prefix: str, module: Any) -> None:
        """Swap in a wrapped (e.g. distributed) text encoder under its kohya prefix."""
        components.text_encoder = module

    def pipeline(self, components: Components):
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
            unet=components.unet, scheduler=_sampling_scheduler(components.noise_scheduler),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)


class SD2Family(ModelFamily):
    name = "sd2"
    label = "SD 2.x"
    ss_base_model_version = "sd_v2"

    @classmethod
    def matches(cls, unet_config: dict) -> bool:
        return unet_config.get("cross_attention_dim") == 1024 and not unet_config.get("addition_embed_type")


class TinyFamily(ModelFamily):
    """The embedded demo model and test models: SD 1.x layout at toy sizes."""

    name = "tiny"
    label = "the loramix tiny model"
    ss_base_model_version = "loramix_tiny"

    @classmethod
    def matches(cls, unet_config: dict) -> bool:
        dim = unet_config.get("cross_attention_dim")
        return isinstance(dim, int) and dim < 768 and not unet_config.get("addition_embed_type")


FAMILIES: list[type[ModelFamily]] = [ModelFamily, SD2Family, TinyFamily]


def detect_family(unet_config: dict) -> ModelFamily:
    for family in FAMILIES:
        if family.matches(unet_config):
            return family()
    raise LoramixError(
        f"This base model's UNet (cross_attention_dim={unet_config.get('cross_attention_dim')}, "
        f"addition_embed_type={unet_config.get('addition_embed_type')}) is not a supported family "
        f"({', '.join(f.name for f in FAMILIES)}).")


def default_base_model() -> str:
    from loramix.embedded import EMBEDDED_MODEL

    return str(EMBEDDED_MODEL)


def load_base_model(source: str = "", revision: str = "") -> Components:
    """Load a base model from a diffusers folder or a hub id; the family is read from its UNet config."""
    source = source or default_base_model()
    path = Path(source).expanduser()
    if path.suffix in (".safetensors", ".ckpt"):
        raise LoramixError(f"model.base_model: single-file checkpoints ({path.name}) are not supported yet; "
                           "convert it to a diffusers folder or give a hub id.")
    if path.exists() and not (path / "unet" / "config.json").is_file():
        raise LoramixError(f"model.base_model: {path} is not a diffusers model folder (no unet/config.json).")
    from diffusers import UNet2DConditionModel

    with _friendly_load_errors(source):
        kw = {"revision": revision} if revision else {}
        unet_config = UNet2DConditionModel.load_config(str(path) if path.exists() else source,
                                                       subfolder="unet", **kw)
    family = detect_family(unet_config)
    log.info("Base model %s: family %s", source, family.name)
    return family.load(str(path) if path.exists() else source, revision)


class _friendly_load_errors:
    """Turn hub / file errors while loading a base model into one sentence naming the source."""

    def __init__(self, source: str):
        self.source = source

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, LoramixError):
            return False
        text = str(exc).splitlines()[0] if str(exc) else exc_type.__name__
        if "offline" in str(exc).lower() or "connect" in str(exc).lower() or exc_type.__name__ in (
                "LocalEntryNotFoundError", "OSError", "EnvironmentError"):
            raise LoramixError(f"model.base_model: cannot load {self.source!r}: {text}. If it is a hub id, "
                               "you need a network connection (or a local copy in the cache); if it is a "
                               "folder, check the path.") from exc
        return False


def _sampling_scheduler(noise_scheduler):
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(noise_scheduler.config)
