"""What a training run leaves in its folder: log.jsonl (losses, learning rates, validation losses), the config
TOML, the LoRA files with their metadata, the training state for a resume, and the sample images.
Every file goes through loramix/core/writer.py, inside the run folder (`own_files`).
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch

from loramix.core.config import to_toml, with_absolute_folders
from loramix.core.events import TrainEvent
from loramix.core.writer import append_line, make_folder, save_png, write_text
from loramix.formats.families import Components
from loramix.formats.lora_io import LoraAdapter, from_peft, save_lora
from trainers import dataset as ds
from trainers.checkpoint import adapter_metadata, craft_metadata, save_state
from trainers.trackers import log_samples
from trainers.validation import best_validation, validation_loss, validation_metadata


class RunOutputs:
    """The run folder's files (a `LoraTrainer` job; `TrainingLoop` says when each is written)."""

    # ---- log.jsonl and the config ------------------------------------------------------------
    def start_log(self, start: int) -> None:
        """Keep the log lines of the steps before `start` (all of them on resume, none on a fresh run)."""
        if not self.accelerator.is_main_process:
            return
        make_folder(self.out_dir)
        path = self.out_dir / "log.jsonl"
        kept = []
        if start and path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= start]
            self.val_losses = [(r["step"], r["val_loss"]) for r in map(json.loads, kept) if "val_loss" in r]
        write_text(path, "".join(line + "\n" for line in kept), **self.own_files)
        write_text(self.out_dir / f"{self.name}.toml", to_toml(with_absolute_folders(self.cfg)), **self.own_files)

    def log_step(self, step: int, loss: float, lr: float) -> None:
        if self.accelerator.is_main_process:
            append_line(self.out_dir / "log.jsonl",
                        json.dumps({"step": step, "loss": loss, "lr": lr, "time": round(time.time(), 3)}),
                        within=self.out_dir)
        self.accelerator.log({"loss": loss, "lr": lr}, step=step)  # output.log_with (nothing without a tracker)

    def validate(self, step: int) -> None:
        """Score the held-out images (the weights the main file holds), log and publish the loss."""
        use_ema = self.ema is not None and self.cfg.output.save_ema == "ema"
        with self.ema.applied(self.params) if use_ema else nullcontext():
            loss = validation_loss(self, self.vset)
        self.val_losses.append((step, loss))
        best_step, best = best_validation(self.val_losses)
        if self.accelerator.is_main_process:
            append_line(self.out_dir / "log.jsonl", json.dumps({"step": step, "val_loss": loss,
                                                                 "time": round(time.time(), 3)}), within=self.out_dir)
        self.accelerator.log({"val_loss": loss}, step=step)
        self.events(TrainEvent("validation", step, self.total_steps, loss=loss,
                               extra={"best_step": best_step, "best_loss": best}))

    # ---- the LoRA files and the training state -----------------------------------------------
    def lora_state(self) -> dict[str, torch.Tensor]:
        """The trained adapter weights in PEFT's names, prefixed by module (the state file's "lora" part)."""
        from peft.utils import get_peft_model_state_dict

        return {f"{prefix}.{k}": v for prefix, module in self.trained.items()
                for k, v in get_peft_model_state_dict(module).items()}

    def adapter(self, step: int) -> LoraAdapter:
        """The adapter as saved after step `step`: kohya layer names, and the metadata kohya and loramix write
        (run, dataset and craft keys: trainers/checkpoint.py; validation keys: trainers/validation.py)."""
        from peft.utils import get_peft_model_state_dict

        network, accumulation = self.cfg.network, self.cfg.train.gradient_accumulation_steps
        layers = {}
        for prefix, module in self.trained.items():
            rename = partial(self.family.kohya_path, prefix, model=self.accelerator.unwrap_model(module))
            layers.update(from_peft(get_peft_model_state_dict(module), prefix, network.alpha, rename,
                                    rank=network.rank,
                                    rank_alpha=self.layer_rank_alpha if prefix == self.family.unet_prefix else None))
        epoch = max(1, math.ceil(step * accumulation / self.micro_per_epoch))  # 1-based: the epoch this save is in
        meta = adapter_metadata(self.cfg, self.family, step=step, epoch=epoch, num_images=self.num_train,
                                reg_items=self.reg_found, train_items=self.items,
                                tag_frequency=self.tag_frequency, started_at=self.started_at,
                                bucket_info=ds.bucket_info(self.items, self.cfg.dataset),
                                batches_per_epoch=self.micro_per_epoch,
                                num_epochs=math.ceil(self.total_steps / math.ceil(self.micro_per_epoch / accumulation)),
                                num_processes=self.accelerator.num_processes, session_id=self.session_id)
        return LoraAdapter(layers, {**meta, **craft_metadata(self.cfg, self.components.prediction_type),
                                    **validation_metadata(self.val_losses, step)})

    def save_checkpoint(self, step: int, final: bool, epoch: int = 0) -> tuple[Path | None, Path | None]:
        """The LoRA (named by `epoch` when an epoch setting asked for it, else by step) and the state."""
        if not self.accelerator.is_main_process:
            self.accelerator.wait_for_everyone()
            return None, None
        suffix = "" if final else f"-epoch{epoch:06d}" if epoch else f"-step{step:06d}"
        warnings: list[str] = []  # e.g. a layer too large for fp16, saved in fp32 instead
        lora_paths = self.save_loras(step, f"{self.name}{suffix}", warnings)
        for message in warnings:
            self.events(TrainEvent("warning", step, self.total_steps, message=message))
        state_path = save_state(self.out_dir / f"{self.name}-state.safetensors", step=step, lora=self.lora_state(),
                                optimizer=self.optimizer, scheduler=self.scheduler, config=self.cfg,
                                ema=self.ema.state() if self.ema else None, **self.own_files)
        self.events(TrainEvent("checkpoint", step, self.total_steps, paths=(*map(str, lora_paths), str(state_path))))
        self.accelerator.wait_for_everyone()
        return lora_paths[0], state_path

    def save_loras(self, step: int, stem: str, warnings: list[str]) -> list[Path]:
        """Write a checkpoint's LoRA files: the trained weights, their EMA, or both (`output.save_ema`); the
        main file first. Each is written while its weights are in place (an adapter shares their storage)."""
        mode = self.cfg.output.save_ema if self.ema else "raw"
        plan = {"ema": [(stem, True)], "raw": [(stem, False)], "both": [(stem, False), (f"{stem}-ema", True)]}[mode]
        paths = []
        for name, use_ema in plan:
            with self.ema.applied(self.params) if use_ema else nullcontext():
                adapter = self.adapter(step)
                if use_ema:
                    adapter.metadata["loramix_ema_decay"] = str(self.ema.decay)
                paths.append(save_lora(self.out_dir / f"{name}.safetensors", adapter, self.cfg.output.save_precision,
                                       warnings=warnings, **self.own_files))
        return paths

    # ---- sample images -----------------------------------------------------------------------
    @torch.no_grad()
    def make_samples(self, step: int) -> None:
        self.sampled_at = step
        if not self.accelerator.is_main_process or not self.cfg.sample.prompts:
            return
        with self.parking.unparked() if getattr(self, "parking", None) else nullcontext():
            self._draw_samples(step)

    def _draw_samples(self, step: int) -> None:
        sampling, components, accelerator = self.cfg.sample, self.components, self.accelerator
        unwrapped = Components(**{**vars(components), "unet": accelerator.unwrap_model(components.unet)})
        for prefix, module in self.family.text_encoders(components).items():
            self.family.set_text_encoder(unwrapped, prefix, accelerator.unwrap_model(module))
        components.vae.to(accelerator.device)
        pipe = self.family.pipeline(unwrapped)
        pipe.set_progress_bar_config(disable=True)
        paths, images = [], []
        resolution = self.cfg.dataset.resolution
        with accelerator.autocast(), self.ema.applied(self.params) if sampling.use_ema else nullcontext():
            for i, prompt in enumerate(sampling.prompts):
                image = pipe(prompt, negative_prompt=sampling.negative_prompt or None,
                             num_inference_steps=sampling.steps, guidance_scale=sampling.guidance_scale,
                             height=resolution, width=resolution,
                             generator=torch.Generator().manual_seed(sampling.seed + i)).images[0]
                path = self.out_dir / "samples" / f"{self.name}-step{step:06d}-{i}.png"
                save_png(image, path, **self.own_files)
                paths.append(str(path))
                images.append(image)
        log_samples(accelerator, step, images)
        if self.cfg.dataset.cache_latents:
            components.vae.to("cpu")
        for module in self.models.values():
            module.train()
        self.events(TrainEvent("sample", step, self.total_steps, paths=tuple(paths)))
