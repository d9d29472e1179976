"""The LoRA training loop: image folder + base model -> kohya-format LoRA file, as named steps.

    scan data -> accelerator -> load model -> inject LoRA -> cache -> optimizer -> resume -> loop -> save

`accelerate.Accelerator` owns devices, precision, gradient accumulation and distributed runs; the
same code runs under `accelerate launch --num_processes N`. Every random choice is derived from
(seed, micro-batch index, position in the global batch), so a resumed run, and an N-process run
with the same global batch, see the same data and noise as a single uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from loramix.core.config import LoramixConfig, to_toml, with_absolute_folders
from loramix.core.errors import ConfigError, TrainingError
from loramix.core.events import CancelToken, EventSink, TrainEvent, no_events
from loramix.core.runs import RunLock, check_run_folder, remove_stale_temps
from loramix.core.writer import append_line, make_folder, save_png, write_text
from loramix.formats.base_model import load_base_model
from loramix.formats.families import Components
from loramix.formats.lora_io import LoraAdapter, from_peft, save_lora
from trainers import dataset as ds
from trainers.checkpoint import adapter_metadata, check_state_file, craft_metadata, load_state, save_state
from trainers.ema import AdapterEMA
from trainers.encoder_parking import EncoderParking
from trainers.masks import MASK_SUFFIX, LossMasks, weighted_mse
from trainers.noise import configure_noise
from trainers.optim import loraplus_groups, make_optimizer, make_scheduler
from trainers.quantize import check_quantize_backend, quantize_unet
from trainers.speed import attention_backend, check_speed_options, prepare_unet, resolve_precision, unet_input
from trainers.trackers import accelerator_options, log_samples, start_trackers
from trainers.validation import best_validation, build_validation_set, validation_loss, validation_metadata

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    lora_path: Path | None
    state_path: Path | None
    steps: int
    cancelled: bool = False
    losses: list[float] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)
    best_step: int | None = None  # the step with the lowest validation loss


def _seed_for(*parts) -> int:
    return random.Random(":".join(map(str, parts))).getrandbits(63)


def _every(count: int, n: int) -> bool:
    """`count` is a positive multiple of `n` (an `*_every_n_*` setting; 0 = never)."""
    return bool(n and count and count % n == 0)


def _to_host(value):
    """A deep copy of a (nested) optimizer/scheduler state with every tensor copied to the CPU."""
    if torch.is_tensor(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_host(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_host(v) for v in value)
    return value


class LastGood:
    """The LoRA weights, optimizer state and scheduler state before the latest optimizer step, on the host.

    The trainer copies them in just before each optimizer step; if that step leaves a NaN or inf
    weight, `restore` puts back the last state whose loss and weights were finite, so a NaN stop never
    writes a broken state. Cost: one host copy of the LoRA parameters and the optimizer's tensors
    (AdamW: 3x the LoRA size: 36 MB for SD 1.5 UNet attention at rank 16, 266 MB for SDXL, counted from
    the shipped configs), refreshed once per step.
    """

    def __init__(self) -> None:
        self.params: list[torch.Tensor] | None = None
        self.optimizer: dict | None = None
        self.scheduler: dict | None = None

    def keep(self, params: list[torch.Tensor], optimizer, scheduler) -> None:
        with torch.no_grad():
            if self.params is None:
                self.params = [p.detach().to("cpu", copy=True) for p in params]
            else:
                for buf, p in zip(self.params, params):
                    buf.copy_(p.detach())
        self.optimizer = _to_host(optimizer.state_dict())
        self.scheduler = _to_host(scheduler.state_dict())

    def restore(self, params: list[torch.Tensor], optimizer, scheduler) -> None:
        with torch.no_grad():
            for p, buf in zip(params, self.params):
                p.copy_(buf)
        optimizer.load_state_dict(self.optimizer)
        scheduler.load_state_dict(self.scheduler)

    @property
    def nbytes(self) -> int:
        def size(value) -> int:
            if torch.is_tensor(value):
                return value.numel() * value.element_size()
            if isinstance(value, dict):
                return sum(size(v) for v in value.values())
            if isinstance(value, (list, tuple)):
                return sum(size(v) for v in value)
            return 0

        return size(self.params or []) + size(self.optimizer or {})


class LoraTrainer:
    def __init__(self, config: LoramixConfig, events: EventSink = no_events, cancel: CancelToken | None = None):
        self.cfg = config.validate()
        self.events = events
        self.cancel = cancel or CancelToken()
        self.out_dir = Path(config.output.output_dir).expanduser()
        self.name = config.output.output_name
        self.started_at = time.time()
        # The run's own files: written inside its folder (links out are refused at each file), replaced as the
        # run goes (the state file at every checkpoint); check_run_folder kept other runs' folders out.
        self.own_files = {"replace": True, "within": self.out_dir}
        self.session_id = random.SystemRandom().randint(0, 2**32)  # kohya's ss_session_id: one per launch
        self.sampled_at = -1  # the step whose samples were drawn last
        self.val_losses: list[tuple[int, float]] = []  # (step, validation loss), kept across a resume via the log
        self.vset = None
        self.masks = None

    # ---- 1. data (before any model is loaded, so dataset errors come fast) ------------------
    def scan_data(self) -> None:
        report = ds.scan_report(self.cfg.dataset)  # the scan logs its warnings; publish them too
        for message in report.warnings:
            self.events(TrainEvent("warning", message=message))
        self.items = report.items
        self.validation_items = report.validation  # held out, never trained on
        self.tag_frequency = ds.tag_frequency(self.items)
        self.num_train = sum(not i.is_reg for i in self.items)
        self.reg_found = report.reg_found
        log.info("%d images (%d regularisation), %d samples per epoch", len(self.items),
                 len(self.items) - self.num_train, sum(i.repeats for i in self.items))
        if self.cfg.train.resume_from:
            check_state_file(self.cfg.train.resume_from)  # a LoRA or junk file is refused before the model loads

    def warn(self, message: str) -> None:
        """A warning for the person training: logged and published as a "warning" event."""
        log.warning("%s", message)
        self.events(TrainEvent("warning", message=message))

    # ---- 2. accelerator ----------------------------------------------------------------------
    def setup_accelerator(self) -> None:
        from accelerate import Accelerator

        t = self.cfg.train
        # accelerate only forms a multi-process CPU group (gloo) when told cpu=True; without CUDA,
        # `accelerate launch --multi_gpu --num_processes N` then works on a CPU-only machine too.
        cpu_group = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        try:
            self.acc = Accelerator(mixed_precision=resolve_precision(t.mixed_precision), cpu=cpu_group,
                                   gradient_accumulation_steps=t.gradient_accumulation_steps,
                                   **accelerator_options(self.cfg.output, self.out_dir))  # output.log_with
        except ValueError as e:
            raise ConfigError("train.mixed_precision", f"{t.mixed_precision} is not available here: {e}") from e
        check_speed_options(t, self.acc.device)
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.acc.mixed_precision,
                                                                                   torch.float32)
        self.global_batch = t.batch_size * self.acc.num_processes
        self.micro_per_epoch = ds.batches_per_epoch(self.items, self.global_batch)
        steps_per_epoch = math.ceil(self.micro_per_epoch / t.gradient_accumulation_steps)
        self.total_steps = t.max_steps or t.epochs * steps_per_epoch

    # ---- 3. model + 4. LoRA ------------------------------------------------------------------
    def load_model(self) -> None:
        """Load the base model frozen, in the compute dtype; with `model.quantize` the UNet's linear layers are
        stored in int8 (torchao weight-only) or NF4 (bitsandbytes) before the adapter goes on top of them."""
        check_quantize_backend(self.cfg.model.quantize, self.acc.device)
        self.m: Components = load_base_model(self.cfg.model.base_model, self.cfg.model.revision)
        configure_noise(self.m, self.cfg.model.prediction_type, self.cfg.train.zero_terminal_snr)
        if self.cfg.train.zero_terminal_snr and self.m.prediction_type == "epsilon":
            self.warn("train.zero_terminal_snr with epsilon prediction: the last timestep is pure noise, from which "
                      "noise cannot be told apart; kohya warns the same. Set model.prediction_type=v_prediction.")
        self.family = self.m.family
        for module in self.m.models():
            module.requires_grad_(False)
            module.to(self.acc.device, dtype=self.weight_dtype)
        self.m.vae.to(dtype=torch.float32)  # the VAE runs once per image when caching; fp32 avoids NaNs
        quantize_unet(self.m.unet, self.cfg.model.quantize, self.weight_dtype, self.acc.device)

    def inject_lora(self) -> None:
        """Put the adapter `network.algo` names (PEFT LoRA / DoRA, LoHa or LoKr) on the UNet and, if asked, the
        text encoders. LoCon (`conv_rank` > 0) adds every layer inside the UNet's ResNet and down/up-sampling
        blocks, as kohya's `conv_dim`: the 3x3 convs at conv_rank / conv_alpha (PEFT rank_pattern /
        alpha_pattern), the 1x1 shortcut convs and time-embedding projections at rank / alpha."""
        import re

        from diffusers.training_utils import cast_training_params
        from peft import LoHaConfig, LoKrConfig, LoraConfig, inject_adapter_in_model

        net = self.cfg.network
        torch.manual_seed(self.cfg.train.seed)
        if net.algo == "lora":
            make, kw = LoraConfig, dict(r=net.rank, lora_alpha=net.alpha, init_lora_weights="gaussian",
                                        use_dora=net.use_dora)
        else:
            make, kw = {"loha": LoHaConfig, "lokr": LoKrConfig}[net.algo], dict(r=net.rank, alpha=net.alpha)
        targets, self.layer_rank_alpha = list(net.target_modules), {}  # PEFT module path -> (rank, alpha)
        if net.conv_rank:
            for path, module in self.m.unet.named_modules():
                if type(module).__name__ not in ("ResnetBlock2D", "Downsample2D", "Upsample2D"):
                    continue
                for child, layer in module.named_children():
                    if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
                        targets.append(f"{path}.{child}")
                        if isinstance(layer, torch.nn.Conv2d) and layer.kernel_size != (1, 1):
                            self.layer_rank_alpha[f"{path}.{child}"] = (net.conv_rank, net.conv_alpha)
        patterns = {re.escape(path): ra for path, ra in self.layer_rank_alpha.items()}
        unet_config = make(target_modules=targets, rank_pattern={k: r for k, (r, _) in patterns.items()},
                           alpha_pattern={k: a for k, (_, a) in patterns.items()}, **kw)
        try:
            self.m.unet.add_adapter(unet_config)
        except ValueError as e:
            raise ConfigError("network.target_modules", f"{net.target_modules} matched no UNet layer ({e}).") from e
        self.trained = {self.family.unet_prefix: self.m.unet}
        if net.train_text_encoder:
            for prefix, encoder in self.family.text_encoders(self.m).items():
                # PEFT's own injection, as the UNet's add_adapter does inside diffusers: transformers'
                # add_adapter gates on a PEFT version (5.25 asks for peft>=0.22, which no registry served).
                inject_adapter_in_model(make(target_modules=self.family.text_encoder_targets, **kw), encoder,
                                        adapter_name="default")
                self.trained[prefix] = encoder
        cast_training_params(list(self.trained.values()), dtype=torch.float32)
        if self.cfg.train.gradient_checkpointing:
            self.m.unet.enable_gradient_checkpointing()
            for prefix, module in self.trained.items():
                if prefix != self.family.unet_prefix:  # non-reentrant: the frozen embeddings need no grad
                    module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def check_caption_lengths(self) -> None:
        """Warn, naming the file, for each caption the text encoder's tokenizer cuts at its length limit."""
        tokenizer, d = self.m.tokenizer, self.cfg.dataset
        limit = tokenizer.model_max_length  # with the start and end tokens, e.g. 77 for CLIP
        warned = set()
        for item in self.items:
            caption = ds.with_trigger(item.caption, ds.trigger_of(item, d), d.trigger_position)
            ids = tokenizer(caption, truncation=False, add_special_tokens=True, verbose=False).input_ids
            if len(ids) <= limit:
                continue
            caption_file = item.path.with_suffix(d.caption_extension)
            source = caption_file if caption_file.is_file() else item.path.parent
            if source in warned:
                continue
            warned.add(source)
            lost = tokenizer.decode(ids[limit - 1:-1]).strip()
            lost = lost if len(lost) <= 70 else f"{lost[:40]} … {lost[-25:]}"
            self.warn(f"{source}: the caption is {len(ids) - 2} tokens but the text encoder reads only the first "
                      f"{limit - 2}; \"{lost}\" is cut off. Shorten the caption or put the important words first.")

    # ---- 5. caches ---------------------------------------------------------------------------
    @torch.no_grad()
    def build_caches(self) -> None:
        d = self.cfg.dataset
        self.latent_cache: dict[tuple[int, bool], torch.Tensor] = {}
        if d.cache_latents:
            for idx, item in enumerate(self.items):
                for flip in ((False, True) if d.flip_aug else (False,)):
                    sample = ds.Sample(idx, flip, False, 0)
                    self.latent_cache[(idx, flip)] = self._encode_images(ds.pixels_for(item, sample, d)[None])[0]
        self.vset = build_validation_set(self, self.validation_items) if self.validation_items else None
        self.masks = LossMasks(self.items, d, self.cfg.train.unmasked_weight, self.m.vae) \
            if self.cfg.train.masked_loss else None
        if self.masks and self.masks.unmasked:
            names = self.masks.unmasked
            self.warn(f"train.masked_loss: {len(names)} of {len(self.items)} images ({', '.join(names[:3])}"
                      f"{', …' if len(names) > 3 else ''}) have no <stem>{MASK_SUFFIX} and no transparency; "
                      "they are trained whole.")
        self.text_cache: dict[str, dict[str, torch.Tensor]] = {}
        if d.cache_text_embeddings:
            captions = {ds.caption_for(item, ds.Sample(i, False, False, 0), d) for i, item in enumerate(self.items)}
            if d.caption_dropout_rate > 0:
                captions.add("")
            for caption in sorted(captions):
                self.text_cache[caption] = {k: v[0] for k, v in self._encode_text([caption]).items()}
        if d.cache_latents:
            self.m.vae.to("cpu")  # not needed again until samples are drawn
        self.park_encoders()

    def park_encoders(self) -> None:
        """With both caches built and the text encoders frozen, free the VAE's and text encoders' memory
        until samples are drawn (train.free_encoders; see trainers/encoder_parking.py)."""
        d, t = self.cfg.dataset, self.cfg.train
        self.parking = None
        if not (t.free_encoders and d.cache_latents and d.cache_text_embeddings
                and not self.cfg.network.train_text_encoder and self.acc.num_processes == 1):
            return
        modules = {"vae": self.m.vae, **self.family.text_encoders(self.m)}
        self.parking = EncoderParking(modules, self.out_dir)
        self.parking.park()
        log.info("VAE and text encoders parked in %s until samples are drawn", self.parking.path)

    def _encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.m.vae
        latents = vae.encode(pixels.to(self.acc.device, torch.float32)).latent_dist.mode()
        return (latents * vae.config.scaling_factor).to(self.weight_dtype)

    def _encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        return self.family.encode_text(self.m, captions, self.acc.device)

    # ---- 6. optimizer ------------------------------------------------------------------------
    def build_optimizer(self) -> None:
        lr = self.cfg.optim.learning_rate
        te_lr = self.cfg.network.text_encoder_lr or lr
        groups = [group for prefix, module in self.trained.items()
                  for group in loraplus_groups([(n, p) for n, p in module.named_parameters() if p.requires_grad],
                                               lr if prefix == self.family.unet_prefix else te_lr,
                                               self.cfg.optim.loraplus_lr_ratio)]
        self.params = [p for g in groups for p in g["params"]]
        optimizer = make_optimizer(groups, self.cfg.optim)
        self.scheduler = make_scheduler(optimizer, self.cfg.optim, self.total_steps)
        prepared = self.acc.prepare(*self.trained.values(), optimizer)
        self.models = dict(zip(self.trained, prepared[:-1]))
        unet = self.family.unet_prefix
        self.models[unet] = prepare_unet(self.models[unet], self.cfg.train)  # channels_last, compile_unet
        self.optimizer = prepared[-1]
        for prefix, module in self.models.items():  # text encoding must go through the wrapped modules
            if prefix != self.family.unet_prefix:
                self.family.set_text_encoder(self.m, prefix, module)
        t = self.cfg.train
        self.ema = AdapterEMA(self.params, t.ema_decay, t.ema_on_cpu) if t.ema_decay else None

    # ---- 7. resume ---------------------------------------------------------------------------
    def maybe_resume(self) -> int:
        from peft.utils import set_peft_model_state_dict

        if not self.cfg.train.resume_from:
            return 0
        state = load_state(self.cfg.train.resume_from)
        for prefix, module in self.trained.items():
            part = {k[len(prefix) + 1:]: v for k, v in state["lora"].items() if k.startswith(prefix + ".")}
            result = set_peft_model_state_dict(module, part, adapter_name="default")
            if getattr(result, "unexpected_keys", None):
                raise TrainingError(f"train.resume_from: the state's LoRA does not fit this model/network "
                                    f"(unexpected {result.unexpected_keys[:3]}).")
        wanted = [group["initial_lr"] for group in self.optimizer.param_groups]  # this config's base rates
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if wanted != list(self.scheduler.base_lrs):  # e.g. resuming a NaN stop with a lower learning rate
            self.set_base_lrs(wanted)
        if self.ema and state["ema"]:
            self.ema.load(state["ema"])
        elif self.ema:
            self.ema = AdapterEMA(self.params, self.ema.decay, self.cfg.train.ema_on_cpu)
            self.warn(f"train.ema_decay: {Path(self.cfg.train.resume_from).name} holds no EMA; the average starts "
                      f"from the weights of step {state['step']}.")
        log.info("Resumed from %s at step %d", self.cfg.train.resume_from, state["step"])
        return state["step"]

    def set_base_lrs(self, base_lrs: list[float]) -> None:
        """Use this config's learning rates from here on, at the schedule's current position."""
        sched = self.scheduler
        sched.base_lrs = list(base_lrs)
        for group, base, factor in zip(self.optimizer.param_groups, base_lrs, sched.lr_lambdas):
            group["initial_lr"] = base
            group["lr"] = base * factor(sched.last_epoch)
        sched._last_lr = [group["lr"] for group in self.optimizer.param_groups]  # what get_last_lr() reports
        log.info("Learning rates changed on resume: %s", base_lrs)

    # ---- 8. the loop -------------------------------------------------------------------------
    def micro_batch(self, micro: int) -> tuple[list[ds.Sample], list[int]]:
        """This process's samples of global micro-batch `micro`, and their positions in the global batch."""
        epoch, position = divmod(micro, self.micro_per_epoch)
        if position == 0 or getattr(self, "_epoch", None) != epoch:
            self._epoch = epoch
            self._batches = ds.epoch_batches(self.items, self.cfg.dataset, self.global_batch, self.cfg.train.seed,
                                             epoch)
        bs, rank = self.cfg.train.batch_size, self.acc.process_index
        positions = list(range(rank * bs, (rank + 1) * bs))
        return [self._batches[position][j] for j in positions], positions

    def compute_loss(self, micro: int) -> torch.Tensor:
        d, t = self.cfg.dataset, self.cfg.train
        samples, positions = self.micro_batch(micro)
        if d.cache_latents:
            latents = torch.stack([self.latent_cache[(s.index, s.flip)] for s in samples])
        else:
            with torch.no_grad():
                pixels = torch.stack([ds.pixels_for(self.items[s.index], s, d) for s in samples])
                latents = self._encode_images(pixels)
        captions = [ds.caption_for(self.items[s.index], s, d) for s in samples]
        if d.cache_text_embeddings:
            cond = {k: torch.stack([self.text_cache[c][k] for c in captions]) for k in self.text_cache[captions[0]]}
        else:
            cond = self._encode_text(captions)
        sched = self.m.noise_scheduler
        noise, timesteps = [], []
        for pos in positions:
            g = torch.Generator().manual_seed(_seed_for(t.seed, micro, pos))
            n = torch.randn(latents.shape[1:], generator=g)
            if t.noise_offset:
                n += t.noise_offset * torch.randn((latents.shape[1], 1, 1), generator=g)
            noise.append(n)
            timesteps.append(torch.randint(0, sched.config.num_train_timesteps, (1,), generator=g))
        noise = torch.stack(noise).to(latents.device, latents.dtype)
        timesteps = torch.cat(timesteps).to(latents.device)
        noisy = sched.add_noise(latents, noise, timesteps)
        target = noise if self.m.prediction_type == "epsilon" else sched.get_velocity(latents, noise, timesteps)
        geometry = [ds.geometry(self.items[s.index], s, d) for s in samples]
        unet_kwargs = self.family.unet_kwargs(cond, geometry)
        with attention_backend(t):  # train.sdpa_backend
            pred = self.models[self.family.unet_prefix](unet_input(noisy, t), timesteps, **unet_kwargs,
                                                        return_dict=False)[0]
        weights = self.masks.weights(samples, latents.shape) if self.masks else None  # train.masked_loss
        loss = weighted_mse(pred, target, weights)
        if t.min_snr_gamma:
            from diffusers.training_utils import compute_snr

            snr = compute_snr(sched, timesteps)
            weight = torch.clamp(snr, max=t.min_snr_gamma) / (snr + 1 if self.m.prediction_type != "epsilon" else snr)
            loss = loss * weight
        if any(self.items[s.index].is_reg for s in samples):  # kohya's prior_loss_weight
            prior = [t.prior_loss_weight if self.items[s.index].is_reg else 1.0 for s in samples]
            loss = loss * torch.tensor(prior, device=loss.device)
        return loss.mean()

    def weights_finite(self) -> bool:
        """The LoRA weights and every tensor of the optimizer's state are finite. The state counts too: a huge
        gradient can square to inf in AdamW's exp_avg_sq while the step it takes (m / sqrt(v)) stays finite,
        and a state like that cannot be saved or resumed."""
        with torch.no_grad():
            state = [v for per_param in self.optimizer.state.values() for v in per_param.values()
                     if torch.is_tensor(v) and v.is_floating_point()]
            return bool(torch.stack([t.isfinite().all() for t in [*self.params, *state]]).all())

    def stop_non_finite(self, step: int, losses: list[float], what: str) -> None:
        """Save the last good state (step `step`: its loss and weights were finite), publish the error, raise."""
        self.stop(step, losses, "error")
        raise TrainingError(f"{what}; training stopped. The last good state (step {step}) is saved in "
                            f"{self.out_dir}. Lower optim.learning_rate, or use bf16 instead of fp16.")

    def train_steps(self, start: int) -> TrainResult:
        cfg, acc = self.cfg, self.acc
        ga = cfg.train.gradient_accumulation_steps
        for module in self.models.values():
            module.train()
        losses, t0 = [], time.time()
        self.last_good = LastGood()
        for step in range(start, self.total_steps):
            if self.cancel.cancelled:
                return self.stop(step, losses, "cancelled")
            step_loss = 0.0
            for micro in range(step * ga, (step + 1) * ga):
                with acc.accumulate(*self.models.values()):
                    loss = self.compute_loss(micro)
                    losses_now = acc.gather(loss.detach()[None])  # every process's loss, once
                    if not bool(losses_now.isfinite().all()):  # the weights are still those of step `step`
                        self.stop_non_finite(step, losses, f"The loss became {loss.item()} at step {step + 1}")
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.optim.max_grad_norm > 0:
                        acc.clip_grad_norm_(self.params, cfg.optim.max_grad_norm)
                    if micro == (step + 1) * ga - 1:  # the micro-batch whose optimizer step updates the weights
                        self.last_good.keep(self.params, self.optimizer, self.scheduler)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                step_loss += losses_now.mean().item() / ga
            if step == start:
                log.info("Last good state kept on the host: %.1f MB", self.last_good.nbytes / 2**20)
            if not self.weights_finite():
                self.last_good.restore(self.params, self.optimizer, self.scheduler)
                self.stop_non_finite(step, losses, f"The LoRA weights or the optimizer's state became NaN or "
                                                   f"infinite at step {step + 1}")
            lr = self.scheduler.get_last_lr()[0]
            self.scheduler.step()
            done = step + 1
            if self.ema:
                self.ema.update(self.params, done)
            losses.append(step_loss)
            rate = (done - start) / max(time.time() - t0, 1e-9)
            self.log_step(done, step_loss, lr)
            self.events(TrainEvent("step", done, self.total_steps, loss=step_loss, lr=lr, steps_per_s=rate,
                                   eta_s=(self.total_steps - done) / rate))
            self.periodic_outputs(done)
        return self.stop(self.total_steps, losses, "done")

    def epoch_ended(self, step: int) -> int:
        """The number of epochs complete once optimizer step `step` (1-based) is done, if an epoch ended during
        that step, else 0. An epoch is `micro_per_epoch` micro-batches (repeats and balanced regularisation
        images counted), so with gradient accumulation an epoch ends during the step holding its last one."""
        ga = self.cfg.train.gradient_accumulation_steps
        before, after = ((step - 1) * ga) // self.micro_per_epoch, (step * ga) // self.micro_per_epoch
        return after if after > before else 0

    def periodic_outputs(self, done: int) -> None:
        """The checkpoint and samples that `output.save_every_n_*` and `sample.sample_every_n_*` ask for at
        step `done` (the final step's checkpoint is written by `stop`)."""
        out, sample, epoch = self.cfg.output, self.cfg.sample, self.epoch_ended(done)
        if self.vset and _every(done, self.cfg.train.validate_every_n_steps):
            self.validate(done)  # first, so that a checkpoint's file names the best step so far
        by_epoch = _every(epoch, out.save_every_n_epochs)
        if (_every(done, out.save_every_n_steps) or by_epoch) and done < self.total_steps:
            self.save_checkpoint(done, final=False, epoch=epoch if by_epoch else 0)
        if _every(done, sample.sample_every_n_steps) or _every(epoch, sample.sample_every_n_epochs):
            self.make_samples(done)

    def validate(self, step: int) -> None:
        """Score the held-out images (the weights the main file holds), log and publish the loss."""
        use_ema = self.ema is not None and self.cfg.output.save_ema == "ema"
        with self.ema.applied(self.params) if use_ema else nullcontext():
            loss = validation_loss(self, self.vset)
        self.val_losses.append((step, loss))
        best_step, best = best_validation(self.val_losses)
        if self.acc.is_main_process:
            append_line(self.out_dir / "log.jsonl", json.dumps({"step": step, "val_loss": loss,
                                                                 "time": round(time.time(), 3)}), within=self.out_dir)
        self.acc.log({"val_loss": loss}, step=step)
        self.events(TrainEvent("validation", step, self.total_steps, loss=loss,
                               extra={"best_step": best_step, "best_loss": best}))

    # ---- 9. outputs --------------------------------------------------------------------------
    def lora_state(self) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        return {f"{prefix}.{k}": v for prefix, module in self.trained.items()
                for k, v in get_peft_model_state_dict(module).items()}

    def adapter(self, step: int) -> LoraAdapter:
        from peft.utils import get_peft_model_state_dict

        layers = {}
        for prefix, module in self.trained.items():
            rename = partial(self.family.kohya_path, prefix, model=self.acc.unwrap_model(module))
            layers.update(from_peft(get_peft_model_state_dict(module), prefix, self.cfg.network.alpha, rename,
                                    rank=self.cfg.network.rank,
                                    rank_alpha=self.layer_rank_alpha if prefix == self.family.unet_prefix else None))
        accum = self.cfg.train.gradient_accumulation_steps
        epoch = max(1, math.ceil(step * accum / self.micro_per_epoch))  # 1-based: the epoch this save falls in
        meta = adapter_metadata(self.cfg, self.family, step=step, epoch=epoch, num_images=self.num_train,
                                reg_items=self.reg_found, train_items=self.items,
                                tag_frequency=self.tag_frequency, started_at=self.started_at,
                                bucket_info=ds.bucket_info(self.items, self.cfg.dataset),
                                batches_per_epoch=self.micro_per_epoch,
                                num_epochs=math.ceil(self.total_steps / math.ceil(self.micro_per_epoch / accum)),
                                num_processes=self.acc.num_processes, session_id=self.session_id)
        return LoraAdapter(layers, {**meta, **craft_metadata(self.cfg, self.m.prediction_type),
                                    **validation_metadata(self.val_losses, step)})

    def save_checkpoint(self, step: int, final: bool, epoch: int = 0) -> tuple[Path | None, Path | None]:
        """The LoRA (named by `epoch` when an epoch setting asked for it, else by step) and the state."""
        if not self.acc.is_main_process:
            self.acc.wait_for_everyone()
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
        self.acc.wait_for_everyone()
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

    def stop(self, step: int, losses: list[float], kind: str) -> TrainResult:
        """End the run as `kind` ("done", "cancelled" or "error"): checkpoint, last samples, event."""
        final = kind == "done"
        if final and self.vset and step not in dict(self.val_losses):
            self.validate(step)  # the end is always scored
        lora_path, state_path = self.save_checkpoint(step, final=final)
        if final and self.sampled_at != step:  # the end always gets samples, once
            self.make_samples(step)
        message = "stopped on a non-finite loss" if kind == "error" else ""
        self.acc.end_training()  # closes the trackers' files (output.log_with)
        self.events(TrainEvent(kind, step, self.total_steps, message=message,
                               paths=tuple(str(p) for p in (lora_path,) if p)))
        return TrainResult(lora_path, state_path, step, kind == "cancelled", losses, list(self.val_losses),
                           best_validation(self.val_losses)[0])

    def log_step(self, step: int, loss: float, lr: float) -> None:
        if self.acc.is_main_process:
            append_line(self.out_dir / "log.jsonl",
                        json.dumps({"step": step, "loss": loss, "lr": lr, "time": round(time.time(), 3)}),
                        within=self.out_dir)
        self.acc.log({"loss": loss, "lr": lr}, step=step)  # output.log_with (nothing without a tracker)

    def start_log(self, start: int) -> None:
        """Keep the log lines of the steps before `start` (all of them on resume, none on a fresh run)."""
        if not self.acc.is_main_process:
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

    @torch.no_grad()
    def make_samples(self, step: int) -> None:
        self.sampled_at = step
        if not self.acc.is_main_process or not self.cfg.sample.prompts:
            return
        with self.parking.unparked() if getattr(self, "parking", None) else contextlib.nullcontext():
            self._draw_samples(step)

    def _draw_samples(self, step: int) -> None:
        s = self.cfg.sample
        unwrapped = Components(**{**vars(self.m), "unet": self.acc.unwrap_model(self.m.unet)})
        for prefix, module in self.family.text_encoders(self.m).items():
            self.family.set_text_encoder(unwrapped, prefix, self.acc.unwrap_model(module))
        self.m.vae.to(self.acc.device)
        pipe = self.family.pipeline(unwrapped)
        pipe.set_progress_bar_config(disable=True)
        paths, images = [], []
        res = self.cfg.dataset.resolution
        with self.acc.autocast(), self.ema.applied(self.params) if s.use_ema else nullcontext():
            for i, prompt in enumerate(s.prompts):
                image = pipe(prompt, negative_prompt=s.negative_prompt or None, num_inference_steps=s.steps,
                             guidance_scale=s.guidance_scale, height=res, width=res,
                             generator=torch.Generator().manual_seed(s.seed + i)).images[0]
                path = self.out_dir / "samples" / f"{self.name}-step{step:06d}-{i}.png"
                save_png(image, path, **self.own_files)
                paths.append(str(path))
                images.append(image)
        log_samples(self.acc, step, images)
        if self.cfg.dataset.cache_latents:
            self.m.vae.to("cpu")
        for module in self.models.values():
            module.train()
        self.events(TrainEvent("sample", step, self.total_steps, paths=tuple(paths)))

    # ---- the whole run -----------------------------------------------------------------------
    def run(self) -> TrainResult:
        # one run folder per job: refuse another run's folder, lock it, clear a killed run's temp files
        check_run_folder(self.cfg)
        if int(os.environ.get("RANK", "0")) != 0:  # only the main process writes files
            return self._run()
        with RunLock(self.out_dir):
            remove_stale_temps(self.out_dir)
            return self._run()

    def _run(self) -> TrainResult:
        self.scan_data()
        self.setup_accelerator()
        self.events(TrainEvent("log", message=f"{len(self.items)} images; loading {self.cfg.model.base_model or 'the embedded model'}"))
        self.load_model()
        self.check_caption_lengths()
        self.inject_lora()
        self.build_caches()
        self.build_optimizer()
        start = self.maybe_resume()
        self.start_log(start)
        start_trackers(self.acc, self.cfg.output, self.out_dir)
        self.events(TrainEvent("start", start, self.total_steps))
        try:
            return self.train_steps(start)
        finally:
            if getattr(self, "parking", None):
                self.parking.discard()


def train(config: LoramixConfig, events: EventSink = no_events, cancel: CancelToken | None = None) -> TrainResult:
    """Train a LoRA as `config` says; progress goes to `events`; `cancel` stops it between steps."""
    return LoraTrainer(config, events, cancel).run()
