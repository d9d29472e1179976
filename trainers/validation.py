"""Validation: the held-out images scored with fixed noise, timesteps and seed, so the number compares
from step to step and from run to run.

Each image (center-cropped to its bucket, not flipped, its caption with the trigger word) is noised at the
same five timesteps, spread over the schedule, with noise drawn from a seed made of a constant and the
image's file name; never from `train.seed`. The loss is the training objective's mean squared error
(epsilon or velocity target, the mask when `train.masked_loss` is on), without min-SNR or prior weights,
averaged over images and timesteps. It scores the weights the main file holds: the EMA with
`output.save_ema=ema`, else the trained weights.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import torch

from trainers import dataset as ds
from trainers.masks import mask_for, weighted_mse

TIMESTEP_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
SEED = "loramix-validation"


@dataclass
class ValidationSet:
    items: list[ds.ImageItem]
    latents: list[torch.Tensor]  # (C, h, w) each
    masks: list[torch.Tensor | None]  # (1, h, w) at latent resolution, or None
    noise: list[torch.Tensor]  # (len(TIMESTEP_FRACTIONS), C, h, w) each
    timesteps: torch.Tensor
    conds: list[dict[str, torch.Tensor]] | None = None  # the captions' embeddings, when the text encoder is frozen


@torch.no_grad()
def build_validation_set(trainer, items: list[ds.ImageItem]) -> ValidationSet:
    """Encode the held-out images once (the VAE is still loaded) and draw their fixed noise; with a frozen text
    encoder, their captions' embeddings too, so that scoring needs neither the VAE nor the text encoders (they may
    be parked out of memory: train.free_encoders)."""
    dataset = trainer.cfg.dataset
    n = trainer.components.noise_scheduler.config.num_train_timesteps
    timesteps = torch.tensor([int(f * n) for f in TIMESTEP_FRACTIONS])
    latents, masks, noise = [], [], []
    plain, sample = replace(dataset, crop="center"), ds.Sample(0, False, False, 0)
    for item in items:
        latent = trainer.encode_images(ds.pixels_for(item, sample, plain)[None])[0]
        latents.append(latent)
        masks.append(mask_for(item, sample, plain, tuple(latent.shape[-2:])) if trainer.cfg.train.masked_loss
                     else None)
        g = torch.Generator().manual_seed(random.Random(f"{SEED}:{item.path.name}").getrandbits(63))
        noise.append(torch.randn((len(timesteps), *latent.shape), generator=g))
    conds = None
    if not trainer.cfg.network.train_text_encoder:
        conds = [trainer.encode_text([ds.caption_for(item, sample, dataset)]) for item in items]
    return ValidationSet(items, latents, masks, noise, timesteps, conds)


@torch.no_grad()
def validation_loss(trainer, vset: ValidationSet) -> float:
    """The mean validation loss of the weights now in the model."""
    dataset, noise_scheduler = trainer.cfg.dataset, trainer.components.noise_scheduler
    unet = trainer.models[trainer.family.unet_prefix]
    plain, sample = replace(dataset, crop="center"), ds.Sample(0, False, False, 0)
    total = 0.0
    for i, (item, latent, mask, noise) in enumerate(zip(vset.items, vset.latents, vset.masks, vset.noise)):
        k = len(vset.timesteps)
        encoded = vset.conds[i] if vset.conds is not None else trainer.encode_text([ds.caption_for(item, sample, dataset)])
        cond = {key: v.expand(k, *v.shape[1:]) for key, v in encoded.items()}
        x0 = latent[None].expand(k, *latent.shape)
        eps = noise.to(latent.device, latent.dtype)
        t = vset.timesteps.to(latent.device)
        target = eps if trainer.components.prediction_type == "epsilon" else noise_scheduler.get_velocity(x0, eps, t)
        geometry = [ds.geometry(item, sample, plain)] * k
        pred = unet(noise_scheduler.add_noise(x0, eps, t), t, **trainer.family.unet_kwargs(cond, geometry),
                    return_dict=False)[0]
        weights = None if mask is None else (trainer.cfg.train.unmasked_weight
                                             + (1 - trainer.cfg.train.unmasked_weight) * mask)[None]
        total += weighted_mse(pred, target, weights).mean().item()
    return total / len(vset.items)


def best_validation(losses: list[tuple[int, float]]) -> tuple[int | None, float | None]:
    """(step, loss) of the lowest validation loss (the earliest on a tie); (None, None) before any."""
    if not losses:
        return None, None
    return min(losses, key=lambda step_loss: (step_loss[1], step_loss[0]))


def validation_metadata(losses: list[tuple[int, float]], step: int) -> dict[str, str]:
    """loramix's metadata keys for validation: the loss at `step` and the best step so far (none without)."""
    best_step, best = best_validation(losses)
    if best_step is None:
        return {}
    here = dict(losses).get(step)
    return {"loramix_validation_loss": "" if here is None else f"{here:.6g}",
            "loramix_best_validation_step": str(best_step), "loramix_best_validation_loss": f"{best:.6g}"}
