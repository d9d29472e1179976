"""Model families: how to load a base model, encode text and name LoRA keys, one small class each.

The trainer and mixer only talk to a `ModelFamily`; no `if sdxl:` elsewhere. Families are found in
a registry by inspecting the loaded UNet config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from loramix.core.errors import LoramixError

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
    text_encoder_2: Any = None  # SDXL's second (OpenCLIP bigG) encoder
    tokenizer_2: Any = None

    def __post_init__(self):
        # Each load makes its own family instance; it records the loaded model's prediction type, which
        # kohya's `ss_base_model_version` includes (`sd_v2_v`). A class passed by mistake is left alone.
        if isinstance(self.family, ModelFamily) and self.noise_scheduler is not None:
            self.family.prediction_type = self.prediction_type

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    def models(self) -> list:
        """Every torch module of the base model."""
        return [m for m in (self.unet, self.vae, self.text_encoder, self.text_encoder_2) if m is not None]


class ModelFamily:
    """SD 1.x-shaped models: one CLIP text encoder, epsilon or v prediction, diffusers UNet names."""

    name = "sd1"
    ldm_layout = "sd1"  # how loramix.formats.single_file writes this family as one checkpoint
    label = "SD 1.x"
    ss_base_model_version = "sd_v1"
    v_suffix = True  # kohya writes sd_v1_v / sd_v2_v for a v-prediction model of this family
    prediction_type = "epsilon"  # of the loaded model; set by `Components`
    unet_prefix = "lora_unet"
    text_encoder_prefix = "lora_te"
    text_encoder_targets = ["q_proj", "k_proj", "v_proj", "out_proj"]

    @classmethod
    def matches(cls, unet_config: dict) -> bool:
        return unet_config.get("cross_attention_dim") == 768 and not unet_config.get("addition_embed_type")

    @property
    def base_model_version(self) -> str:
        """kohya's `ss_base_model_version` (its `get_model_version_str_for_sd1_sd2`): `sd_v2_v` for v-prediction."""
        v = self.v_suffix and self.prediction_type == "v_prediction"
        return self.ss_base_model_version + ("_v" if v else "")

    # ---- loading ------------------------------------------------------------------------------
    def load(self, source: str, revision: str = "") -> Components:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        kw = {"revision": revision} if revision else {}
        with friendly_load_errors(source):
            return Components(
                family=self,
                source=source,
                unet=UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kw),
                vae=AutoencoderKL.from_pretrained(source, subfolder="vae", **kw),
                text_encoder=CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw),
                tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw),
                noise_scheduler=DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kw),
            )

    # ---- text and conditioning ---------------------------------------------------------------
    @staticmethod
    def _ids(tokenizer, captions: list[str]):
        return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids

    def encode_text(self, components: Components, captions: list[str], device) -> dict:
        """Caption embeddings as tensors with the batch first (cacheable per caption)."""
        ids = self._ids(components.tokenizer, captions).to(device)
        return {"encoder_hidden_states": components.text_encoder(ids, return_dict=False)[0]}

    def unet_kwargs(self, cond: dict, geometry) -> dict:
        """UNet keyword arguments from the text embeddings and each sample's
        (original_h, original_w, crop_top, crop_left, target_h, target_w)."""
        return {"encoder_hidden_states": cond["encoder_hidden_states"]}

    def kohya_path(self, prefix: str, module_path: str, model) -> str:
        """The module path kohya names a layer by (diffusers names for SD 1.x/2.x)."""
        return module_path

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
    ldm_layout = "sd2"
    label = "SD 2.x"
    ss_base_model_version = "sd_v2"

    @classmethod
    def matches(cls, unet_config: dict) -> bool:
        return unet_config.get("cross_attention_dim") == 1024 and not unet_config.get("addition_embed_type")


class TinyFamily(ModelFamily):
    """The embedded demo model and test models: SD 1.x layout at toy sizes."""

    name = "tiny"
    ldm_layout = "sd1"  # SD 1.x layout at toy sizes
    label = "the loramix tiny model"
    ss_base_model_version = "loramix_tiny"
    v_suffix = False

    @classmethod
    def matches(cls, unet_config: dict) -> bool:
        dim = unet_config.get("cross_attention_dim")
        return isinstance(dim, int) and dim < 768 and not unet_config.get("addition_embed_type")


class SDXLFamily(ModelFamily):
    """SDXL: two text encoders (penultimate states concatenated, pooled bigG), size/crop time ids,
    and kohya's LoRA names taken from the original (LDM) UNet layout."""

    name = "sdxl"
    ldm_layout = "sdxl"
    label = "SDXL"
    ss_base_model_version = "sdxl_base_v1-0"
    v_suffix = False

    @classmethod
    def matches(cls, unet_config: dict) -> bool:
        return unet_config.get("addition_embed_type") == "text_time"

    def load(self, source: str, revision: str = "") -> Components:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        kw = {"revision": revision} if revision else {}
        with friendly_load_errors(source):
            return Components(
                family=self, source=source,
                unet=UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kw),
                vae=AutoencoderKL.from_pretrained(source, subfolder="vae", **kw),
                text_encoder=CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw),
                tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw),
                noise_scheduler=DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kw),
                text_encoder_2=CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2", **kw),
                tokenizer_2=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2", **kw),
            )

    def encode_text(self, components: Components, captions: list[str], device) -> dict:
        import torch

        states = []
        for tokenizer, encoder in ((components.tokenizer, components.text_encoder),
                                   (components.tokenizer_2, components.text_encoder_2)):
            out = encoder(self._ids(tokenizer, captions).to(device), output_hidden_states=True)
            states.append(out.hidden_states[-2])
        return {"encoder_hidden_states": torch.cat(states, dim=-1), "text_embeds": out[0]}

    def unet_kwargs(self, cond: dict, geometry) -> dict:
        import torch

        emb = cond["text_embeds"]
        time_ids = torch.tensor(geometry, dtype=emb.dtype, device=emb.device).reshape(len(geometry), 6)
        return {"encoder_hidden_states": cond["encoder_hidden_states"],
                "added_cond_kwargs": {"text_embeds": emb, "time_ids": time_ids}}

    def kohya_path(self, prefix: str, module_path: str, model) -> str:
        if prefix != self.unet_prefix:
            return module_path
        from loramix.formats.ldm_layout import unet_module_to_ldm

        return unet_module_to_ldm(module_path, dict(model.config))

    def text_encoders(self, components: Components) -> dict[str, Any]:
        return {"lora_te1": components.text_encoder, "lora_te2": components.text_encoder_2}

    def set_text_encoder(self, components: Components, prefix: str, module: Any) -> None:
        if prefix == "lora_te2":
            components.text_encoder_2 = module
        else:
            components.text_encoder = module

    def pipeline(self, components: Components):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=components.vae, text_encoder=components.text_encoder, text_encoder_2=components.text_encoder_2,
            tokenizer=components.tokenizer, tokenizer_2=components.tokenizer_2, unet=components.unet,
            scheduler=_sampling_scheduler(components.noise_scheduler))


FAMILIES: list[type[ModelFamily]] = [ModelFamily, SD2Family, SDXLFamily, TinyFamily]


def detect_family(unet_config: dict) -> ModelFamily:
    for family in FAMILIES:
        if family.matches(unet_config):
            return family()
    raise LoramixError(
        f"This base model's UNet (cross_attention_dim={unet_config.get('cross_attention_dim')}, "
        f"addition_embed_type={unet_config.get('addition_embed_type')}) is not a supported family "
        f"({', '.join(f.name for f in FAMILIES)}).")


class friendly_load_errors:
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
