"""Build tiny Stable-Diffusion-shaped models offline: random weights, a CLIP tokenizer from a local vocab.

Used by the tests and benchmarks (random weights) and as the architecture of the embedded demo model.
The result is an ordinary diffusers folder that `StableDiffusionPipeline.from_pretrained` loads.
"""

from __future__ import annotations

import json
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of GPT-2 / CLIP byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _bpe(word: str, merges: list[tuple[str, str]]) -> list[str]:
    """Byte-pair encode one lower-case word the way CLIP does (lowest-ranked pair first)."""
    ranks = {pair: i for i, pair in enumerate(merges)}
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b), len(ranks)), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2:]
    return pieces


def write_clip_tokenizer(out_dir: str | Path, words: list[str] = (), max_length: int = 77) -> Path:
    """Write a CLIPTokenizer (vocab.json, merges.txt) whose BPE merges make each of `words` one token.

    Other text still tokenizes, letter by letter, so no prompt is ever rejected.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in sorted({w.lower() for w in words if w.strip()}):
        # Add merges at the lowest priority until BPE, with every merge so far, makes the word one
        # token; words done earlier are single tokens already, so later merges cannot split them.
        pieces = _bpe(word, merges)
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
            pieces = _bpe(word, merges)
    for special in (BOS, EOS):
        vocab.setdefault(special, len(vocab))
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                        encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}), encoding="utf-8")
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "bos_token": BOS,
        "eos_token": EOS, "unk_token": EOS, "pad_token": EOS, "do_lower_case": True}), encoding="utf-8")
    return out_dir


def tiny_configs(image_size: int = 64, text_dim: int = 32, vocab_size: int = 1000,
                 max_length: int = 77, unet_channels: tuple[int, ...] = (32, 64),
                 vae_channels: tuple[int, ...] = (32, 64, 64)) -> dict[str, dict]:
    """Configs for a tiny SD 1.x-shaped model: VAE factor 2**(len(vae_channels)-1)."""
    n_vae = len(vae_channels)
    latent = image_size // 2 ** (n_vae - 1)
    n_unet = len(unet_channels)
    return {
        "unet": dict(
            sample_size=latent, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=list(unet_channels),
            down_block_types=["CrossAttnDownBlock2D"] * (n_unet - 1) + ["DownBlock2D"],
            up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n_unet - 1),
            cross_attention_dim=text_dim, attention_head_dim=8, norm_num_groups=8,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=list(vae_channels),
            down_block_types=["DownEncoderBlock2D"] * n_vae, up_block_types=["UpDecoderBlock2D"] * n_vae,
            layers_per_block=1, norm_num_groups=8, sample_size=image_size,
        ),
        "text_encoder": dict(
            hidden_size=text_dim, intermediate_size=text_dim * 2, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=max_length, vocab_size=vocab_size, projection_dim=text_dim,
            bos_token_id=0, eos_token_id=2, pad_token_id=1,
        ),
        "scheduler": dict(
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
        ),
    }


def build_tiny_model(out_dir: str | Path, seed: int = 0, words: list[str] = (), image_size: int = 64,
                     prediction_type: str = "epsilon", **arch) -> Path:
    """Write a random-weight tiny SD pipeline folder at `out_dir` and return its path."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out_dir = Path(out_dir)
    tok_dir = write_clip_tokenizer(out_dir / "tokenizer", words)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    cfg = tiny_configs(image_size=image_size, vocab_size=len(tokenizer), **arch)
    cfg["text_encoder"].update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id)
    cfg["scheduler"]["prediction_type"] = prediction_type
    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**cfg["unet"]),
        vae=AutoencoderKL(**cfg["vae"]),
        text_encoder=CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])),
        tokenizer=tokenizer,
        scheduler=DDIMScheduler(**cfg["scheduler"]),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def build_tiny_sdxl(out_dir: str | Path, seed: int = 0, words: list[str] = (), image_size: int = 64) -> Path:
    """A random-weight tiny SDXL-shaped pipeline: two text encoders, text_time conditioning,
    a first down block without attention and 2 transformer layers in the second (as SDXL has)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    out_dir = Path(out_dir)
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(out_dir / "tokenizer", words))
    write_clip_tokenizer(out_dir / "tokenizer_2", words)
    base = tiny_configs(image_size=image_size, vocab_size=len(tokenizer))
    te = dict(base["text_encoder"], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
              pad_token_id=tokenizer.pad_token_id)
    te2 = dict(te, hidden_size=48, intermediate_size=96, projection_dim=24)
    unet = dict(base["unet"], down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], transformer_layers_per_block=[1, 2],
                cross_attention_dim=te["hidden_size"] + te2["hidden_size"], addition_embed_type="text_time",
                addition_time_embed_dim=8, projection_class_embeddings_input_dim=te2["projection_dim"] + 6 * 8,
                use_linear_projection=True)
    torch.manual_seed(seed)
    pipe = StableDiffusionXLPipeline(
        unet=UNet2DConditionModel(**unet), vae=AutoencoderKL(**base["vae"]),
        text_encoder=CLIPTextModel(CLIPTextConfig(**te)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**te2)),
        tokenizer=tokenizer, tokenizer_2=CLIPTokenizer.from_pretrained(out_dir / "tokenizer_2"),
        scheduler=EulerDiscreteScheduler(**{k: v for k, v in base["scheduler"].items()
                                            if k not in ("clip_sample", "set_alpha_to_one")}))
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


CAPTION_WORDS = ["a", "picture", "of", "red", "stripes", "blue", "circle", "cat", "dog", "painting", "style"]


def build_tiny_captioner(out_dir: str | Path, family: str = "blip", seed: int = 0, real_size: bool = False) -> Path:
    """A captioner folder `AutoProcessor` / `AutoModelForImageTextToText` load offline: random weights, a BERT
    word-piece tokenizer (Florence-2: a byte-level BPE one) written here. `family`: blip, git or florence2. With `real_size`, BLIP gets the layer sizes and
    vocabulary size of Salesforce/blip-image-captioning-large (for benchmarks; the extra words are placeholders)."""
    import torch
    from transformers import BertTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *CAPTION_WORDS]
    if real_size:
        vocab += [f"word{i}" for i in range(30524 - len(vocab))]  # BLIP's BERT vocabulary size
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(out / "vocab.txt"))
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    torch.manual_seed(seed)
    if family == "blip":
        from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor
        from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

        text = dict(vocab_size=len(vocab), bos_token_id=2, pad_token_id=0, sep_token_id=3, eos_token_id=3)
        if real_size:  # blip-image-captioning-large: ViT-L/16 at 384 px, a BERT-base decoder
            vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                          image_size=384, patch_size=16)
            side = 384
        else:
            text.update(small, max_position_embeddings=64)
            vision = dict(small, image_size=32, patch_size=8)
            side = 32
        model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision,
                                                        projection_dim=vision["hidden_size"]))
        processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": side, "width": side}),
                                  tokenizer=tokenizer)
    elif family == "git":
        from transformers import GitConfig, GitForCausalLM, GitProcessor
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        config = GitConfig(vision_config=dict(small, image_size=32, patch_size=8), vocab_size=len(vocab),
                           max_position_embeddings=64, bos_token_id=2, eos_token_id=3, pad_token_id=0, **small)
        model = GitForCausalLM(config)
        processor = GitProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32},
                                                                       crop_size={"height": 32, "width": 32}),
                                 tokenizer=tokenizer)
    elif family == "florence2":
        model, processor = _tiny_florence2()
    else:
        raise ValueError(f"no tiny captioner of family {family!r}")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _tiny_florence2():
    """A Florence-2 (DaViT vision tower, BART encoder-decoder) of a few thousand weights and its processor."""
    from transformers import (
        BartTokenizer,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    symbols = ["<s>", "<pad>", "</s>", "<unk>", *sorted(set(_bytes_to_unicode().values()))]
    merges = []
    for word in ("Ġ" + w for w in CAPTION_WORDS):  # byte-level BPE merges that spell the caption words
        piece = word[0]
        for ch in word[1:]:
            merges.append((piece, ch))
            piece += ch
            if piece not in symbols:
                symbols.append(piece)
    symbols += ["<mask>", "<image>"]
    tokenizer = BartTokenizer(vocab={s: i for i, s in enumerate(symbols)}, merges=merges,
                              extra_special_tokens={"image_token": "<image>"})
    # 64 px through strides 4, 2, 2, 2: 2x2 visual tokens, plus the pooled one
    image_processor = CLIPImageProcessorPil(size={"height": 64, "width": 64}, do_center_crop=False, image_seq_length=5)
    vision = dict(depths=[1, 1, 1, 1], embed_dim=[8, 16, 16, 32], num_heads=[1, 2, 2, 4], num_groups=[1, 2, 2, 4],
                  projection_dim=32, window_size=2)
    text = dict(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
                bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=0)
    model = Florence2ForConditionalGeneration(Florence2Config(vision_config=vision, text_config=text,
                                                              image_token_id=tokenizer.image_token_id))
    return model, Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)


def build_tiny_clipseg(out_dir: str | Path, seed: int = 0) -> Path:
    """A CLIPSeg folder (`CLIPSegForImageSegmentation` + `CLIPSegProcessor`) with random weights and a local CLIP
    tokenizer, loadable offline."""
    import torch
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, CLIPTokenizer
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    out = Path(out_dir)
    write_clip_tokenizer(out, ["person", "background", "cat"], max_length=16)
    tokenizer = CLIPTokenizer.from_pretrained(out)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2)
    config = CLIPSegConfig(text_config=dict(small, vocab_size=len(tokenizer), max_position_embeddings=16,
                                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                            pad_token_id=tokenizer.pad_token_id),
                           vision_config=dict(small, image_size=32, patch_size=8), projection_dim=32,
                           extract_layers=[0, 1, 2], reduce_dim=16, decoder_num_attention_heads=2,
                           decoder_intermediate_size=32)
    torch.manual_seed(seed)
    CLIPSegForImageSegmentation(config).save_pretrained(out)
    CLIPSegProcessor(image_processor=ViTImageProcessorPil(size={"height": 32, "width": 32}),
                     tokenizer=tokenizer).save_pretrained(out)
    return out
