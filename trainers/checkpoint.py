"""What a run writes: the kohya LoRA file with `ss_*` metadata, and the resumable training state.

The state is one safetensors file (`<name>-state.safetensors`): LoRA weights in fp32, the
optimizer's tensors, and as JSON metadata the step, the optimizer's scalars and param groups, the
scheduler and the config. One file written atomically, so a crash never leaves half a state, and
nothing is pickled. Randomness needs no saving: the trainer derives it from (seed, step).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from loramix import __version__
from loramix.core.config import LoramixConfig
from loramix.core.errors import TrainingError
from loramix.core.writer import atomic_path
from loramix.formats.lora_io import modelspec
from loramix.formats.published import published_config_json, published_model_name
from trainers.speed import resolve_precision

STATE_FORMAT = "loramix-train-state/1"


def adapter_metadata(cfg: LoramixConfig, family, *, step: int, epoch: int, num_images: int,
                     tag_frequency: dict, started_at: float, reg_items: list | None = None,
                     train_items: list | None = None, bucket_info: dict | None = None, batches_per_epoch: int = 0,
                     num_epochs: int = 0, num_processes: int = 1, session_id: int = 0) -> dict[str, str]:
    """kohya's `ss_*` and `modelspec.*` keys (the ones A1111 / ComfyUI / civitai read) plus our config as JSON.

    Written as kohya's train_network.py writes them: `ss_base_model_version` is `sd_v2_v` for a
    v-prediction SD 2.x; an option that is off is the string "None" (kohya's default for noise offset,
    min-SNR gamma and clip skip is None, stringified); `epoch` is 1-based, the epoch the save falls in
    (kohya sets `ss_epoch = epoch + 1` as each epoch starts); `bucket_info` is `trainers.dataset.bucket_info`
    (None without bucketing, written "null" as kohya does); `session_id` a random integer per run.
    `save_lora` adds the `sshs_*` hashes. No local path goes in (loramix.formats.published): folders and the base model
    by their base names, a hub id as given.
    """
    res = cfg.dataset.resolution
    te_lr = cfg.network.text_encoder_lr or cfg.optim.learning_rate
    version = getattr(family, "base_model_version", family.ss_base_model_version)
    from loramix.formats.lora_io import lycoris_metadata

    finished_at = time.time()
    net = cfg.network
    # kohya's networks.lora for LoRA / LoCon; a LyCORIS run's keys (lycoris.kohya, algo=…) for LoHa, LoKr, DoRA
    conv = {"conv_dim": net.conv_rank, "conv_alpha": net.conv_alpha} if net.conv_rank else {}
    if net.algo != "lora" or net.use_dora:
        network = lycoris_metadata("locon" if net.algo == "lora" else net.algo, net.rank, net.alpha, **conv,
                                   **({"dora_wd": True} if net.use_dora else {}))
    else:
        network = {"ss_network_module": "networks.lora", "ss_network_dim": str(net.rank),
                   "ss_network_alpha": str(net.alpha),
                   "ss_network_args": json.dumps({"target_modules": net.target_modules,
                                                  **{k: str(v) for k, v in conv.items()}})}
    return {
        **network,
        "ss_base_model_version": version,
        "ss_v2": str(family.name == "sd2"),
        "ss_sd_model_name": published_model_name(cfg.model.base_model) or "loramix-embedded-tiny",
        "ss_resolution": f"({res}, {res})",
        "ss_enable_bucket": str(cfg.dataset.enable_bucket),
        "ss_steps": str(step),
        "ss_max_train_steps": str(step),
        "ss_epoch": str(epoch),
        "ss_num_train_images": str(num_images),
        **reg_metadata(cfg, reg_items or []),
        "ss_dataset_dirs": json.dumps(folder_counts([i for i in train_items or [] if not i.is_reg])),
        "ss_batch_size_per_device": str(cfg.train.batch_size),
        "ss_total_batch_size": str(cfg.train.batch_size * num_processes * cfg.train.gradient_accumulation_steps),
        "ss_num_batches_per_epoch": str(batches_per_epoch),
        "ss_num_epochs": str(num_epochs),
        "ss_bucket_info": json.dumps(bucket_info),
        "ss_clip_skip": "None",  # loramix has no clip skip: kohya writes str(None) when --clip_skip is not given
        "ss_session_id": str(session_id),
        "ss_gradient_accumulation_steps": str(cfg.train.gradient_accumulation_steps),
        "ss_learning_rate": str(cfg.optim.learning_rate),
        "ss_unet_lr": str(cfg.optim.learning_rate),
        "ss_text_encoder_lr": str(te_lr if cfg.network.train_text_encoder else 0),
        "ss_optimizer": cfg.optim.optimizer,
        "ss_lr_scheduler": cfg.optim.lr_scheduler,
        "ss_lr_warmup_steps": str(cfg.optim.lr_warmup_steps),
        "ss_mixed_precision": resolve_precision(cfg.train.mixed_precision),  # auto: what it ran as
        "ss_seed": str(cfg.train.seed),
        "ss_noise_offset": str(cfg.train.noise_offset or None),
        "ss_min_snr_gamma": str(cfg.train.min_snr_gamma or None),
        "ss_caption_dropout_rate": str(cfg.dataset.caption_dropout_rate),
        "ss_shuffle_caption": str(cfg.dataset.shuffle_captions),
        "ss_keep_tokens": str(cfg.dataset.keep_tokens),
        "ss_flip_aug": str(cfg.dataset.flip_aug),
        "ss_cache_latents": str(cfg.dataset.cache_latents),
        "ss_output_name": cfg.output.output_name,
        "ss_training_started_at": str(started_at),
        "ss_training_finished_at": str(finished_at),
        "ss_tag_frequency": json.dumps(tag_frequency),
        "ss_training_comment": f"trained with loramix {__version__}",
        "loramix_version": __version__,
        "loramix_config": published_config_json(cfg),
        **modelspec(version, cfg.output.output_name, finished_at, res, getattr(family, "prediction_type", None)),
    }


def reg_metadata(cfg: LoramixConfig, reg_items: list) -> dict[str, str]:
    """kohya's keys for regularisation images, from every one found (before balancing, as kohya counts them):
    how many with their folders' repeats, per folder its repeats and image count, and their loss weight."""
    return {"ss_num_reg_images": str(sum(i.repeats for i in reg_items)),
            "ss_reg_dataset_dirs": json.dumps(folder_counts(reg_items)),
            "ss_prior_loss_weight": str(cfg.train.prior_loss_weight)}


def folder_counts(items: list) -> dict[str, dict[str, int]]:
    """kohya's `ss_dataset_dirs` / `ss_reg_dataset_dirs`: per image folder, by its base name (as
    `ss_tag_frequency` keys it: `10_style`), its repeats and how many images it holds (not times repeats:
    A1111's "Dataset size" adds these up)."""
    dirs: dict[str, dict[str, int]] = {}
    for item in items:
        entry = dirs.setdefault(item.folder, {"n_repeats": item.repeats, "img_count": 0})
        entry["img_count"] += 1
    return dirs


def craft_metadata(cfg: LoramixConfig, prediction_type: str) -> dict[str, str]:
    """kohya's keys for the issue-24 training options: LoRA+, zero-terminal SNR and v-parameterization of the
    trained schedule (an option that is off is the string "None" or "False", as kohya stringifies them)."""
    ratio = str(cfg.optim.loraplus_lr_ratio or None)
    return {"ss_loraplus_lr_ratio": ratio, "ss_loraplus_unet_lr_ratio": ratio,
            "ss_loraplus_text_encoder_lr_ratio": ratio,
            "ss_zero_terminal_snr": str(cfg.train.zero_terminal_snr),
            "ss_v_parameterization": str(prediction_type == "v_prediction")}


def _first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return key
    return None


def save_state(path: Path, *, step: int, lora: dict[str, torch.Tensor], optimizer, scheduler,
               config: LoramixConfig, ema: dict[str, torch.Tensor] | None = None, **rules) -> Path:
    """Write the resumable state through the writer (`rules`); a NaN or inf anywhere in it is never written.
    `ema`: the EMA of the weights (trainers.ema), kept as `ema.*` tensors."""
    path = Path(path)
    tensors = {f"lora.{k}": v.detach().float().contiguous().cpu() for k, v in lora.items()}
    tensors.update({f"ema.{k}": v.detach().contiguous().cpu() for k, v in (ema or {}).items()})
    opt = optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for idx, entries in opt["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    bad = _first_non_finite(tensors) or next(
        (f"optim.{idx}.{k}" for idx, entries in scalars.items() for k, v in entries.items()
         if isinstance(v, float) and not math.isfinite(v)), None)
    if bad:
        raise TrainingError(f"Refusing to save the training state {path.name} at step {step}: {bad} holds NaN or "
                            "inf values; the previous state file is unchanged.")
    meta = {
        "format": STATE_FORMAT,
        "step": str(step),
        "optimizer_param_groups": json.dumps(opt["param_groups"]),
        "optimizer_scalars": json.dumps(scalars),
        "scheduler": json.dumps(scheduler.state_dict()),
        "loramix_config": published_config_json(config),  # resume takes its config from the run, not from here
    }
    size = sum(t.numel() * t.element_size() for t in tensors.values()) + sum(map(len, meta.values()))
    with atomic_path(path, expected_bytes=size, **rules) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def check_state_file(path: str | Path) -> dict[str, str]:
    """Read only the header of a state file and return its metadata, or say (naming the field) why it is
    not a loramix training state. Cheap: the trainer calls it before any model is loaded."""
    path = Path(path).expanduser()
    hint = "give the <name>-state.safetensors file that a run writes beside its LoRA."
    if path.is_dir():
        raise TrainingError(f"train.resume_from: {path} is a folder; {hint}")
    if not path.is_file():
        raise TrainingError(f"train.resume_from: {path} does not exist; {hint}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # SafetensorError, OSError, or a header the Rust reader rejects
        raise TrainingError(f"train.resume_from: {path.name} is not a loramix training state (it is not a "
                            f"readable safetensors file); {hint}") from e
    if meta.get("format") != STATE_FORMAT:
        what = "a LoRA file" if "ss_network_dim" in meta or "ss_network_module" in meta else "another safetensors file"
        raise TrainingError(f"train.resume_from: {path.name} is {what}, not a loramix training state; {hint}")
    missing = [k for k in ("step", "optimizer_param_groups", "optimizer_scalars", "scheduler", "loramix_config")
               if k not in meta]
    if missing:
        raise TrainingError(f"train.resume_from: {path.name} is an incomplete training state (no {missing[0]}); "
                            f"{hint}")
    return meta


def load_state(path: str | Path) -> dict:
    """Read a state file: {"step", "lora", "optimizer" (a state_dict), "scheduler", "config", "ema"}; the config's
    paths are base names (a state file may be shared too): the run's `<name>.toml` holds them in full."""
    path = Path(path).expanduser()
    meta = check_state_file(path)
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    bad = _first_non_finite(tensors)
    if bad:
        raise TrainingError(f"train.resume_from: {path.name} holds NaN or inf values in {bad}; resume from an "
                            "earlier state or start afresh.")
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, entries in json.loads(meta["optimizer_scalars"]).items():
        state.setdefault(int(idx), {}).update(entries)
    return {
        "step": int(meta["step"]),
        "lora": {k[len("lora."):]: v for k, v in tensors.items() if k.startswith("lora.")},
        "ema": {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")},
        "optimizer": {"state": state, "param_groups": json.loads(meta["optimizer_param_groups"])},
        "scheduler": json.loads(meta["scheduler"]),
        "config": json.loads(meta["loramix_config"]),
    }
