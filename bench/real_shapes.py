"""Random-weight SD 1.5 / SDXL models and full-layer kohya LoRAs, built offline from loramix/configs.

Benchmarks use these where only the shapes matter: nothing is downloaded. The UNet and the VAE are
built on the `meta` device and filled in place (no float32 detour for a bf16 model); the text
encoders are built directly in the requested dtype. `build_components("sd15", torch.float32)` takes
about a minute and 4 GB; SDXL in bf16 about 7 GB.
"""

from __future__ import annotations

import json
import math
import resource
import threading
import time
from functools import partial
from pathlib import Path

import torch

from loramix.formats.families import Components, detect_family
from loramix.formats.lora_io import LoraAdapter, LoraLayer, module_table, save_lora

CONFIGS = Path(__file__).resolve().parents[1] / "loramix" / "configs"
FAMILY_DIRS = {"sd15": "sd1", "sdxl": "sdxl"}
ATTENTION = (".to_q", ".to_k", ".to_v", ".to_out.0")
WORDS = ["a", "red", "blue", "green", "circle", "square", "on", "the", "left", "right", "picture"]


def config(arch: str, name: str) -> dict:
    cfg = json.loads((CONFIGS / FAMILY_DIRS[arch] / f"{name}.json").read_text())
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


@torch.no_grad()
def fill_random(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights ~ N(0, 1/(4 fan_in)), biases 0, norm scales 1: finite activations at any depth."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / math.sqrt(fan_in)))
        elif name.endswith("bias") or "norm" not in name:
            p.zero_()
        else:
            p.fill_(1.0)
    return module


def _on_meta(cls, cfg: dict, dtype, seed: int):
    with torch.device("meta"):
        model = cls(**cfg)
    return fill_random(model.to(dtype).to_empty(device="cpu"), seed)


def build_components(arch: str, dtype=torch.float32, work: Path | None = None, seed: int = 0,
                     words: list[str] | None = None) -> Components:
    """The base model of `arch` ("sd15" or "sdxl") with random weights, eval mode, no gradients."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from loramix.embedded.tiny import write_clip_tokenizer

    work = Path(work or "/tmp/loramix-real-shapes")
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(work / "tokenizer", words or WORDS))
    unet = _on_meta(UNet2DConditionModel, config(arch, "unet"), dtype, seed)
    vae = _on_meta(AutoencoderKL, config(arch, "vae"), dtype, seed + 1)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(**config(arch, "text_encoder")))
        text_encoder_2 = (CLIPTextModelWithProjection(CLIPTextConfig(**config(arch, "text_encoder_2")))
                          if arch == "sdxl" else None)
    finally:
        torch.set_default_dtype(default)
    parts = dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                 noise_scheduler=DDPMScheduler.from_config(config(arch, "scheduler")))
    if text_encoder_2 is not None:
        parts.update(text_encoder_2=text_encoder_2, tokenizer_2=tokenizer)
    components = Components(family=detect_family(dict(unet.config)), source=f"random {arch}", **parts)
    for module in components.models():
        module.eval().requires_grad_(False)
    return components


def kohya_targets(components: Components, attention_only: bool = False) -> dict[str, torch.nn.Module]:
    """kohya name -> module for kohya's default LoRA set: every Linear (and 1x1 Conv2d) in the UNet's
    transformer blocks, proj_in / proj_out included, and the text encoders' attention and MLP layers.
    SD 1.5: 264 layers; SDXL: 986. `attention_only`: the UNet's to_q / to_k / to_v / to_out.0 (SD 1.5: 128)."""
    family, targets = components.family, {}
    models = {family.unet_prefix: components.unet, **family.text_encoders(components)}
    for prefix, model in models.items():
        modules = dict(model.named_modules())
        for name, path in module_table(model, prefix, partial(family.kohya_path, prefix, model=model)).items():
            m = modules[path]
            unet_layer = prefix == family.unet_prefix and ".attentions." in f".{path}" and (
                isinstance(m, torch.nn.Linear) or isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1))
            text_layer = prefix != family.unet_prefix and isinstance(m, torch.nn.Linear) and (
                ".self_attn." in path or ".mlp." in path)
            if attention_only:
                unet_layer, text_layer = unet_layer and path.endswith(ATTENTION), False
            if unet_layer or text_layer:
                targets[name] = m
    return targets


def random_kohya_lora(targets: dict[str, torch.nn.Module], path: Path, seed: int, rank: int = 16) -> Path:
    """A kohya LoRA file over `targets`, random down and up, alpha = rank / 2, fp16 on disk."""
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for name, m in targets.items():
        out_f, in_f = m.weight.shape[:2]
        down = torch.randn(rank, in_f, generator=g) / math.sqrt(in_f)
        up = torch.randn(out_f, rank, generator=g) * 0.02
        if m.weight.dim() == 4:
            down, up = down[:, :, None, None], up[:, :, None, None]
        layers[name] = LoraLayer(down, up, rank / 2)
    return save_lora(path, LoraAdapter(layers, {"ss_network_module": "networks.lora"}), "fp16")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


class PeakRSS:
    """The largest resident set size seen while the block runs (sampled every 5 ms), in bytes."""

    def __enter__(self):
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.end = rss_bytes()
        self.peak = max(self.peak, self.end)
        return False

    def added(self, base: int) -> int:
        return self.peak - base


def clock():
    """(wall, CPU) seconds since an arbitrary start."""
    return time.perf_counter(), time.process_time()


def save_model(arch: str, folder: Path, words: list[str] | None = None, dtype=torch.float32) -> Path:
    """Build `arch` with random weights and write it as a diffusers folder (SD 1.5 fp32: ~4 GB, ~2 min)."""
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    components = build_components(arch, dtype, folder.parent / f"{folder.name}-tok", words=words)
    components.family.pipeline(components).save_pretrained(folder, safe_serialization=True)
    return folder
