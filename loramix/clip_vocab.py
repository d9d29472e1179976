"""The CLIP tokenizer of SD 1.x / 2.x / SDXL, built offline from the BPE vocabulary inside open-clip-torch.

A single-file checkpoint from a model site holds no tokenizer, and the Hugging Face hub may be out of
reach. Every SD 1.x, SD 2.x and SDXL text encoder uses OpenAI's CLIP byte-level BPE (49,408 tokens);
its merges ship with open-clip-torch as `bpe_simple_vocab_16e6.txt.gz`. The vocabulary is built from
them exactly as OpenAI's `SimpleTokenizer` does (256 byte tokens, the same with `</w>`, one token per
merge, then `<|startoftext|>` and `<|endoftext|>`) and handed to transformers' `CLIPTokenizer`.

The SD 1.x and SDXL (first) tokenizers pad with `<|endoftext|>`; the SD 2.x and SDXL second (OpenCLIP)
tokenizers pad with `!` (id 0): pass `pad_token`.

open_clip's package `__init__` imports torchvision, which does not import beside every torch build, so
the file is found without importing the package.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

from loramix.errors import LoramixError

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # as OpenAI's SimpleTokenizer: merges[1 : 49152 - 256 - 2 + 1]


def clip_bpe_path() -> Path:
    """The BPE merges file that open-clip-torch ships, or a sentence saying how to get it."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / VOCAB_FILE
        if path.is_file():
            return path
    raise LoramixError(f"The CLIP vocabulary ({VOCAB_FILE}) comes with open-clip-torch, which is not installed: "
                       "`pip install --no-deps open-clip-torch`, or put a tokenizer/ folder next to the checkpoint.")


def clip_vocab_and_merges(path: Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(token -> id, merges as pairs), as OpenAI's SimpleTokenizer builds them."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    lines = gzip.open(path or clip_bpe_path(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:N_MERGES + 1]]
    if len(merges) != N_MERGES:
        raise LoramixError(f"{path or VOCAB_FILE}: holds {len(merges)} BPE merges, the CLIP vocabulary has {N_MERGES}.")
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(merge) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges


def sd_clip_tokenizer(pad_token: str = "<|endoftext|>", max_length: int = 77):
    """A transformers `CLIPTokenizer` equal to the one in SD model folders, built with no download."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=max_length)
