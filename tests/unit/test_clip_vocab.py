"""The SD CLIP tokenizer built offline from the vendored BPE file equals OpenAI's CLIP tokenizer."""

from __future__ import annotations

import importlib.util

import pytest

from loramix.core.errors import LoramixError
from loramix.formats import clip_vocab

PROMPTS = ["a photo of a cat", "A Red Circle, on the LEFT!", "masterpiece, best quality, 1girl, (blue hair:1.2)",
           "naïve café — ünïcödé 東京 🙂", "don't   stop\tbelieving", "", "<lora:style:0.8> sks dog, 8k uhd, dslr"]


def open_clip_folder():
    """open-clip-torch's package folder, found without importing it (its __init__ imports torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        pytest.skip("the oracle is open-clip-torch (pip install --no-deps open-clip-torch)")
    return clip_vocab.Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="module")
def tokenizer():
    return clip_vocab.sd_clip_tokenizer()


@pytest.fixture(scope="module")
def openai_clip():
    """OpenAI's own CLIP tokenizer, as copied into open_clip (loaded from its file: the package imports torchvision)."""
    pytest.importorskip("ftfy")
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer", open_clip_folder() / "tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer()


def test_the_vendored_file_is_open_clips_own():
    shipped = open_clip_folder() / clip_vocab.VOCAB_FILE
    assert clip_vocab.clip_bpe_path().read_bytes() == shipped.read_bytes()
    assert (clip_vocab.BPE_PATH.parent / "LICENSE").read_text().count("MIT") >= 2


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_equal_openai_clip(tokenizer, openai_clip, prompt):
    expected = [openai_clip.sot_token_id, *openai_clip.encode(prompt), openai_clip.eot_token_id]
    assert tokenizer(prompt)["input_ids"] == expected


def test_known_ids_and_specials(tokenizer):
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (49406, 49407, 49407)


def test_sd2_pads_with_exclamation_mark():
    ids = clip_vocab.sd_clip_tokenizer(pad_token="!")("x", padding="max_length", max_length=6)["input_ids"]
    assert ids == [49406, 343, 49407, 0, 0, 0]


def test_a_missing_vocabulary_is_one_sentence(monkeypatch, tmp_path):
    monkeypatch.setattr(clip_vocab, "BPE_PATH", tmp_path / clip_vocab.VOCAB_FILE)
    with pytest.raises(LoramixError, match="missing from this loramix install.*tokenizer/ folder"):
        clip_vocab.clip_bpe_path()
