"""Masked loss: which pixels of a training image count, from `<stem>.mask.png` beside it or its alpha channel.

A mask is white where the loss counts and black where it does not (grey: partly). It goes through the
image's own bucket resize, crop and flip, then is averaged down to the latent grid; the trainer caches it
beside the latents. Pixels outside the mask count with `train.unmasked_weight` (0 = not at all), and a
sample's loss is the weighted mean over its latent pixels, so a small mask trains as strongly as a large
one. An image with neither a mask file nor transparency is trained on whole.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from loramix.core.config import DatasetConfig
from loramix.core.errors import DatasetError
from trainers import dataset as ds

MASK_SUFFIX = ds.MASK_SUFFIX  # "<stem>.mask.png"


def mask_file(item: ds.ImageItem) -> Path:
    return item.path.with_name(item.path.stem + MASK_SUFFIX)


def load_mask(item: ds.ImageItem) -> Image.Image | None:
    """The item's mask as an 8-bit grey image of the oriented image's size: the mask file, else the image's
    alpha channel, else None."""
    path = mask_file(item)
    try:
        if path.is_file():
            with Image.open(path) as im:
                mask = ImageOps.exif_transpose(im).convert("L")
        else:
            with Image.open(item.path) as im:
                im = ImageOps.exif_transpose(im)
                if im.mode == "P":
                    im = im.convert("RGBA")
                if im.mode not in ("RGBA", "LA", "PA"):
                    return None
                mask = im.getchannel("A")
    except ds.IMAGE_ERRORS as e:
        raise DatasetError(f"{path if path.is_file() else item.path}: cannot read the mask ({e}); save it again as "
                           "a grey PNG.") from e
    if mask.size != item.size:
        mask = mask.resize(item.size, Image.Resampling.BILINEAR)
    return mask


def mask_for(item: ds.ImageItem, sample: ds.Sample, cfg: DatasetConfig,
             latent_size: tuple[int, int]) -> torch.Tensor | None:
    """The mask as a (1, h, w) tensor in [0, 1] at latent resolution, cropped and flipped as `pixels_for`
    crops and flips the image; None for an image without one."""
    mask = load_mask(item)
    if mask is None:
        return None
    mask = ds.fit_to_bucket(mask, item.bucket, cfg.crop, random.Random(sample.variant_seed))
    if sample.flip:
        mask = ImageOps.mirror(mask)
    pixels = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None, None]
    return F.interpolate(pixels, size=latent_size, mode="area")[0]


def loss_weights(masks: list[torch.Tensor | None], shape: tuple[int, ...], unmasked_weight: float) -> torch.Tensor:
    """Per-pixel loss weights (B, 1, h, w): 1 inside each mask, `unmasked_weight` outside it, 1 without one."""
    ones = torch.ones(shape[-2:])[None]
    stacked = torch.stack([ones if m is None else m for m in masks])
    return unmasked_weight + (1.0 - unmasked_weight) * stacked


class LossMasks:
    """`train.masked_loss` for a run: with cached latents, every image's mask at latent resolution computed
    once (per flip); without, each drawn sample's mask when its batch is drawn (random crops differ)."""

    def __init__(self, items: list[ds.ImageItem], cfg: DatasetConfig, unmasked_weight: float, vae):
        self.items, self.cfg, self.unmasked_weight = items, cfg, unmasked_weight
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)  # the VAE's downsampling
        self.cache: dict[tuple[int, bool], torch.Tensor | None] = {}
        self.unmasked: list[str] = []  # file names of the images without a mask (trained whole)
        for idx, item in enumerate(items):
            size = item.bucket[1] // self.factor, item.bucket[0] // self.factor
            for flip in ((False, True) if cfg.flip_aug else (False,)):
                mask = mask_for(item, ds.Sample(idx, flip, False, 0), cfg, size)
                if cfg.cache_latents:
                    self.cache[(idx, flip)] = mask
            if mask is None:
                self.unmasked.append(item.path.name)

    def weights(self, samples: list[ds.Sample], latent_shape: tuple[int, ...]) -> torch.Tensor:
        """Per-pixel loss weights (B, 1, h, w) of a micro-batch."""
        if self.cfg.cache_latents:
            masks = [self.cache[(s.index, s.flip)] for s in samples]
        else:
            masks = [mask_for(self.items[s.index], s, self.cfg, tuple(latent_shape[-2:])) for s in samples]
        return loss_weights(masks, tuple(latent_shape), self.unmasked_weight)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Each sample's mean squared error, weighted per pixel (the weighted mean) when `weights` is given."""
    se = F.mse_loss(pred.float(), target.float(), reduction="none")
    if weights is None:
        return se.mean(dim=(1, 2, 3))
    weights = weights.to(se.device, se.dtype).expand_as(se)
    return (se * weights).sum(dim=(1, 2, 3)) / weights.sum(dim=(1, 2, 3)).clamp_min(1e-8)
