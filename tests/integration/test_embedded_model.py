"""The bundled tiny base model loads offline, draws fast on a CPU, and puts colours where captions say."""

from __future__ import annotations

import pytest
import torch

from loramix.embedded import EMBEDDED_MODEL, STYLE_SETS
from loramix.embedded.quality import (
    MIX_DEFAULT,
    MIX_DEFAULT_CFG,
    MIX_DEFAULT_SEED,
    MIX_DEFAULT_STEPS,
    generate,
    held_out_scenes,
    judge,
    judge_slots,
    measure,
    measure_slots,
    slot_rates,
)
from loramix.embedded.scenes import VOCABULARY, render

# Colour in the named place on 40 held-out prompts: the bundled model (v3) scores 100%, v1 scored 100% too.
QUALITY_BAR = 0.95
# Every slot right on 80 (held-out prompt, seed) pairs: v3 scores 98% (one small diamond drawn round at two
# seeds), v1 78% (docs/benchmarks.md); issue 25's goal is 95%.
EVERY_SLOT_BAR = 0.95


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED_MODEL, local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_weights_are_small_and_load_as_fp32(pipe):
    size = sum(p.stat().st_size for p in EMBEDDED_MODEL.rglob("*.safetensors"))
    assert size <= 25 * 2**20, f"embedded weights are {size / 2**20:.1f} MB"
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.float32


def test_every_caption_word_is_one_token(pipe):
    for word in VOCABULARY:
        assert pipe.tokenizer.tokenize(word) == [word + "</w>"], word


def test_generates_a_64px_image(pipe):
    """Generation works and is deterministic; how long it takes is measured in bench/, not asserted here."""
    def draw():
        return pipe("a large red circle on the left, white background", num_inference_steps=4, guidance_scale=6.0,
                    generator=torch.Generator().manual_seed(0), height=64, width=64).images[0]

    image = draw()
    assert image.size == (64, 64)
    assert image.tobytes() == draw().tobytes()
    assert len(set(image.getdata())) > 10  # a picture, not a flat colour


def test_metric_accepts_ground_truth_and_rejects_wrong_colours():
    scenes = held_out_scenes(40)
    assert all(judge(render(s), s).ok for s in scenes)
    shifted = scenes[1:] + scenes[:1]  # pictures judged against another prompt's colour
    assert sum(judge(render(s), t).ok for s, t in zip(scenes, shifted) if s.shapes[0].colour != t.shapes[0].colour) == 0


@pytest.mark.slow
def test_draws_named_colour_in_named_place_for_held_out_captions(pipe):
    rate, verdicts = measure(pipe, count=40, steps=25, guidance=6.0, seed=0)
    misses = [f"{v.caption} -> {v.found}" for v in verdicts if not v.ok]
    print(f"\nembedded model: named colour in the named place for {rate:.0%} of 40 held-out prompts")
    assert rate >= QUALITY_BAR, f"{rate:.0%} < {QUALITY_BAR:.0%}; misses: {misses}"


@pytest.mark.slow
def test_draws_every_slot_of_held_out_captions(pipe):
    verdicts = measure_slots(pipe, seeds=(0, 1, 2, 3))
    rates = slot_rates(verdicts)
    print("\nembedded model, share right per slot:", {k: f"{v:.0%}" for k, v in rates.items()})
    misses = [f"{v.caption} -> {v.found}" for v in verdicts if not v.ok]
    assert rates["every slot"] >= EVERY_SLOT_BAR, misses


@pytest.mark.slow
def test_draws_the_mix_tabs_default_prompt_at_its_default_seed(pipe):
    image = generate(pipe, [MIX_DEFAULT], MIX_DEFAULT_SEED, MIX_DEFAULT_STEPS, MIX_DEFAULT_CFG)[0]
    verdict = judge_slots(image, MIX_DEFAULT)
    assert verdict.ok, verdict.found


def test_style_sets_have_captioned_pictures_in_the_corpus_grammar():
    for name in ("stripes", "pastel", "ink"):
        pictures = sorted((STYLE_SETS / name).glob("*.png"))
        assert len(pictures) == 12, name
        for png in pictures:
            words = png.with_suffix(".txt").read_text().replace(",", " ").split()
            assert words and set(words) <= set(VOCABULARY), png
