"""Shared fixtures: a tiny random SD model built offline, and real image folders on disk."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from loramix.core.allocator import tune_allocator
from loramix.core.config import LoramixConfig, load_config

# The allocator as `loramix` and the app set it, from the start: otherwise the first test that calls the CLI's
# main() would change it halfway through the session, and what ran after it would depend on the order.
tune_allocator()

WORDS = ["a", "red", "blue", "green", "circle", "square", "stripes", "on", "the", "left", "right", "picture"]


@pytest.fixture(autouse=True, scope="session")
def _quiet_libraries():
    from loramix.core.quiet import quiet_libraries

    quiet_libraries()
    logging.getLogger("trainers").setLevel(logging.INFO)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from loramix.embedded.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-sd"), seed=0, words=WORDS)


def draw_image(i: int, size=(64, 64), mode="RGB") -> Image.Image:
    """A deterministic striped picture with a shape: something a LoRA can over-fit."""
    rng = random.Random(i)
    im = Image.new("RGB", size, (250, 250, 245))
    d = ImageDraw.Draw(im)
    for k in range(-size[1], size[0], 10):
        d.line([(k, 0), (k + size[1], size[1])], fill=(200, 40, 40), width=3)
    x, y = rng.randint(8, size[0] - 24), rng.randint(8, size[1] - 24)
    d.ellipse([x, y, x + 16, y + 16], fill=(30, 30, 200))
    return im.convert(mode)


def make_folder(root: Path, n: int = 8, sizes=None, captions=True, prefix="img") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        size = sizes[i % len(sizes)] if sizes else (64, 64)
        draw_image(i, size).save(root / f"{prefix}{i}.png")
        if captions:
            (root / f"{prefix}{i}.txt").write_text(f"red stripes, blue circle, picture {i}\n")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "data")


def tiny_config(model: Path, data: Path, out: Path, *overrides: str) -> LoramixConfig:
    """A config that trains in seconds on a CPU."""
    return load_config(overrides=[
        f"model.base_model={model}", f"dataset.data_dir={data}", f"output.output_dir={out}",
        "dataset.resolution=64", "network.rank=4", "network.alpha=4", "optim.learning_rate=1e-3",
        "train.max_steps=8", "train.batch_size=2", "output.save_precision=fp32", *overrides])


def random_lora(model_dir, path, seed, rank=4, alpha=2.0, text=False, conv=False):
    """A LoRA with random A and B (PEFT init_lora_weights=False), saved in kohya layout."""
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel

    from loramix.formats.lora_io import LoraAdapter, from_peft, save_lora

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    targets = ["to_q", "to_k", "to_v", "to_out.0"] + (["conv1", "conv2"] if conv else [])
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False))
    layers = from_peft({k: v * 0.3 for k, v in get_peft_model_state_dict(unet).items()}, "lora_unet", alpha)
    if text:
        te = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder")
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False,
                                           target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]), te)
        layers.update(from_peft(get_peft_model_state_dict(te), "lora_te", alpha))
    return save_lora(path, LoraAdapter(layers, {"ss_base_model_version": "loramix_tiny"}), "fp32")


def unet_out(unet, seed=0, timesteps=(50, 700)):
    """The UNet's output on fixed random latents and text embeddings, one sample per timestep."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n, batch = unet.config.sample_size, len(timesteps)
    x = torch.randn(batch, 4, n, n, generator=g)
    ctx = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():  # in the UNet's dtype (a bf16 mixer's too)
        return unet(x.to(unet.dtype), torch.tensor(list(timesteps)), ctx.to(unet.dtype)).sample


def first_sample_inputs(trainer, micro: int):
    """(sample, latents, cond, noise, t) that the trainer draws for the first sample of micro-batch `micro`
    (train.seed 42, cached latents and text): recomputed here for the expected-loss tests."""
    import torch

    from trainers.training_step import seed_for

    sample = trainer.micro_batch(micro)[0][0]
    latents = trainer.latent_cache[(sample.index, False)][None]
    cond = trainer.text_cache[trainer.items[sample.index].caption]["encoder_hidden_states"][None]
    g = torch.Generator().manual_seed(seed_for(42, micro, 0))
    noise = torch.randn(latents.shape[1:], generator=g)[None]
    t = torch.randint(0, 1000, (1,), generator=g)
    return sample, latents, cond, noise, t
