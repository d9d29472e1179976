"""Optimizers and learning-rate schedules by name (a registry, so presets and the UI list them)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from loramix.core.config import OptimConfig
from loramix.core.errors import ConfigError

ADAMW_IMPLS = {"auto": {}, "foreach": {"foreach": True}, "fused": {"fused": True}, "for_loop": {"foreach": False}}


def _adamw(groups, cfg: OptimConfig):
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                             **ADAMW_IMPLS[cfg.adamw_impl])


def _adamw8bit(groups, cfg: OptimConfig):
    if not torch.cuda.is_available():
        raise ConfigError("optim.optimizer", "adamw8bit needs a CUDA GPU; use adamw on this machine.")
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise ConfigError("optim.optimizer", "adamw8bit needs bitsandbytes: pip install 'loramix[bnb]'.") from e
    return bnb.optim.AdamW8bit(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def _prodigy(groups, cfg: OptimConfig):
    try:
        from prodigyopt import Prodigy
    except ImportError as e:
        raise ConfigError("optim.optimizer", "prodigy needs prodigyopt: pip install 'loramix[prodigy]'.") from e
    return Prodigy(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, safeguard_warmup=True,
                   use_bias_correction=True)


OPTIMIZERS: dict[str, Callable] = {"adamw": _adamw, "adamw8bit": _adamw8bit, "prodigy": _prodigy}


def loraplus_groups(named_params: list[tuple[str, torch.nn.Parameter]], lr: float, ratio: float) -> list[dict]:
    """Parameter groups of one trained module: one at `lr`, or with LoRA+ (`ratio` > 0) the PEFT up matrices
    (`lora_B`) in a second group at `lr * ratio`, as kohya's loraplus_lr_ratio."""
    if not ratio:
        return [{"params": [p for _, p in named_params], "lr": lr}]
    up = [p for name, p in named_params if ".lora_B." in name]
    rest = [p for name, p in named_params if ".lora_B." not in name]
    return [g for g in ({"params": rest, "lr": lr}, {"params": up, "lr": lr * ratio}) if g["params"]]


def make_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.optimizer](groups, cfg)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    """diffusers' schedules, stepped once per optimizer step (not per process)."""
    from diffusers.optimization import get_scheduler

    warmup = cfg.lr_warmup_steps if cfg.lr_scheduler != "constant" else 0
    return get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
