"""Pretrain the embedded tiny Stable Diffusion from scratch on the coloured-shapes corpus, on a CPU.

    python tools/pretrain_tiny.py --out loramix/embedded/tiny-sd --seed 0

Three or four stages, each a function below: train the VAE as an autoencoder (64px -> 16x16x4 latents) on 32px
crops; encode the corpus once and set the latent scaling factor from the latents' spread; train the UNet
(epsilon prediction, min-SNR weighting, 10% empty captions for classifier-free guidance) together with
the CLIP text encoder on the cached latents, keeping an EMA of both; a small auxiliary loss keeps every
caption word readable in the text encoder's output (see `train_unet`); with `--decoder-steps`, a fourth
stage fine-tunes the VAE's decoder on whole pictures, the encoder frozen (`train_decoder`). The result is an
ordinary diffusers folder (`StableDiffusionPipeline.from_pretrained` loads it offline), UNet and VAE stored
in fp16.

Resumable: every `--save-every` steps the whole training state (weights, EMA, optimizer, the random
generator, the step) is written atomically to `--work`/state.pt, and the VAE's result with the cached latents
to `--work`/latents.pt; the decoder stage writes its own `--work`/decoder-state.pt. Started again with the
same arguments, the run goes on from there and ends with the same weights as a run never stopped (same
`--threads`: the thread count changes float summation order).
Arguments that change the result are recorded in the state; a resume with other values is refused.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from make_corpus import CORPUS_KINDS, colour_variant, detail_variant, make_corpus

from loramix.embedded.scenes import VOCABULARY
from loramix.embedded.tiny import tiny_configs, write_clip_tokenizer

log = logging.getLogger("pretrain_tiny")

UNET_CHANNELS = (64, 128, 128, 128)
VAE_CHANNELS = (16, 32, 64)
# Arguments that change the trained weights: a resume must be given the same values.
LATENT_ARGS = ("seed", "corpus_size", "corpus", "vae_from", "vae_steps", "vae_batch", "vae_lr",
               "vae_variants")  # what the VAE and the cached latents depend on
RESULT_ARGS = (*LATENT_ARGS, "unet_steps", "unet_batch", "unet_lr", "token_loss", "text_dim", "text_layers")
DECODER_ARGS = (*LATENT_ARGS, "decoder_steps", "decoder_batch", "decoder_lr", "decoder_colours")  # its result
# Options added later, left out of a fingerprint while off, so that a run from before them still resumes.
LATER_ARGS = ("vae_variants", "decoder_colours")


def fingerprint_of(args, keys: tuple[str, ...]) -> dict[str, str]:
    return {k: str(getattr(args, k)) for k in keys if k not in LATER_ARGS or getattr(args, k)}


def save_state(path: Path, state: dict) -> None:
    """Write `state` atomically (a kill mid-write leaves the previous file whole)."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path, fingerprint: dict) -> dict | None:
    if not path.exists():
        return None
    state = torch.load(path, weights_only=True)
    if state["fingerprint"] != fingerprint:
        before = state["fingerprint"]
        changed = sorted(k for k in {*fingerprint, *before} if before.get(k) != fingerprint.get(k))
        sys.exit(f"{path} was written with other values of {', '.join(changed)}: start with the same arguments "
                 f"to resume, or give another --work folder.")
    return state


def build_models(tokenizer_dir: Path, seed: int, text_dim: int = 64, text_layers: int = 2):
    """Random-init VAE, UNet, text encoder, tokenizer and DDIM sampler for the embedded architecture."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tokenizer_dir, VOCABULARY))
    cfg = tiny_configs(image_size=64, text_dim=text_dim, vocab_size=len(tokenizer),
                       unet_channels=UNET_CHANNELS, vae_channels=VAE_CHANNELS)
    # Cross-attention at 8x8, 4x4 and 2x2 (attention at 16x16 costs 3x the time on a CPU); 16-wide heads.
    # The 2x2 level is there for left/right: a UNet has no position embedding, only zero padding, and
    # with its deepest level at 4x4 the previous model never learned to tell "left" from "right" (it
    # drew either side, the same picture for both words); at 2x2 every cell sees a different border.
    cfg["unet"].update(down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 3,
                       up_block_types=["CrossAttnUpBlock2D"] * 3 + ["UpBlock2D"],
                       attention_head_dim=[c // 16 for c in UNET_CHANNELS])
    cfg["text_encoder"].update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id, num_hidden_layers=text_layers,
                               num_attention_heads=text_dim // 16)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**cfg["vae"])
    unet = UNet2DConditionModel(**cfg["unet"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    return vae, unet, text_encoder, tokenizer, DDIMScheduler(**cfg["scheduler"])


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def optimise(stage: str, vae, params: list, batch_loss, steps: int, lr: float, gen: torch.Generator,
             state: dict | None = None, save=None, save_every: int = 0) -> None:
    """The loop both VAE stages share: AdamW on `params` (no weight decay), gradients clipped to 1, a cosine
    schedule with 50 warm-up steps, the running loss logged every 50 steps. `batch_loss()` draws a batch
    from `gen` and returns its loss. `state` (from `save`) resumes a stopped run; `save(dict)` is called every
    `save_every` steps with the whole VAE, the optimizer and the generator."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    start, running, first = time.time(), None, 1
    if state is not None:
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        running, first = state["running"], state["step"] + 1
        log.info("%s: resumed after step %d", stage, state["step"])
    for step in range(first, steps + 1):
        loss = batch_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in opt.param_groups:
            group["lr"] = lr * cosine(step, steps, warmup=50)
        opt.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0 or step == steps:
            log.info("%s step %d/%d loss %.4f  %.0fs", stage, step, steps, running, time.time() - start)
        if save and save_every and step % save_every == 0 and step < steps:
            save(dict(stage=stage, step=step, vae=vae.state_dict(), opt=opt.state_dict(), gen=gen.get_state(),
                      running=running))


def train_vae(vae, images: np.ndarray, steps: int, batch: int, lr: float, gen: torch.Generator,
              kl_weight: float = 1e-6, crop: int = 32, state: dict | None = None, save=None,
              save_every: int = 0) -> None:
    """Autoencoder training on random crops: L1 + MSE reconstruction plus a small KL term."""

    def batch_loss() -> torch.Tensor:
        idx = torch.randint(len(images), (batch,), generator=gen)
        x0, y0 = (int(v) for v in torch.randint(0, 64 - crop + 1, (2,), generator=gen))
        x = to_tensor(images[idx.numpy()])[:, :, y0:y0 + crop, x0:x0 + crop]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        return F.l1_loss(recon, x) + F.mse_loss(recon, x) + kl_weight * posterior.kl().mean()

    vae.train()
    optimise("vae", vae, list(vae.parameters()), batch_loss, steps, lr, gen, state, save, save_every)
    vae.eval()


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def train_decoder(vae, images: np.ndarray, steps: int, batch: int, lr: float, gen: torch.Generator,
                  edge_weight: float = 0.5, state: dict | None = None, save=None, save_every: int = 0) -> None:
    """Fine-tune the VAE's decoder (and post_quant_conv) on whole pictures, the encoder frozen: the latent
    space the UNet was trained in stays as it is, and only how latents are drawn back improves (the
    decoder-only fine-tune of Stability's sd-vae-ft-mse, for the same reason). Loss: L1 + MSE + `edge_weight`
    x L1 of the pixel-to-pixel differences, which rewards sharp edges and thin lines the plain losses blur.
    The first VAE, trained on 32-px crops of plain shapes, drew small diamonds back as round blobs (the
    judge read 6 of the 20 held-out renders' shapes wrong after a round trip) and 2-px outlines as rims."""

    def batch_loss() -> torch.Tensor:
        idx = torch.randint(len(images), (batch,), generator=gen)
        x = to_tensor(images[idx.numpy()])
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        recon = vae.decode(z).sample
        (ry, rx), (ty, tx) = image_gradients(recon), image_gradients(x)
        return (F.l1_loss(recon, x) + F.mse_loss(recon, x)
                + edge_weight * (F.l1_loss(ry, ty) + F.l1_loss(rx, tx)))

    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in params:
        p.requires_grad_(True)
    vae.decoder.train()
    optimise("decoder", vae, params, batch_loss, steps, lr, gen, state, save, save_every)
    vae.requires_grad_(False)
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
               token_loss: float = 0.05, state: dict | None = None, save=None, save_every: int = 0):
    """Epsilon-prediction training of UNet + text encoder; returns EMA copies of both.
    `state` (from `save`) resumes a stopped run; `save(dict)` is called every `save_every` steps.

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
    start, running, first = time.time(), None, 1
    if state is not None:
        for module, key in ((unet, "unet"), (text_encoder, "text"), (head, "head"), (ema_unet, "ema_unet"),
                            (ema_text, "ema_text")):
            module.load_state_dict(state[key])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        running, first = state["running"], state["step"] + 1
        log.info("unet: resumed after step %d", state["step"])
    unet.train()
    text_encoder.train()
    for step in range(first, steps + 1):
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
        if save and save_every and step % save_every == 0 and step < steps:
            save(dict(stage="unet", step=step, unet=unet.state_dict(), text=text_encoder.state_dict(),
                      head=head.state_dict(), ema_unet=ema_unet.state_dict(), ema_text=ema_text.state_dict(),
                      opt=opt.state_dict(), gen=gen.get_state(), running=running))
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


def load_vae(path: Path):
    """The VAE of an existing pipeline folder, in fp32 (stage 1 is skipped)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32)


def variants(make, scenes, rng, share: float, start: int = 0) -> np.ndarray:
    """`make(scene, rng)` (`detail_variant`, `colour_variant`) for every 1/`share`-th scene from `start`."""
    every = max(1, round(1 / share))
    return np.stack([make(scenes[i], rng) for i in range(start, len(scenes), every)])


def vae_pictures(args, images: np.ndarray, scenes) -> np.ndarray:
    """What the VAE stage trains on: the corpus, and with `--vae-variants F` F times as many `detail_variant`
    pictures (washes, thin outlines, bands) and as many `colour_variant` ones (random colours), so that the
    encoder keeps what the first VAE lost: hue in pale and dark colours (pale green and gray 0.23 apart in
    its latents, against 2.8 for red and green) and 1-3 px lines. Their own generator (seed + 3)."""
    import random

    if not args.vae_variants:
        return images
    rng = random.Random(args.seed + 3)
    return np.concatenate([images, variants(detail_variant, scenes, rng, args.vae_variants, start=2),
                           variants(colour_variant, scenes, rng, args.vae_variants, start=2)])


def tune_decoder(args, vae, images: np.ndarray, scenes) -> None:
    """The decoder stage: the corpus plus a third as many `detail_variant` pictures of its scenes, and with
    `--decoder-colours F` F times as many `colour_variant` ones (random colours; their own generator, so the
    rest of the data is the same as without them). Its own
    state file and fingerprint (what it depends on: the VAE's arguments and its own), its own generator
    (seed + 1), so that it can be added to, or resumed after, a finished UNet stage."""
    import random

    fingerprint = fingerprint_of(args, DECODER_ARGS)
    state_path = args.work / "decoder-state.pt"
    state = load_state(state_path, fingerprint)
    rng = random.Random(args.seed + 1)
    extra = variants(detail_variant, scenes, rng, 1 / 3)
    if args.decoder_colours:
        extra = np.concatenate([extra, variants(colour_variant, scenes, random.Random(args.seed + 2),
                                                args.decoder_colours, start=1)])
    gen = torch.Generator().manual_seed(args.seed + 1)
    train_decoder(vae, np.concatenate([images, extra]), args.decoder_steps, args.decoder_batch, args.decoder_lr,
                  gen, state=state, save=lambda body: save_state(state_path, {**body, "fingerprint": fingerprint}),
                  save_every=args.save_every)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("loramix/embedded/tiny-sd"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/tiny-sd-work"),
                        help="scratch folder: training state (resumed from), fp32 copy, mid-run checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--corpus-size", type=int, default=24000)
    parser.add_argument("--corpus", choices=CORPUS_KINDS, default="random",
                        help="random: independent scenes, 70%% neutral backgrounds (v1); covering: every "
                             "(background, colour, shape, position) combination in turn")
    parser.add_argument("--vae-from", type=Path, help="take the VAE of this pipeline folder, skip training one")
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--vae-variants", type=float, default=0.0,
                        help="add this share of the corpus as detail pictures and as many in random colours to "
                             "the VAE's data (0.33: a third each)")
    parser.add_argument("--decoder-steps", type=int, default=0,
                        help="then fine-tune the VAE's decoder this many steps, the encoder frozen (0: no)")
    parser.add_argument("--decoder-batch", type=int, default=32)
    parser.add_argument("--decoder-lr", type=float, default=5e-4)
    parser.add_argument("--decoder-colours", type=float, default=0.0,
                        help="add this share of the corpus again as pictures in random colours (0.33: a third)")
    parser.add_argument("--unet-steps", type=int, default=3200)
    parser.add_argument("--unet-batch", type=int, default=32)
    parser.add_argument("--unet-lr", type=float, default=6e-4)
    parser.add_argument("--token-loss", type=float, default=0.05,
                        help="weight of the text encoder's read-back-the-token loss (0 turns it off)")
    parser.add_argument("--text-dim", type=int, default=64, help="text encoder width (16-wide heads)")
    parser.add_argument("--text-layers", type=int, default=2, help="text encoder layers")
    parser.add_argument("--checkpoint-every", type=int, default=500,
                        help="write the EMA pipeline (fp32) to WORK/step-N every N UNet steps")
    parser.add_argument("--save-every", type=int, default=100, help="write the resumable state every N steps")
    parser.add_argument("--stop-after", type=int, default=0,
                        help="exit after saving the state at this UNet step (tests resuming)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    began = time.time()
    fingerprint = fingerprint_of(args, RESULT_ARGS)
    latent_print = fingerprint_of(args, LATENT_ARGS)
    args.work.mkdir(parents=True, exist_ok=True)
    state_path, latents_path = args.work / "state.pt", args.work / "latents.pt"
    state = load_state(state_path, fingerprint)

    def save(body: dict) -> None:
        save_state(state_path, {**body, "fingerprint": fingerprint})
        if args.stop_after and body["stage"] == "unet" and body["step"] >= args.stop_after:
            log.info("stopping after step %d as asked (--stop-after)", body["step"])
            sys.exit(0)

    images, captions, scenes = make_corpus(args.corpus_size, seed=args.seed, kind=args.corpus)
    log.info("corpus (%s): %d pictures in %.0fs", args.corpus, len(images), time.time() - began)
    vae, unet, text_encoder, tokenizer, scheduler = build_models(args.work / "tokenizer", args.seed,
                                                                 args.text_dim, args.text_layers)
    cached = torch.load(latents_path, weights_only=True) if latents_path.exists() else None
    if cached is not None and cached["fingerprint"] == latent_print:
        vae.load_state_dict(cached["vae"])
        vae.eval()
        scaling, latents, gen_after_vae = cached["scaling"], cached["latents"], cached["gen"]
        log.info("vae and latents read from %s", latents_path)
    else:
        if args.vae_from:
            vae = load_vae(args.vae_from)
            vae.eval()
        else:
            train_vae(vae, vae_pictures(args, images, scenes), args.vae_steps, args.vae_batch, args.vae_lr, gen,
                      state=state if state and state["stage"] == "vae" else None, save=save,
                      save_every=args.save_every)
        raw = cache_latents(vae, images)
        scaling = 1.0 / raw.std().item()
        latents = raw * scaling
        gen_after_vae = gen.get_state()
        save_state(latents_path, dict(vae=vae.state_dict(), scaling=scaling, latents=latents, gen=gen_after_vae,
                                      fingerprint=latent_print))
    gen.set_state(gen_after_vae)
    vae.register_to_config(scaling_factor=scaling)
    log.info("latents %s, scaling_factor %.4f, %.0fs so far", tuple(latents.shape), scaling, time.time() - began)

    def checkpoint(ema_unet, ema_text, step):
        save_pipeline(args.work / f"step-{step}", vae, ema_unet, ema_text, tokenizer, scheduler, torch.float32)
        log.info("checkpoint at step %d -> %s", step, args.work / f"step-{step}")

    ema_unet, ema_text = train_unet(unet, text_encoder, tokenizer, latents, captions, args.unet_steps,
                                    args.unet_batch, args.unet_lr, gen, checkpoint, args.checkpoint_every,
                                    token_loss=args.token_loss,
                                    state=state if state and state["stage"] == "unet" else None, save=save,
                                    save_every=args.save_every)
    if args.decoder_steps:
        tune_decoder(args, vae, images, scenes)
    save_pipeline(args.work / "fp32", vae, ema_unet, ema_text, tokenizer, scheduler, torch.float32)
    save_pipeline(args.out, vae, ema_unet, ema_text, tokenizer, scheduler, torch.float16)
    minutes = (time.time() - began) / 60
    record = {**{k: str(v) for k, v in vars(args).items()}, "minutes_this_sitting": round(minutes, 1),
              "scaling_factor": scaling, "unet_channels": UNET_CHANNELS, "vae_channels": VAE_CHANNELS}
    (args.work / "training.json").write_text(json.dumps(record, indent=2))
    log.info("done in %.1f min: %s (fp16), %s (fp32)", minutes, args.out, args.work / "fp32")


if __name__ == "__main__":
    main()
