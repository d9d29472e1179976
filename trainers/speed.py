"""The training step's speed options (train.channels_last, train.sdpa_backend, train.compile_unet) applied.

The config decides; these functions only obey it. Each option's measured effect is in docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib

import torch

from loramix.core.config import TrainConfig
from loramix.core.errors import ConfigError

CUDA_ONLY_SDPA = ("efficient", "cudnn")


def check_speed_options(t: TrainConfig, device: torch.device) -> None:
    """Refuse, before the model loads, an attention kernel this device does not have."""
    if t.sdpa_backend in CUDA_ONLY_SDPA and device.type != "cuda":
        raise ConfigError("train.sdpa_backend", f"{t.sdpa_backend} attention runs on CUDA GPUs only; use auto, "
                                                f"math or flash on {device.type}.")


def resolve_precision(mixed_precision: str, base_model: str = "") -> str:
    """train.mixed_precision as accelerate takes it. `auto` (the default) is bf16 on a CPU that multiplies bf16
    natively (AVX-512-bf16 or AMX; loramix.core.cpu_features) for a full-size base model (SD 1.5 measured
    1.9x faster per step with the same loss curve); fp32 (`no`) for the toy-sized models such as the embedded
    demo model (0.7x in bf16: its layers are too small to pay for the casts), on other CPUs (bf16 is
    emulated there) and on GPUs (docs/benchmarks.md)."""
    if mixed_precision != "auto":
        return mixed_precision
    from loramix.formats.base_model import cpu_bf16_pays, unet_config_of

    return "bf16" if not torch.cuda.is_available() and cpu_bf16_pays(unet_config_of(base_model)) else "no"


def prepare_unet(unet: torch.nn.Module, t: TrainConfig) -> torch.nn.Module:
    """The UNet as the training step will call it: channels-last weights and/or compiled, if asked."""
    if t.channels_last:
        unet.to(memory_format=torch.channels_last)  # in place: 4-D weights only, the same Parameters
    if t.compile_unet:
        unet = torch.compile(unet)  # the compile itself happens on the first call
    return unet


def unet_input(x: torch.Tensor, t: TrainConfig) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if t.channels_last else x


def attention_backend(t: TrainConfig) -> contextlib.AbstractContextManager:
    """A context in which the UNet's scaled_dot_product_attention uses `train.sdpa_backend` (auto: torch picks)."""
    if t.sdpa_backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[t.sdpa_backend]
    return sdpa_kernel([backend])
