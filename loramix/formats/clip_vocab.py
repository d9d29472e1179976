"""The CLIP tokenizer of SD 1.x / 2.x / SDXL, built offline from the CLIP BPE vocabulary vendored here.

A single-file checkpoint from a model site holds no tokenizer, and the Hugging Face hub may be out of
reach. Every SD 1.x, SD 2.x and SDXL text encoder uses OpenAI's CLIP byte-level BPE (49,408 tokens),
whose merges are OpenAI's `bpe_simple_vocab_16e6.txt.gz` (also shipped by open-clip-torch). The
vocabulary is built from them exactly as OpenAI's `SimpleTokenizer` does (256 byte tokens, the same
with `</w>`, one token per merge, then `<|startoftext|>` and `<|endoftext|>`) and handed to
transformers' `CLIPTokenizer`.

The SD 1.x and SDXL (first) tokenizers pad with `<|endoftext|>`; the SD 2.x and SDXL second (OpenCLIP)
tokenizers pad with `!` (id 0): pass `pad_token`.

Where the file comes from: it is vendored, unchanged, in `loramix/embedded/clip_bpe/` (1.36 MB) with the
MIT licence notices of OpenAI CLIP, where the file comes from, and of open-clip-torch, which ships it.
Chosen over an optional extra because open-clip-torch cannot be an ordinary dependency here: its own
requirements pull torchvision, which does not import beside the local torch 2.13 CPU build (and pip
may replace torch to satisfy it), so it would need `pip install --no-deps open-clip-torch`, which an
extra cannot express. With the file in the package, a checkpoint from a model site loads with nothing
beside it on every install. The tests compare the vendored file with open-clip-torch's byte for byte,
and the tokenizer with OpenAI's own `SimpleTokenizer`, where open-clip-torch is installed.
"""

from __future__ import annotations

import gzip
from pathlib import Path

from loramix.core.errors import LoramixError

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
BPE_PATH = Path(__file__).parents[1] / "embedded" / "clip_bpe" / VOCAB_FILE
CLIP_VOCAB_SIZE = 49408
N_MERGES = 49152 - 256 - 2  # as OpenAI's SimpleTokenizer: merges[1 : 49152 - 256 - 2 + 1]


def clip_bpe_path() -> Path:
    """The vendored BPE merges file, or a sentence saying what to do when the install lacks it."""
    if BPE_PATH.is_file():
        return BPE_PATH
    raise LoramixError(f"The CLIP vocabulary {BPE_PATH} is missing from this loramix install: reinstall loramix, "
                       "or put a tokenizer/ folder next to the checkpoint.")


def clip_vocab_and_merges(path: Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(token -> id, merges as pairs), as OpenAI's SimpleTokenizer builds them."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    with gzip.open(path or clip_bpe_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:N_MERGES + 1]]
    if len(merges) != N_MERGES:
        raise LoramixError(f"{path or VOCAB_FILE}: holds {len(merges)} BPE merges, the CLIP vocabulary has {N_MERGES}.")
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(merge) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]  # CLIP_VOCAB_SIZE tokens in all
    return {token: i for i, token in enumerate(tokens)}, merges


def sd_clip_tokenizer(pad_token: str = "<|endoftext|>", max_length: int = 77):
    """A transformers `CLIPTokenizer` equal to the one in SD model folders, built with no download."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=max_length)
