"""The training config: one typed dataclass tree that the CLI, the UI and preset TOML files all view.

Layering: defaults (here) -> preset TOML -> user TOML -> `--set section.field=value`.
Every field carries `metadata={"help": ...}` (CLI help and UI tooltip) and, where it has a fixed
set of values, `"choices"`; `validate()` checks those and the cross-field rules, naming the field.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loramix.core.errors import ConfigError
from loramix.core.paths import CAPTION_EXTENSIONS, caption_extension, plain_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SCHEMA_VERSION = 1
DEFAULT_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
FEED_FORWARD_MODULES = ["ff.net.0.proj", "ff.net.2"]
CONV_MODULES = ["conv1", "conv2", "conv_shortcut", "proj_in", "proj_out"]


def _f(default: Any, help: str, **meta: Any) -> Any:
    """A config field: default value plus help text and optional choices / min / max.

    An upper bound is stated at the end of the help, so the CLI help and the UI tooltip show it.
    """
    if "max" in meta:
        help = f"{help} At most {meta['max']:,}." if isinstance(meta["max"], int) else f"{help} At most {meta['max']:g}."
    meta["help"] = help
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    base_model: str = _f("", "Base model: a diffusers folder, a hub id or a single .safetensors checkpoint. "
                             "Empty = the embedded tiny demo model.")
    revision: str = _f("", "Hub revision (branch, tag or commit) when base_model is a hub id.")
    quantize: str = _f("none", "Store the frozen UNet in fewer bits while the adapter trains in full precision "
                               "(QLoRA), for GPUs with little memory. int8: torchao int8 weight-only on the UNet's "
                               "linear layers, CPU or GPU (pip install 'loramix[quant]'). nf4: bitsandbytes 4-bit "
                               "NF4 on the linear layers, the original QLoRA, CUDA only (pip install "
                               "'loramix[bnb]'). The saved file is an ordinary LoRA for the unquantized base.",
                       choices=["none", "int8", "nf4"])
    prediction_type: str = _f("auto", "What the UNet predicts. auto: what the base model's scheduler config says. "
                                      "v_prediction: for v-prediction bases whose files do not say so (SD 2.x "
                                      "768-v, v-pred SDXL finetunes), as kohya's v_parameterization. epsilon: the "
                                      "noise, as SD 1.5 and SDXL base. Samples use the same.",
                              choices=["auto", "epsilon", "v_prediction"])


@dataclass
class DatasetConfig:
    data_dir: str = _f("", "Folder of training images (jpg/png/webp) with optional same-name caption files; "
                           "sub-folders named like 10_style repeat their images 10 times.")
    reg_data_dir: str = _f("", "Optional folder of regularisation images (kohya's reg_data_dir, same layout): "
                               "ordinary pictures of the kind of subject you train on (often the base model's own "
                               "outputs), captioned without the trigger word, to keep what you do not want "
                               "changed. Each epoch takes as many of them as training images; their loss is "
                               "weighted by train.prior_loss_weight.")
    validation_split: float = _f(0.0, "Fraction of the training images held out for validation (never trained on), "
                                      "chosen by a hash of their file names, so the same ones every run. 0 = none.",
                                 min=0.0, max=0.5)
    validation_dir: str = _f("", "Optional folder of validation images with captions (instead of "
                                 "validation_split), never trained on.")
    resolution: int = _f(512, "Training resolution: the side of the square pixel budget for buckets.", min=64,
                         max=4096)
    enable_bucket: bool = _f(True, "Aspect-ratio bucketing: images go to the bucket nearest their aspect ratio.")
    min_bucket_reso: int = _f(0, "Smallest bucket side in pixels (0 = half the resolution).", min=0,
                              max=8192)
    max_bucket_reso: int = _f(0, "Largest bucket side in pixels (0 = twice the resolution).", min=0,
                              max=8192)
    crop: str = _f("center", "How an image is cropped to its bucket.", choices=["center", "random"])
    flip_aug: bool = _f(False, "Randomly mirror images left-right (both versions cached with cache_latents).")
    repeats: int = _f(1, "Repeats for images directly in data_dir (sub-folders use their N_ prefix).", min=1,
                     max=10000)
    caption_extension: str = _f(".txt", "Extension of caption files next to the images: .txt or .caption.",
                                choices=list(CAPTION_EXTENSIONS))
    trigger_word: str = _f("", "Word added to every training caption (not to regularisation images), e.g. the "
                               "style's name; write it in your prompts to call the style.")
    trigger_position: str = _f("start", "Where the trigger word goes: the caption's first tag (start, as kohya's "
                                        "folder names put it) or its last (end). end suits a text encoder that reads "
                                        "words by position, as the embedded demo model's does.",
                               choices=["start", "end"])
    shuffle_captions: bool = _f(False, "Shuffle comma-separated tags of each caption every epoch.")
    keep_tokens: int = _f(0, "With shuffle_captions, keep the first N comma-separated tags in place.", min=0,
                      max=255)
    caption_dropout_rate: float = _f(0.0, "Probability of training a sample on the empty caption.", min=0.0, max=1.0)
    max_image_pixels: int = _f(64_000_000, "Largest image accepted, in pixels (width x height); bigger files are "
                                           "refused at the scan. Images are downscaled once when read.",
                               min=4096, max=150_000_000)
    cache_latents: bool = _f(True, "Encode every image with the VAE once and reuse the latents.")
    cache_text_embeddings: bool = _f(True, "Encode every caption once and reuse the embeddings "
                                           "(needs a frozen text encoder and no caption shuffling).")


@dataclass
class NetworkConfig:
    rank: int = _f(16, "LoRA rank (network dim): size of the low-rank update.", min=1, max=1024)
    alpha: float = _f(16.0, "LoRA alpha: the update is scaled by alpha / rank.", min=0.0, max=1024.0)
    target_modules: list[str] = _f(DEFAULT_TARGET_MODULES, "UNet layers that get LoRA. Attention by default; "
                                   f"add feed-forward ({', '.join(FEED_FORWARD_MODULES)}) or conv "
                                   f"({', '.join(CONV_MODULES)}) layers to train more.")
    train_text_encoder: bool = _f(False, "Also train LoRA on the text encoder attention.")
    text_encoder_lr: float = _f(0.0, "Learning rate of the text encoder LoRA (0 = learning_rate).", min=0.0,
                                max=10.0)
    algo: str = _f("lora", "Adapter type. lora: low-rank update, the common choice, read everywhere. loha: LyCORIS "
                           "LoHa (Hadamard product of two low-rank pairs): more expressive at the same rank, good "
                           "for styles. lokr: LyCORIS LoKr (Kronecker product): the smallest files, good for "
                           "characters and concepts. LoHa/LoKr files need A1111 1.5+ or ComfyUI.",
                   choices=["lora", "loha", "lokr"])
    conv_rank: int = _f(0, "LoCon: rank of the adapter on the UNet's 3x3 ResNet / down- and up-sampling convs, as "
                           "kohya's conv_dim (0 = no conv layers).", min=0, max=1024)
    conv_alpha: float = _f(1.0, "LoCon: alpha of the conv layers, as kohya's conv_alpha (scale = conv_alpha / "
                                "conv_rank).", min=0.0, max=1024.0)
    use_dora: bool = _f(False, "DoRA (weight-decomposed LoRA): also trains each layer's weight magnitude; often "
                               "closer to full fine-tuning at the same rank, a little slower. LoRA only; the "
                               "file stores dora_scale as LyCORIS does.")


@dataclass
class OptimConfig:
    optimizer: str = _f("adamw", "Optimizer. adamw8bit needs bitsandbytes and a GPU; prodigy needs prodigyopt "
                                 "and wants learning_rate 1.0.", choices=["adamw", "adamw8bit", "prodigy"])
    learning_rate: float = _f(1e-4, "UNet LoRA learning rate.", min=0.0, max=10.0)
    weight_decay: float = _f(1e-2, "Weight decay.", min=0.0, max=10.0)
    max_grad_norm: float = _f(1.0, "Clip gradients to this norm (0 = no clipping).", min=0.0, max=1000.0)
    lr_scheduler: str = _f("constant", "Learning-rate schedule.",
                           choices=["constant", "constant_with_warmup", "cosine"])
    lr_warmup_steps: int = _f(0, "Warm-up steps for constant_with_warmup and cosine.", min=0, max=1_000_000)
    loraplus_lr_ratio: float = _f(0.0, "LoRA+: the up (B) matrices learn at this multiple of the learning rate "
                                       "(of the UNet's and the text encoder's alike), as kohya's loraplus_lr_ratio; "
                                       "16 is the paper's usual value. 0 = off (one rate). network.algo=lora only.",
                                  min=0.0, max=1000.0)
    adamw_impl: str = _f("auto", "How torch's AdamW loops over the LoRA tensors (optimizer=adamw only). auto: torch "
                                 "picks (foreach on CUDA, for_loop on CPU). foreach: one kernel per step over all "
                                 "tensors. fused: one fused kernel (CPU or GPU). for_loop: one tensor at a time. "
                                 "Same result; on CPU the AdamW step is ~0.2% of an SD 1.5 step, so no choice is "
                                 "faster there.", choices=["auto", "foreach", "fused", "for_loop"])


@dataclass
class TrainConfig:
    max_steps: int = _f(0, "Optimizer steps to train (0 = use epochs).", min=0, max=1_000_000)
    epochs: int = _f(10, "Epochs to train when max_steps is 0.", min=1, max=10000)
    batch_size: int = _f(1, "Images per step on each process.", min=1, max=256)
    gradient_accumulation_steps: int = _f(1, "Micro-batches summed before each optimizer step.", min=1,
                                         max=1024)
    mixed_precision: str = _f("auto", "Compute precision of the frozen model (LoRA weights stay fp32). auto: bf16 "
                                      "on a CPU with native bf16 (AVX-512-bf16 or AMX) for a full-size model (SD "
                                      "1.5 measured 1.9x faster per step there, same loss curve); fp32 for the "
                                      "tiny demo model (bf16 is slower at its size), on other CPUs (bf16 is "
                                      "emulated) and on GPUs (docs/benchmarks.md).",
                              choices=["no", "fp16", "bf16", "auto"])
    gradient_checkpointing: bool = _f(False, "Trade compute for memory in the UNet.")
    free_encoders: bool = _f(True, "With cached latents and text embeddings and the text encoder not trained, "
                                   "write the VAE and text encoders to a temporary file in the run folder and free "
                                   "their memory until samples are drawn (read back for each round of samples).")
    channels_last: bool = _f(False, "Keep the UNet's conv weights and inputs in channels-last memory layout. "
                                    "Often faster on GPUs with tensor cores; measured slower on a 2-core CPU.")
    sdpa_backend: str = _f("auto", "Attention kernel of torch's scaled_dot_product_attention in the UNet. auto: "
                                   "torch picks. math: the plain reference kernel. flash: FlashAttention (CPU or "
                                   "GPU). efficient: memory-efficient attention and cudnn: cuDNN attention, "
                                   "CUDA GPUs only.", choices=["auto", "math", "flash", "efficient", "cudnn"])
    compile_unet: bool = _f(False, "torch.compile the UNet before training; the first step waits for the "
                                   "compile. On a 2-core CPU it took 16 min at SD 1.5 shapes and then made each "
                                   "step slower (0.67x); on the tiny demo model it gave 1.53x, paying off after "
                                   "~8,000 steps. Meant for long GPU runs (not yet measured on a GPU); see "
                                   "docs/benchmarks.md.")
    seed: int = _f(42, "Seed of everything random: data order, noise, timesteps, LoRA init.", min=0,
                 max=2**32 - 1)
    prior_loss_weight: float = _f(1.0, "Loss weight of the regularisation images of dataset.reg_data_dir "
                                       "(kohya's prior_loss_weight).", min=0.0, max=100.0)
    noise_offset: float = _f(0.0, "Noise offset (0.05-0.1 helps very dark or bright images).", min=0.0, max=1.0)
    min_timestep: int = _f(0, "Train only on noise timesteps from this one up (0-999; kohya's min_timestep): "
                              "raising it trains the composition, decided at high noise, more than the detail.",
                           min=0, max=999)
    max_timestep: int = _f(1000, "Train only on noise timesteps below this one (1-1000; kohya's max_timestep): "
                                 "lowering it leaves the layout to the base and trains detail and texture. "
                                 "Measured on the embedded style sets at 300: every shape stayed in place, but "
                                 "colours still shifted and the look came slower (docs/benchmarks.md).",
                           min=1, max=1000)
    min_snr_gamma: float = _f(0.0, "Min-SNR loss weighting gamma (5 is usual; 0 = off).", min=0.0, max=100.0)
    zero_terminal_snr: bool = _f(False, "Rescale the noise schedule so its last timestep is pure noise (diffusers' "
                                        "rescale_zero_terminal_snr, kohya's zero_terminal_snr); samples use the "
                                        "rescaled schedule with trailing timesteps. Meant for v-prediction "
                                        "(model.prediction_type): lets the model learn very dark and bright images.")
    masked_loss: bool = _f(False, "Count the loss only where each image's mask is white: <stem>.mask.png beside the "
                                  "image (white = train, black = ignore, grey = partly), else the image's alpha "
                                  "channel; an image with neither is trained whole. The mask follows bucketing, crop "
                                  "and flip and is cached with the latents. The loss is the mean over the mask, so a "
                                  "small mask trains its pixels harder: on the embedded stripes set (masks on 10% of "
                                  "each picture) the look came twice as soon and then overshot; lower the learning "
                                  "rate (docs/benchmarks.md).")
    unmasked_weight: float = _f(0.0, "With train.masked_loss: the loss weight of the pixels outside the mask (0 = "
                                     "ignored, 1 = as if there were no mask). 0 leaves them untrained, not kept: "
                                     "measured, masked LoRAs still changed the backgrounds.", min=0.0, max=1.0)
    validate_every_n_steps: int = _f(0, "Score the validation images (dataset.validation_split or validation_dir) "
                                        "every N steps and at the end (0 = at the end only), with fixed noise, "
                                        "timesteps and seed, so the number compares across steps and runs; the "
                                        "step with the lowest validation loss is named in the result and the file.",
                                     min=0, max=1_000_000)
    ema_decay: float = _f(0.0, "Keep an exponential moving average (EMA) of the adapter's weights with this decay "
                               "(0.999 is usual; 0 = off), with diffusers' warm-up (decay min(d, k/(9+k)) at step k). "
                               "output.save_ema picks the weights saved; sample.use_ema draws samples with it. "
                               "Measured at 0.99 on the embedded pastel set: a steadier style from save to save, "
                               "no more content kept.",
                          min=0.0, max=0.99999)
    ema_on_cpu: bool = _f(False, "Keep the EMA weights in CPU memory instead of beside the trained weights on the "
                                 "GPU (slower update, no GPU memory).")
    resume_from: str = _f("", "A saved training state file (<name>-state.safetensors, written beside the LoRA) "
                              "to continue from.")


@dataclass
class OutputConfig:
    output_dir: str = _f("outputs", "Folder for the LoRA file, checkpoints, samples and the log.")
    output_name: str = _f("my-lora", "File name (without extension) of the LoRA.")
    save_every_n_steps: int = _f(0, "Write an intermediate LoRA and a resumable state every N steps (0 = end only).",
                                 min=0, max=1_000_000)
    save_every_n_epochs: int = _f(0, "Write an intermediate LoRA (<name>-epochNNNNNN) and a resumable state at the end "
                                     "of every N epochs, as kohya's save_every_n_epochs (0 = off). An epoch is every "
                                     "training image times its repeats, plus as many regularisation samples.",
                                  min=0, max=100_000)
    save_ema: str = _f("ema", "With train.ema_decay: ema = <name>.safetensors holds the EMA weights; raw = the trained "
                              "weights only; both = the trained weights, and the EMA in <name>-ema.safetensors. "
                              "Checkpoints follow the same rule.", choices=["ema", "raw", "both"])
    log_with: str = _f("none", "Also log loss, learning rate, validation loss and samples to TensorBoard (in "
                               "<output_dir>/tensorboard; open it with tensorboard --logdir <output_dir>; pip install "
                               "'loramix[tensorboard]') or Weights & Biases (pip install wandb, then wandb login), "
                               "through accelerate's trackers. log.jsonl is written either way.",
                       choices=["none", "tensorboard", "wandb"])
    save_precision: str = _f("fp16", "Dtype of the saved LoRA weights.", choices=["fp16", "bf16", "fp32"])


@dataclass
class SampleConfig:
    sample_every_n_steps: int = _f(0, "Generate sample images every N steps and at the end (0 = only at "
                                      "the end); no prompts, no samples.", min=0, max=1_000_000)
    sample_every_n_epochs: int = _f(0, "Generate sample images at the end of every N epochs, as kohya's "
                                       "sample_every_n_epochs (0 = off; samples are always drawn at the end).",
                                    min=0, max=100_000)
    prompts: list[str] = _f([], "Prompts for sample images.")
    negative_prompt: str = _f("", "Negative prompt for sample images.")
    steps: int = _f(20, "Denoising steps per sample.", min=1, max=150)
    guidance_scale: float = _f(7.0, "Classifier-free guidance scale for samples.", min=0.0, max=30.0)
    use_ema: bool = _f(False, "Draw the samples with the EMA weights (needs train.ema_decay).")
    seed: int = _f(1234, "Seed of the sample images (the same every time, so they are comparable).", min=0,
                  max=2**32 - 1)


@dataclass
class LoramixConfig:
    schema_version: int = _f(SCHEMA_VERSION, "Version of this config layout.")
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    # ---- views -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def get(self, dotted: str) -> Any:
        section, name = _split(dotted)
        return getattr(getattr(self, section), name)

    def validate(self) -> LoramixConfig:
        """Check every field's range and choices, then the rules between fields. Returns self."""
        for spec in field_specs():
            value = self.get(spec.name)
            meta = spec.metadata
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(spec.name, f"{value!r} is not a finite number.")
            if "choices" in meta and value not in meta["choices"]:
                raise ConfigError(spec.name, f"{value!r} is not allowed; choose one of {', '.join(meta['choices'])}.")
            if "min" in meta and value < meta["min"]:
                raise ConfigError(spec.name, f"{value!r} is below the minimum {meta['min']}.")
            if "max" in meta and value > meta["max"]:
                raise ConfigError(spec.name, f"{value!r} is above the maximum {meta['max']}.")
        ds, net = self.dataset, self.network
        if ds.resolution % 64:
            raise ConfigError("dataset.resolution", f"{ds.resolution} is not a multiple of 64.")
        if not net.target_modules:
            raise ConfigError("network.target_modules", "is empty; name at least one UNet layer, e.g. to_q.")
        if net.use_dora and self.model.quantize != "none":
            raise ConfigError("network.use_dora", "DoRA needs the base weights' norms at full precision; set "
                                                  "model.quantize=none or network.use_dora=false.")
        if net.use_dora and net.algo != "lora":
            raise ConfigError("network.use_dora", f"DoRA trains on LoRA layers only; set network.algo=lora or "
                                                  f"use_dora=false (algo is {net.algo}).")
        if self.optim.adamw_impl != "auto" and self.optim.optimizer != "adamw":
            raise ConfigError("optim.adamw_impl", f"chooses torch AdamW's implementation and applies to "
                                                  f"optimizer=adamw only (optimizer is {self.optim.optimizer}); "
                                                  f"set it to auto.")
        if self.optim.loraplus_lr_ratio and net.algo != "lora":
            raise ConfigError("optim.loraplus_lr_ratio", f"raises the rate of LoRA's up (B) matrices, which "
                                                         f"network.algo={net.algo} has not; set it to 0.")
        if self.train.min_timestep >= self.train.max_timestep:
            raise ConfigError("train.min_timestep", f"{self.train.min_timestep} is not below train.max_timestep "
                                                    f"({self.train.max_timestep}); no timestep is left to train on.")
        if ds.validation_split and ds.validation_dir:
            raise ConfigError("dataset.validation_dir", "and dataset.validation_split both choose validation images; "
                                                        "set one of them.")
        if self.train.validate_every_n_steps and not (ds.validation_split or ds.validation_dir):
            raise ConfigError("train.validate_every_n_steps", "needs validation images: set "
                                                              "dataset.validation_split or dataset.validation_dir.")
        if self.sample.use_ema and not self.train.ema_decay:
            raise ConfigError("sample.use_ema", "draws samples with the EMA weights, which train.ema_decay=0 does not "
                                                "keep; set train.ema_decay (e.g. 0.999) or use_ema=false.")
        if ds.crop == "random" and ds.cache_latents:
            raise ConfigError("dataset.crop", "random crops cannot be cached; set dataset.cache_latents=false "
                                              "or dataset.crop=center.")
        if ds.cache_text_embeddings and net.train_text_encoder:
            raise ConfigError("dataset.cache_text_embeddings", "cannot cache text embeddings while the text "
                                                               "encoder trains; set it to false.")
        if ds.cache_text_embeddings and ds.shuffle_captions:
            raise ConfigError("dataset.cache_text_embeddings", "shuffled captions change every epoch and cannot "
                                                               "be cached; set it to false.")
        plain_name("output.output_name", self.output.output_name)
        caption_extension("dataset.caption_extension", ds.caption_extension)
        return self


def _split(dotted: str) -> tuple[str, str]:
    if dotted.count(".") != 1:
        raise ConfigError(dotted, "config keys are written section.field, e.g. network.rank.")
    section, name = dotted.split(".")
    return section, name


@dataclass(frozen=True)
class FieldSpec:
    """One leaf field of the config: its dotted name, Python type, default and metadata."""

    name: str
    type: Any
    default: Any
    metadata: dict

    @property
    def help(self) -> str:
        return self.metadata.get("help", "")


def field_specs() -> list[FieldSpec]:
    """All leaf fields as `section.field`, in declaration order (the UI and CLI are built from this)."""
    specs = []
    defaults = LoramixConfig()
    for section in dataclasses.fields(LoramixConfig):
        if section.name == "schema_version":
            continue
        hints = typing.get_type_hints(section.default_factory)
        for f in dataclasses.fields(section.default_factory):
            name = f"{section.name}.{f.name}"
            specs.append(FieldSpec(name, hints[f.name], defaults.get(name), dict(f.metadata)))
    return specs


def _spec(dotted: str) -> FieldSpec:
    specs = {s.name: s for s in field_specs()}
    if dotted not in specs:
        close = difflib.get_close_matches(dotted, specs, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else " Run `loramix train --help` for the list."
        raise ConfigError(dotted, f"unknown config key.{hint}")
    return specs[dotted]


def coerce(dotted: str, value: Any) -> Any:
    """Turn a TOML value or a command-line string into the field's type, or say why not."""
    spec = _spec(dotted)
    t = spec.type
    try:
        if t is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if t is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if t is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if t is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
        if typing.get_origin(t) is list:
            text = value.strip() if isinstance(value, str) else ""
            if text.startswith("[") and text.endswith("]"):
                # a list written as in a preset (`["to_q", "to_v"]`): read it as TOML, not split on commas;
                # what TOML does not read (a prompt such as "[cat] on a mat") is split as before
                try:
                    value = tomllib.loads(f"v = {text}")["v"]
                except tomllib.TOMLDecodeError:
                    pass
            if isinstance(value, str):
                sep = "|" if dotted == "sample.prompts" else ","
                return [v.strip() for v in value.split(sep) if v.strip()]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return list(value)
            raise ValueError
    except (ValueError, TypeError):
        pass
    else:
        raise AssertionError(f"unhandled type {t}")  # pragma: no cover
    kind = getattr(t, "__name__", str(t))
    raise ConfigError(dotted, f"{value!r} is not a valid {kind}.")


def apply(config: LoramixConfig, values: dict) -> LoramixConfig:
    """Overlay a nested dict (as read from TOML) onto `config`; unknown keys are errors."""
    for key, value in values.items():
        if key == "schema_version":
            if value != SCHEMA_VERSION:
                raise ConfigError("schema_version", f"{value!r} is not supported; this loramix reads version "
                                                    f"{SCHEMA_VERSION}.")
            continue
        if not isinstance(value, dict):
            raise ConfigError(key, "top-level keys are sections such as [network]; put fields inside one.")
        for name, v in value.items():
            dotted = f"{key}.{name}"
            coerced = coerce(dotted, v)  # rejects unknown keys with a suggestion
            setattr(getattr(config, key), name, coerced)
    return config


def set_value(config: LoramixConfig, assignment: str) -> LoramixConfig:
    """Apply one `section.field=value` override."""
    if "=" not in assignment:
        raise ConfigError(assignment, "an override is written section.field=value.")
    dotted, value = assignment.split("=", 1)
    dotted = dotted.strip()
    section, name = _split(dotted)
    value = coerce(dotted, value)  # an unknown section or field is refused here, with a suggestion
    setattr(getattr(config, section), name, value)
    return config


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("preset", f"{path} does not exist.")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError("preset", f"{path} is not UTF-8 text (byte {e.start} is 0x{path.read_bytes()[e.start]:02x}); "
                                    "save it as UTF-8.") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("preset", f"{path} is not valid TOML: {e}.") from e


# Folders that a TOML file may give relative to itself, so that a preset can name pictures shipped beside it.
FOLDER_FIELDS = ("dataset.data_dir", "dataset.reg_data_dir", "dataset.validation_dir")


def _anchored(values: dict, folder: Path) -> dict:
    """`values` read from a TOML file in `folder`, with its relative FOLDER_FIELDS made relative to that folder
    (an absolute path, or one starting with ~, is kept)."""
    for dotted in FOLDER_FIELDS:
        section, name = dotted.split(".")
        value = values.get(section, {}).get(name) if isinstance(values.get(section), dict) else None
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            values[section][name] = os.path.normpath(folder.absolute() / value)
    return values


def with_absolute_folders(config: LoramixConfig) -> LoramixConfig:
    """A copy whose FOLDER_FIELDS are absolute (relative ones taken from the working folder): what a TOML file
    written for later use should hold, since a relative folder in a TOML file is read relative to the file."""
    out = copy.deepcopy(config)
    for dotted in FOLDER_FIELDS:
        value = out.get(dotted)
        if value:
            section, name = dotted.split(".")
            setattr(getattr(out, section), name, os.path.abspath(Path(value).expanduser()))
    return out


def load_config(*tomls: str | Path, overrides: list[str] = (), validate: bool = True) -> LoramixConfig:
    """Defaults, then each TOML file in order, then `section.field=value` overrides.

    In a TOML file, a relative data or regularisation folder is relative to the file's own folder (as in
    presets/demo-cpu-keep-content.toml, which names the embedded regularisation pictures); on the command
    line and in overrides it is relative to the working folder.
    """
    config = LoramixConfig()
    for path in tomls:
        if path:
            apply(config, _anchored(read_toml(path), Path(path).parent))
    for assignment in overrides:
        set_value(config, assignment)
    return config.validate() if validate else config


def from_dict(values: dict) -> LoramixConfig:
    """A config from a nested dict such as `to_dict()` wrote (e.g. the JSON stored in a LoRA file)."""
    return apply(LoramixConfig(), values)


def to_toml(config: LoramixConfig, only_changed: bool = False) -> str:
    import tomli_w

    data = config.to_dict()
    if only_changed:
        base = LoramixConfig().to_dict()
        data = {s: {k: v for k, v in fields.items() if base[s][k] != v}
                for s, fields in data.items() if isinstance(fields, dict)}
        data = {"schema_version": SCHEMA_VERSION, **{s: f for s, f in data.items() if f}}
    return tomli_w.dumps(data)


# ---- captioning (a job of its own, not part of a training config) ----------------------------------------
DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-large"


@dataclass
class CaptionConfig:
    """What `loramix caption` and the Dataset tab's *Caption* button run: a captioner over one image folder."""

    data_dir: str = _f("", "Folder of images to caption; each caption is written as <image stem><extension>.")
    model: str = _f(DEFAULT_CAPTIONER, "Captioner: a hub id or a local folder of a BLIP, GIT or Florence-2 model "
                                       "(transformers loads them natively), or of a WD tagger (model.onnx and "
                                       "selected_tags.csv, e.g. SmilingWolf/wd-vit-tagger-v3; needs onnxruntime).")
    mode: str = _f("skip", "What to do with an image that has a caption already: skip it, replace the caption, "
                           "prepend the new caption to it, or append it.",
                   choices=["skip", "replace", "prepend", "append"])
    caption_extension: str = _f(".txt", "Extension of the caption files.", choices=list(CAPTION_EXTENSIONS))
    prompt: str = _f("", "Text the caption starts from (BLIP, GIT), or the Florence-2 task "
                         "(empty: <MORE_DETAILED_CAPTION>); a prompt the caption repeats is cut off.")
    max_new_tokens: int = _f(60, "Longest caption, in tokens.", min=1, max=1024)
    num_beams: int = _f(1, "Beam search width (1: greedy, fastest).", min=1, max=16)
    batch_size: int = _f(2, "Images captioned together.", min=1, max=64)
    general_threshold: float = _f(0.35, "WD tagger: a general tag is kept when its probability is at least this.",
                                  min=0.0, max=1.0)
    character_threshold: float = _f(0.85, "WD tagger: a character tag is kept when its probability is at least "
                                          "this.", min=0.0, max=1.0)
    exclude_tags: str = _f("", "WD tagger: comma-separated tags never written (e.g. watermark, simple background).")
    max_tags: int = _f(0, "WD tagger: keep at most this many tags, the likeliest (0: no limit).", min=0, max=1000)
    underscores_to_spaces: bool = _f(True, "WD tagger: write long_hair as long hair (emoticons such as ^_^ keep "
                                           "theirs).")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def validate(self) -> CaptionConfig:
        for f in dataclasses.fields(self):
            value, meta, name = getattr(self, f.name), f.metadata, f"caption.{f.name}"
            if "choices" in meta and value not in meta["choices"]:
                raise ConfigError(name, f"{value!r} is not allowed; choose one of {', '.join(meta['choices'])}.")
            if "min" in meta and not meta["min"] <= value <= meta["max"]:
                raise ConfigError(name, f"{value!r} is outside {meta['min']}..{meta['max']}.")
        if not self.data_dir:
            raise ConfigError("caption.data_dir", "is empty; name the folder of images to caption.")
        if not self.model.strip():
            raise ConfigError("caption.model", f"is empty; give a hub id (e.g. {DEFAULT_CAPTIONER}) or a folder.")
        return self

    @classmethod
    def from_dict(cls, values: dict) -> CaptionConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"caption.{unknown[0]}", "is not a captioning setting.")
        return cls(**values)
