"""One training step on random-weight models with the real SD 1.5 and SDXL configs (loramix/configs),
then the exported key set against kohya's naming derived here from the architecture, diffusers'
load_lora_weights, and the mixer. Several GB of memory and a minute or more each: marked slow.

Expected names, written out independently of loramix's own mapping:
- SD 1.5 (kohya uses diffusers module names): transformer blocks in down_blocks.{0,1,2}.attentions.{0,1},
  mid_block.attentions.0 and up_blocks.{1,2,3}.attentions.{0,1,2}, one transformer block each.
- SDXL (kohya uses the original UNet): input_blocks 4, 5 (2 transformer blocks each) and 7, 8 (10 each),
  middle_block.1 (10), output_blocks 0, 1, 2 (10 each) and 3, 4, 5 (2 each).
Each transformer block has attn1 and attn2 with to_q, to_k, to_v and to_out.0.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
import torch

from loramix.embedded.tiny import write_clip_tokenizer
from loramix.formats.families import Components, detect_family
from loramix.formats.lora_io import read_lora
from loramix.mix.mixer import Mixer
from tests.conftest import WORDS, make_folder, tiny_config
from trainers import lora_trainer

pytestmark = pytest.mark.slow
CONFIGS = Path(__file__).resolve().parents[2] / "loramix" / "configs"
PROJ = ["attn1_to_q", "attn1_to_k", "attn1_to_v", "attn1_to_out_0",
        "attn2_to_q", "attn2_to_k", "attn2_to_v", "attn2_to_out_0"]


def expected_sd15() -> set[str]:
    blocks = [f"down_blocks_{b}_attentions_{a}" for b in range(3) for a in range(2)] + ["mid_block_attentions_0"]
    blocks += [f"up_blocks_{b}_attentions_{a}" for b in (1, 2, 3) for a in range(3)]
    return {f"lora_unet_{blk}_transformer_blocks_0_{p}" for blk in blocks for p in PROJ}


def expected_sdxl() -> set[str]:
    depth = {"input_blocks_4_1": 2, "input_blocks_5_1": 2, "input_blocks_7_1": 10, "input_blocks_8_1": 10,
             "middle_block_1": 10, **{f"output_blocks_{i}_1": 10 for i in (0, 1, 2)},
             **{f"output_blocks_{i}_1": 2 for i in (3, 4, 5)}}
    return {f"lora_unet_{blk}_transformer_blocks_{t}_{p}" for blk, n in depth.items() for t in range(n) for p in PROJ}


def config(family: str, name: str) -> dict:
    cfg = json.loads((CONFIGS / family / f"{name}.json").read_text())
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def build(family: str, tmp_path: Path) -> Components:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path / "tok", WORDS))
    unet = UNet2DConditionModel(**config(family, "unet"))
    parts = dict(unet=unet, vae=AutoencoderKL(**config(family, "vae")),
                 text_encoder=CLIPTextModel(CLIPTextConfig(**config(family, "text_encoder"))), tokenizer=tokenizer,
                 noise_scheduler=DDPMScheduler.from_config(config(family, "scheduler")))
    if family == "sdxl":
        parts.update(text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**config(family, "text_encoder_2"))),
                     tokenizer_2=tokenizer)
    return Components(family=detect_family(dict(unet.config)), source=f"random {family}", **parts)


@pytest.mark.parametrize("family, expected", [("sd1", expected_sd15), ("sdxl", expected_sdxl)])
def test_one_step_on_real_config_exports_kohya_names(family, expected, tmp_path, monkeypatch):
    models = {"base": build(family, tmp_path)}  # several GB: dropped at the end
    components = models["base"]
    monkeypatch.setattr(lora_trainer, "load_base_model", lambda *a, **k: models["base"])
    data = make_folder(tmp_path / "data", n=1)
    result = lora_trainer.train(tiny_config("unused", data, tmp_path / "out", "train.max_steps=1",
                                            "train.batch_size=1", "dataset.resolution=64"))
    adapter = read_lora(result.lora_path)
    assert set(adapter.layers) == expected()
    assert adapter.metadata["ss_base_model_version"] == components.family.ss_base_model_version

    mixer = Mixer(components)
    mixer.load(result.lora_path)  # binds every layer by name and shape
    pipe = components.family.pipeline(components)
    pipe.load_lora_weights(str(result.lora_path))  # diffusers accepts kohya's names for this family
    assert any("lora" in n for n, _ in pipe.unet.named_parameters())
    models.clear()
    del pipe, mixer, components
    gc.collect()
