"""Pretrain the embedded tiny Stable Diffusion from scratch on the coloured-shapes corpus, on a CPU.

    python tools/pretrain_tiny.py --out loramix/embedded/tiny-sd --seed 0

Three stages, each a function below: train the VAE as an autoencoder (64px -> 16x16x4 latents) on 32px
crops; encode the corpus once and set the latent scaling factor from the latents' spread; train the UNet
(epsilon prediction, min-SNR weighting, 10% empty captions for classifier-free guidance) together with
the CLIP text encoder on the cached latents, keeping an EMA of both; a small auxiliary loss keeps every
caption word readable in the text encoder's output (see `train_unet`). The result is an ordinary diffusers
folder (`StableDiffusionPipeline.from_pretrained` loads it offline), UNet and VAE stored in fp16.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from make_corpus import make_corpus

from loramix.embedded.scenes import VOCABULARY
from loramix.embedded.tiny import tiny_configs, write_clip_tokenizer

log = logging.getLogger("pretrain_tiny")

UNET_CHANNELS = (64, 128, 128, 128)
VAE_CHANNELS = (16, 32, 64)
TEXT_DIM = 64


def build_models(tokenizer_dir: Path, seed: int):
    """Random-init VAE, UNet, text encoder, tokenizer and DDIM sampler for the embedded architecture."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tokenizer_dir, VOCABULARY))
    cfg = tiny_configs(image_size=64, text_dim=TEXT_DIM, vocab_size=len(tokenizer),
                       unet_channels=UNET_CHANNELS, vae_channels=VAE_CHANNELS)
    # Cross-attention at 8x8, 4x4 and 2x2 (attention at 16x16 costs 3x the time on a CPU); 16-wide heads.
    # The 2x2 level is there for left/right: a UNet has no position embedding, only zero padding, and
    # with its deepest level at 4x4 the previous model never learned to tell "left" from "right" (it
    # drew either side, the same picture for both words); at 2x2 every cell sees a different border.
    cfg["unet"].update(down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 3,
                       up_block_types=["CrossAttnUpBlock2D"] * 3 + ["UpBlock2D"],
                       attention_head_dim=[c // 16 for c in UNET_CHANNELS])
    cfg["text_encoder"].update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**cfg["vae"])
    unet = UNet2DConditionModel(**cfg["unet"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    return vae, unet, text_encoder, tokenizer, DDIMScheduler(**cfg["scheduler"])


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def train_vae(vae, images: np.ndarray, steps: int, batch: int, lr: float, gen: torch.Generator,
              kl_weight: float = 1e-6, crop: int = 32) -> None:
    """Autoencoder training on random crops: L1 + MSE reconstruction plus a small KL term."""
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    start, running = time.time(), None
    for step in range(1, steps + 1):
        idx = torch.randint(len(images), (batch,), generator=gen)
        x0, y0 = (int(v) for v in torch.randint(0, 64 - crop + 1, (2,), generator=gen))
        x = to_tensor(images[idx.numpy()])[:, :, y0:y0 + crop, x0:x0 + crop]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        for group in opt.param_groups:
            group["lr"] = lr * cosine(step, steps, warmup=50)
        opt.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0 or step == steps:
            log.info("vae step %d/%d loss %.4f  %.0fs", step, steps, running, time.time() - start)
    vae.eval()


@torch.no_grad()
def cache_latents(vae, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """Posterior means of every image, unscaled."""
    out = [vae.encode(to_tensor(images[i:i + batch])).latent_dist.mean for i in range(0, len(images), batch)]
    return torch.cat(out)


def cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return step / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))) * 0.95 + 0.05


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def train_unet(unet, text_encoder, tokenizer, latents: torch.Tensor, captions: list[str], steps: int,
               batch: int, lr: float, gen: torch.Generator, checkpoint=None, checkpoint_every: int = 0,
               uncond_rate: float = 0.1, snr_gamma: float = 5.0, ema_decay: float = 0.999,
               token_loss: float = 0.05):
    """Epsilon-prediction training of UNet + text encoder; returns EMA copies of both.

    `token_loss` weighs an auxiliary loss: a linear head (thrown away afterwards) must read each caption
    token back from the text encoder's output at that token. Without it the jointly trained encoder
    collapsed words the UNet had not yet learned to use: "left" and "right" came out 0.9 apart where
    colour words were 11 apart, so the UNet could never tell them apart and drew either side at random.
    """
    ids, empty = tokenize(tokenizer, captions), tokenize(tokenizer, [""])[0]
    head = torch.nn.Linear(text_encoder.config.hidden_size, text_encoder.config.vocab_size)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0).float()
    snr = alphas_cumprod / (1 - alphas_cumprod)
    weight = torch.clamp(snr, max=snr_gamma) / snr
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params + list(head.parameters()), lr=lr, weight_decay=1e-2)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    unet.train()
    text_encoder.train()
    start, running = time.time(), None
    for step in range(1, steps + 1):
        idx = torch.randint(len(latents), (batch,), generator=gen)
        batch_ids = ids[idx].clone()
        batch_ids[torch.rand(batch, generator=gen) < uncond_rate] = empty
        z0 = latents[idx]
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        hidden = text_encoder(batch_ids)[0]
        pred = unet(zt, t, hidden).sample
        loss = ((pred - noise) ** 2).mean(dim=(1, 2, 3)).mul(weight[t]).mean()
        if token_loss:
            words = batch_ids != tokenizer.pad_token_id  # BOS and the words; padding says nothing
            loss = loss + token_loss * F.cross_entropy(head(hidden[words]), batch_ids[words])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in opt.param_groups:
            group["lr"] = lr * cosine(step, steps, warmup=200)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0 or step == steps:
            rate = (time.time() - start) / step
            log.info("unet step %d/%d loss %.4f  %.0fs  (%.2fs/step, %.0f min left)", step, steps, running,
                     time.time() - start, rate, rate * (steps - step) / 60)
        if checkpoint and checkpoint_every and step % checkpoint_every == 0 and step < steps:
            checkpoint(ema_unet, ema_text, step)
    return ema_unet, ema_text


def save_pipeline(out: Path, vae, unet, text_encoder, tokenizer, scheduler, dtype=torch.float16) -> Path:
    """Save a diffusers folder; UNet and VAE in `dtype` (loading casts back to fp32), text encoder fp32."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(vae).to(dtype), unet=copy.deepcopy(unet).to(dtype), text_encoder=text_encoder,
        tokenizer=tokenizer, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("loramix/embedded/tiny-sd"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/tiny-sd-work"),
                        help="scratch folder: fp32 copy, mid-run checkpoints, training record")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--corpus-size", type=int, default=24000)
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--unet-steps", type=int, default=3200)
    parser.add_argument("--unet-batch", type=int, default=32)
    parser.add_argument("--unet-lr", type=float, default=6e-4)
    parser.add_argument("--token-loss", type=float, default=0.05,
                        help="weight of the text encoder's read-back-the-token loss (0 turns it off)")
    parser.add_argument("--checkpoint-every", type=int, default=500)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    began = time.time()

    images, captions, _ = make_corpus(args.corpus_size, seed=args.seed)
    log.info("corpus: %d pictures in %.0fs", len(images), time.time() - began)
    args.work.mkdir(parents=True, exist_ok=True)
    vae, unet, text_encoder, tokenizer, scheduler = build_models(args.work / "tokenizer", args.seed)
    train_vae(vae, images, args.vae_steps, args.vae_batch, args.vae_lr, gen)
    raw = cache_latents(vae, images)
    scaling = 1.0 / raw.std().item()
    vae.register_to_config(scaling_factor=scaling)
    latents = raw * scaling
    log.info("latents %s, scaling_factor %.4f, %.0fs so far", tuple(latents.shape), scaling, time.time() - began)

    def checkpoint(ema_unet, ema_text, step):
        save_pipeline(args.work / "latest", vae, ema_unet, ema_text, tokenizer, scheduler, torch.float32)
        log.info("checkpoint at step %d -> %s", step, args.work / "latest")

    ema_unet, ema_text = train_unet(unet, text_encoder, tokenizer, latents, captions, args.unet_steps,
                                    args.unet_batch, args.unet_lr, gen, checkpoint, args.checkpoint_every,
                                    token_loss=args.token_loss)
    save_pipeline(args.work / "fp32", vae, ema_unet, ema_text, tokenizer, scheduler, torch.float32)
    save_pipeline(args.out, vae, ema_unet, ema_text, tokenizer, scheduler, torch.float16)
    minutes = (time.time() - began) / 60
    record = {**{k: str(v) for k, v in vars(args).items()}, "minutes": round(minutes, 1),
              "scaling_factor": scaling, "unet_channels": UNET_CHANNELS, "vae_channels": VAE_CHANNELS}
    (args.work / "training.json").write_text(json.dumps(record, indent=2))
    log.info("done in %.1f min: %s (fp16), %s (fp32)", minutes, args.out, args.work / "fp32")


if __name__ == "__main__":
    main()
