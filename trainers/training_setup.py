"""Setting up a training run: everything before the first step, in the order `LoraTrainer._run` calls it.

    scan data -> Accelerator -> base model -> caption lengths -> adapter -> caches -> optimizer -> resume

Sets, for the stages after it: `items` (and the validation items, tag counts), `accelerator`, `weight_dtype`,
`global_batch`, `micro_per_epoch`, `total_steps`, `components` (the loaded base model) and `family`,
`trained` (prefix -> module carrying the adapter), `latent_cache`, `text_cache`, `vset`, `masks`, `parking`,
`params`, `optimizer`, `scheduler`, `models` (the accelerate-prepared modules) and `ema`.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

from loramix.core.errors import ConfigError, TrainingError
from loramix.core.events import TrainEvent
from loramix.formats.base_model import load_base_model
from loramix.formats.families import Components
from trainers import dataset as ds
from trainers.checkpoint import check_state_file, load_state
from trainers.ema import AdapterEMA
from trainers.encoder_parking import EncoderParking
from trainers.masks import MASK_SUFFIX, LossMasks
from trainers.noise import configure_noise
from trainers.optim import loraplus_groups, make_optimizer, make_scheduler
from trainers.quantize import check_quantize_backend, quantize_unet
from trainers.speed import check_speed_options, prepare_unet, resolve_precision
from trainers.trackers import accelerator_options
from trainers.validation import build_validation_set

log = logging.getLogger(__name__)


class TrainingSetup:
    """The setup steps of `LoraTrainer` (one class per job; `LoraTrainer` joins them)."""

    # ---- data (before any model is loaded, so dataset errors come fast) ----------------------
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

    # ---- accelerator -------------------------------------------------------------------------
    def setup_accelerator(self) -> None:
        from accelerate import Accelerator

        train = self.cfg.train
        # accelerate only forms a multi-process CPU group (gloo) when told cpu=True; without CUDA,
        # `accelerate launch --multi_gpu --num_processes N` then works on a CPU-only machine too.
        cpu_group = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        precision = resolve_precision(train.mixed_precision, self.cfg.model.base_model)
        fresh_accelerator_state()
        try:
            self.accelerator = Accelerator(mixed_precision=precision, cpu=cpu_group,
                                           gradient_accumulation_steps=train.gradient_accumulation_steps,
                                           **accelerator_options(self.cfg.output, self.out_dir))  # output.log_with
        except ValueError as e:
            raise ConfigError("train.mixed_precision", f"{train.mixed_precision} is not available here: {e}") from e
        check_speed_options(train, self.accelerator.device)
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.accelerator.mixed_precision,
                                                                                   torch.float32)
        self.global_batch = train.batch_size * self.accelerator.num_processes
        self.micro_per_epoch = ds.batches_per_epoch(self.items, self.global_batch)
        steps_per_epoch = math.ceil(self.micro_per_epoch / train.gradient_accumulation_steps)
        self.total_steps = train.max_steps or train.epochs * steps_per_epoch

    # ---- base model and adapter --------------------------------------------------------------
    def load_model(self) -> None:
        """Load the base model frozen, in the compute dtype; with `model.quantize` the UNet's linear layers are
        stored in int8 (torchao weight-only) or NF4 (bitsandbytes) before the adapter goes on top of them."""
        model, device = self.cfg.model, self.accelerator.device
        check_quantize_backend(model.quantize, device)
        self.components: Components = load_base_model(model.base_model, model.revision)
        configure_noise(self.components, model.prediction_type, self.cfg.train.zero_terminal_snr)
        if self.cfg.train.zero_terminal_snr and self.components.prediction_type == "epsilon":
            self.warn("train.zero_terminal_snr with epsilon prediction: the last timestep is pure noise, from which "
                      "noise cannot be told apart; kohya warns the same. Set model.prediction_type=v_prediction.")
        self.family = self.components.family
        for module in self.components.models():
            module.requires_grad_(False)
            module.to(device, dtype=self.weight_dtype)
        self.components.vae.to(dtype=torch.float32)  # the VAE runs once per image when caching; fp32 avoids NaNs
        quantize_unet(self.components.unet, model.quantize, self.weight_dtype, device)

    def inject_lora(self) -> None:
        """Put the adapter `network.algo` names (PEFT LoRA / DoRA, LoHa or LoKr) on the UNet and, if asked, the
        text encoders. LoCon (`conv_rank` > 0) adds every layer inside the UNet's ResNet and down/up-sampling
        blocks, as kohya's `conv_dim`: the 3x3 convs at conv_rank / conv_alpha (PEFT rank_pattern /
        alpha_pattern), the 1x1 shortcut convs and time-embedding projections at rank / alpha."""
        import re

        from diffusers.training_utils import cast_training_params
        from peft import LoHaConfig, LoKrConfig, LoraConfig, inject_adapter_in_model

        network, unet = self.cfg.network, self.components.unet
        torch.manual_seed(self.cfg.train.seed)
        if network.algo == "lora":
            make, kw = LoraConfig, dict(r=network.rank, lora_alpha=network.alpha, init_lora_weights="gaussian",
                                        use_dora=network.use_dora)
        else:
            make, kw = {"loha": LoHaConfig, "lokr": LoKrConfig}[network.algo], dict(r=network.rank, alpha=network.alpha)
        targets, self.layer_rank_alpha = list(network.target_modules), {}  # PEFT module path -> (rank, alpha)
        if network.conv_rank:
            for path, module in unet.named_modules():
                if type(module).__name__ not in ("ResnetBlock2D", "Downsample2D", "Upsample2D"):
                    continue
                for child, layer in module.named_children():
                    if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
                        targets.append(f"{path}.{child}")
                        if isinstance(layer, torch.nn.Conv2d) and layer.kernel_size != (1, 1):
                            self.layer_rank_alpha[f"{path}.{child}"] = (network.conv_rank, network.conv_alpha)
        patterns = {re.escape(path): ra for path, ra in self.layer_rank_alpha.items()}
        unet_config = make(target_modules=targets, rank_pattern={k: r for k, (r, _) in patterns.items()},
                           alpha_pattern={k: a for k, (_, a) in patterns.items()}, **kw)
        try:
            unet.add_adapter(unet_config)
        except ValueError as e:
            raise ConfigError("network.target_modules", f"{network.target_modules} matched no UNet layer ({e}).") from e
        self.trained = {self.family.unet_prefix: unet}
        if network.train_text_encoder:
            for prefix, encoder in self.family.text_encoders(self.components).items():
                # PEFT's own injection, as the UNet's add_adapter does inside diffusers: transformers'
                # add_adapter gates on a PEFT version (5.25 asks for peft>=0.22, which no registry served).
                inject_adapter_in_model(make(target_modules=self.family.text_encoder_targets, **kw), encoder,
                                        adapter_name="default")
                self.trained[prefix] = encoder
        cast_training_params(list(self.trained.values()), dtype=torch.float32)
        if self.cfg.train.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            for prefix, module in self.trained.items():
                if prefix != self.family.unet_prefix:  # non-reentrant: the frozen embeddings need no grad
                    module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def check_caption_lengths(self) -> None:
        """Warn, naming the file, for each caption the text encoder's tokenizer cuts at its length limit."""
        tokenizer, dataset = self.components.tokenizer, self.cfg.dataset
        limit = tokenizer.model_max_length  # with the start and end tokens, e.g. 77 for CLIP
        warned = set()
        for item in self.items:
            caption = ds.with_trigger(item.caption, ds.trigger_of(item, dataset), dataset.trigger_position)
            ids = tokenizer(caption, truncation=False, add_special_tokens=True, verbose=False).input_ids
            if len(ids) <= limit:
                continue
            caption_file = item.path.with_suffix(dataset.caption_extension)
            source = caption_file if caption_file.is_file() else item.path.parent
            if source in warned:
                continue
            warned.add(source)
            lost = tokenizer.decode(ids[limit - 1:-1]).strip()
            lost = lost if len(lost) <= 70 else f"{lost[:40]} … {lost[-25:]}"
            self.warn(f"{source}: the caption is {len(ids) - 2} tokens but the text encoder reads only the first "
                      f"{limit - 2}; \"{lost}\" is cut off. Shorten the caption or put the important words first.")

    # ---- caches ------------------------------------------------------------------------------
    @torch.no_grad()
    def build_caches(self) -> None:
        dataset = self.cfg.dataset
        self.latent_cache: dict[tuple[int, bool], torch.Tensor] = {}
        if dataset.cache_latents:
            for idx, item in enumerate(self.items):
                for flip in ((False, True) if dataset.flip_aug else (False,)):
                    sample = ds.Sample(idx, flip, False, 0)
                    self.latent_cache[(idx, flip)] = self.encode_images(ds.pixels_for(item, sample, dataset)[None])[0]
        self.vset = build_validation_set(self, self.validation_items) if self.validation_items else None
        self.masks = LossMasks(self.items, dataset, self.cfg.train.unmasked_weight, self.components.vae) \
            if self.cfg.train.masked_loss else None
        if self.masks and self.masks.unmasked:
            names = self.masks.unmasked
            self.warn(f"train.masked_loss: {len(names)} of {len(self.items)} images ({', '.join(names[:3])}"
                      f"{', …' if len(names) > 3 else ''}) have no <stem>{MASK_SUFFIX} and no transparency; "
                      "they are trained whole.")
        self.text_cache: dict[str, dict[str, torch.Tensor]] = {}
        if dataset.cache_text_embeddings:
            captions = {ds.caption_for(item, ds.Sample(i, False, False, 0), dataset)
                        for i, item in enumerate(self.items)}
            if dataset.caption_dropout_rate > 0:
                captions.add("")
            for caption in sorted(captions):
                self.text_cache[caption] = {k: v[0] for k, v in self.encode_text([caption]).items()}
        if dataset.cache_latents:
            self.components.vae.to("cpu")  # not needed again until samples are drawn
        self.park_encoders()

    def park_encoders(self) -> None:
        """With both caches built and the text encoders frozen, free the VAE's and text encoders' memory
        until samples are drawn (train.free_encoders; see trainers/encoder_parking.py)."""
        dataset, train = self.cfg.dataset, self.cfg.train
        self.parking = None
        if not (train.free_encoders and dataset.cache_latents and dataset.cache_text_embeddings
                and not self.cfg.network.train_text_encoder and self.accelerator.num_processes == 1):
            return
        modules = {"vae": self.components.vae, **self.family.text_encoders(self.components)}
        self.parking = EncoderParking(modules, self.out_dir)
        self.parking.park()
        log.info("VAE and text encoders parked in %s until samples are drawn", self.parking.path)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Latents of a batch of pixels (the VAE's mode, scaled), in the compute dtype."""
        vae = self.components.vae
        latents = vae.encode(pixels.to(self.accelerator.device, torch.float32)).latent_dist.mode()
        return (latents * vae.config.scaling_factor).to(self.weight_dtype)

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """The UNet's text conditioning for a batch of captions, as the model family encodes it."""
        return self.family.encode_text(self.components, captions, self.accelerator.device)

    # ---- optimizer ---------------------------------------------------------------------------
    def build_optimizer(self) -> None:
        lr = self.cfg.optim.learning_rate
        text_encoder_lr = self.cfg.network.text_encoder_lr or lr
        unet_prefix = self.family.unet_prefix
        groups = [group for prefix, module in self.trained.items()
                  for group in loraplus_groups([(n, p) for n, p in module.named_parameters() if p.requires_grad],
                                               lr if prefix == unet_prefix else text_encoder_lr,
                                               self.cfg.optim.loraplus_lr_ratio)]
        self.params = [p for g in groups for p in g["params"]]
        optimizer = make_optimizer(groups, self.cfg.optim)
        self.scheduler = make_scheduler(optimizer, self.cfg.optim, self.total_steps)
        prepared = self.accelerator.prepare(*self.trained.values(), optimizer)
        self.models = dict(zip(self.trained, prepared[:-1]))
        self.models[unet_prefix] = prepare_unet(self.models[unet_prefix], self.cfg.train)  # channels_last, compile
        self.optimizer = prepared[-1]
        for prefix, module in self.models.items():  # text encoding must go through the wrapped modules
            if prefix != unet_prefix:
                self.family.set_text_encoder(self.components, prefix, module)
        train = self.cfg.train
        self.ema = AdapterEMA(self.params, train.ema_decay, train.ema_on_cpu) if train.ema_decay else None

    # ---- resume ------------------------------------------------------------------------------
    def maybe_resume(self) -> int:
        """Load `train.resume_from` (adapter, optimizer, schedule, EMA) and return its step; 0 without one."""
        from peft.utils import set_peft_model_state_dict

        resume_from = self.cfg.train.resume_from
        if not resume_from:
            return 0
        state = load_state(resume_from)
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
            self.warn(f"train.ema_decay: {Path(resume_from).name} holds no EMA; the average starts "
                      f"from the weights of step {state['step']}.")
        log.info("Resumed from %s at step %d", resume_from, state["step"])
        return state["step"]

    def set_base_lrs(self, base_lrs: list[float]) -> None:
        """Use this config's learning rates from here on, at the schedule's current position."""
        scheduler = self.scheduler
        scheduler.base_lrs = list(base_lrs)
        for group, base, factor in zip(self.optimizer.param_groups, base_lrs, scheduler.lr_lambdas):
            group["initial_lr"] = base
            group["lr"] = base * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]  # what get_last_lr() reports
        log.info("Learning rates changed on resume: %s", base_lrs)


def fresh_accelerator_state() -> None:
    """Let this run's Accelerator take its own precision. accelerate keeps one AcceleratorState per process and
    refuses a second Accelerator with another mixed_precision; the web app and the tests run job after job in
    one process (an fp32 job on the demo model, then a bf16 one on SD 1.5). The per-run state is cleared; the
    process group (accelerate's PartialState) stays, so `accelerate launch` runs are untouched. This is the
    reset accelerate's own test utilities use (`AcceleratorState._reset_state`)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
