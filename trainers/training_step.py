"""One micro-batch's loss: which samples, their latents and text, the noise and timesteps, the target the
model predicts (noise, or velocity for v-prediction), and the loss weights (masks, min-SNR, prior loss).

Every random choice comes from `seed_for(train.seed, micro-batch index, position in the global batch)`, so a
resumed run, and an N-process run with the same global batch, draw what a single uninterrupted run draws.
"""

from __future__ import annotations

import random

import torch

from trainers import dataset as ds
from trainers.masks import weighted_mse
from trainers.speed import attention_backend, unet_input


def seed_for(*parts) -> int:
    """A 63-bit seed made from `parts` (e.g. train.seed, micro-batch, position), the same on every process."""
    return random.Random(":".join(map(str, parts))).getrandbits(63)


def draw_noise(train, micro: int, positions: list[int], latents: torch.Tensor,
               num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise (plus `train.noise_offset`, per channel) and timestep of each sample of micro-batch `micro`, the
    timestep drawn from [train.min_timestep, train.max_timestep) (kohya's range; the whole schedule by default)."""
    low, high = train.min_timestep, min(train.max_timestep, num_train_timesteps)
    noise, timesteps = [], []
    for pos in positions:
        g = torch.Generator().manual_seed(seed_for(train.seed, micro, pos))
        sample_noise = torch.randn(latents.shape[1:], generator=g)
        if train.noise_offset:
            sample_noise += train.noise_offset * torch.randn((latents.shape[1], 1, 1), generator=g)
        noise.append(sample_noise)
        timesteps.append(torch.randint(low, high, (1,), generator=g))
    return torch.stack(noise).to(latents.device, latents.dtype), torch.cat(timesteps).to(latents.device)


class TrainingStep:
    """The loss of one micro-batch (a `LoraTrainer` job; it reads what `TrainingSetup` built)."""

    def micro_batch(self, micro: int) -> tuple[list[ds.Sample], list[int]]:
        """This process's samples of global micro-batch `micro`, and their positions in the global batch."""
        epoch, position = divmod(micro, self.micro_per_epoch)
        if position == 0 or getattr(self, "_epoch", None) != epoch:
            self._epoch = epoch
            self._batches = ds.epoch_batches(self.items, self.cfg.dataset, self.global_batch, self.cfg.train.seed,
                                             epoch)
        batch_size, rank = self.cfg.train.batch_size, self.accelerator.process_index
        positions = list(range(rank * batch_size, (rank + 1) * batch_size))
        return [self._batches[position][j] for j in positions], positions

    def batch_latents(self, samples: list[ds.Sample]) -> torch.Tensor:
        """The samples' latents: from the cache, else encoded now."""
        dataset = self.cfg.dataset
        if dataset.cache_latents:
            return torch.stack([self.latent_cache[(s.index, s.flip)] for s in samples])
        with torch.no_grad():
            pixels = torch.stack([ds.pixels_for(self.items[s.index], s, dataset) for s in samples])
            return self.encode_images(pixels)

    def batch_text(self, samples: list[ds.Sample]) -> dict[str, torch.Tensor]:
        """The samples' text conditioning: from the cache, else encoded now (with the text encoder in training)."""
        dataset = self.cfg.dataset
        captions = [ds.caption_for(self.items[s.index], s, dataset) for s in samples]
        if dataset.cache_text_embeddings:
            return {k: torch.stack([self.text_cache[c][k] for c in captions]) for k in self.text_cache[captions[0]]}
        return self.encode_text(captions)

    def compute_loss(self, micro: int) -> torch.Tensor:
        dataset, train = self.cfg.dataset, self.cfg.train
        samples, positions = self.micro_batch(micro)
        latents = self.batch_latents(samples)
        cond = self.batch_text(samples)
        noise_scheduler = self.components.noise_scheduler
        noise, timesteps = draw_noise(train, micro, positions, latents, noise_scheduler.config.num_train_timesteps)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        epsilon = self.components.prediction_type == "epsilon"
        target = noise if epsilon else noise_scheduler.get_velocity(latents, noise, timesteps)
        geometry = [ds.geometry(self.items[s.index], s, dataset) for s in samples]
        unet_kwargs = self.family.unet_kwargs(cond, geometry)
        with attention_backend(train):  # train.sdpa_backend
            pred = self.models[self.family.unet_prefix](unet_input(noisy, train), timesteps, **unet_kwargs,
                                                        return_dict=False)[0]
        weights = self.masks.weights(samples, latents.shape) if self.masks else None  # train.masked_loss
        loss = weighted_mse(pred, target, weights)
        if train.min_snr_gamma:
            from diffusers.training_utils import compute_snr

            snr = compute_snr(noise_scheduler, timesteps)
            weight = torch.clamp(snr, max=train.min_snr_gamma) / (snr if epsilon else snr + 1)
            loss = loss * weight
        if any(self.items[s.index].is_reg for s in samples):  # kohya's prior_loss_weight
            prior = [train.prior_loss_weight if self.items[s.index].is_reg else 1.0 for s in samples]
            loss = loss * torch.tensor(prior, device=loss.device)
        return loss.mean()
