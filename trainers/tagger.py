"""A booru-style tagger: the WD v3 taggers (SmilingWolf/wd-*-tagger-v3) run from their ONNX export.

A WD tagger is a folder (or hub repository) with `model.onnx` and `selected_tags.csv` (tag_id, name,
category, count; category 9 is a rating, 4 a character, 0 a general tag). The image is padded to a white
square, resized to the model's input side (bicubic), turned to BGR and fed as float 0-255, NHWC — as the
taggers' own reference code does; the model outputs a probability per tag. A general tag is kept at or above
`general_threshold`, a character tag at or above `character_threshold`; ratings are never written. Excluded
tags are dropped, underscores become spaces (not in emoticons such as ^_^), and `max_tags` keeps the likeliest.

It runs on onnxruntime (`pip install onnxruntime`), not on timm: timm imports torchvision, which does not
import beside the CPU torch wheel of this project's tested set.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from loramix.core.config import CaptionConfig
from loramix.core.errors import LoramixError

GENERAL, CHARACTER, RATING = 0, 4, 9
FILES = ("model.onnx", "selected_tags.csv")
KAOMOJI = {"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o", "@_@",
           "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"}  # the emoticons whose underscores are the picture


def is_wd_tagger(model: str) -> bool:
    """A folder holding model.onnx and selected_tags.csv, or a hub id of a WD tagger (…/wd-…-tagger…)."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        return all((folder / name).is_file() for name in FILES)
    name = model.rsplit("/", 1)[-1].lower()
    return model.count("/") == 1 and name.startswith("wd") and "tagger" in name


def _files(model: str) -> tuple[Path, Path]:
    folder = Path(model).expanduser()
    if folder.is_dir():
        return folder / FILES[0], folder / FILES[1]
    try:
        from huggingface_hub import hf_hub_download

        return tuple(Path(hf_hub_download(model, name)) for name in FILES)
    except Exception as e:  # offline, unknown repository, no such file: one sentence
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LoramixError(f"caption.model: the WD tagger {model!r} is not on this machine and cannot be downloaded "
                           f"now ({text}); run `hf download {model} model.onnx selected_tags.csv` where there is a "
                           "network, or give a local folder with those two files.") from e


@dataclass(frozen=True)
class TagInfo:
    name: str
    category: int


def read_tags(path: Path) -> list[TagInfo]:
    with open(path, newline="", encoding="utf-8") as f:
        return [TagInfo(row["name"], int(row["category"])) for row in csv.DictReader(f)]


class WDTagger:
    """A loaded WD tagger: `caption(images)` returns one comma-separated tag list per image."""

    def __init__(self, cfg: CaptionConfig):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise LoramixError("caption.model: a WD tagger runs on onnxruntime, which is not installed; "
                               "`pip install onnxruntime` and start again.") from e
        model_file, tags_file = _files(cfg.model)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.tags = read_tags(tags_file)
        shape = self.session.get_inputs()[0].shape  # [batch, side, side, 3]
        self.side = int(shape[1]) if isinstance(shape[1], int) else 448
        n_out = self.session.get_outputs()[0].shape[-1]
        if isinstance(n_out, int) and n_out != len(self.tags):
            raise LoramixError(f"caption.model: {tags_file.name} lists {len(self.tags)} tags but the model scores "
                               f"{n_out}; the two files are from different taggers.")
        self.cfg = cfg
        self.excluded = {t.strip().lower().replace(" ", "_") for t in cfg.exclude_tags.split(",") if t.strip()}

    def preprocess(self, image: Image.Image) -> np.ndarray:
        side = max(image.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(image.convert("RGB"), ((side - image.width) // 2, (side - image.height) // 2))
        square = square.resize((self.side, self.side), Image.Resampling.BICUBIC)
        return np.asarray(square, dtype=np.float32)[:, :, ::-1]  # RGB -> BGR, 0-255

    def caption(self, images) -> list[str]:
        batch = np.stack([self.preprocess(im) for im in images])
        (probs,) = self.session.run(None, {self.session.get_inputs()[0].name: batch})
        return [self.select(p) for p in probs]

    def select(self, probs) -> str:
        """The kept tags of one image, likeliest first, as a caption."""
        kept = []
        for tag, p in zip(self.tags, probs):
            limit = {GENERAL: self.cfg.general_threshold, CHARACTER: self.cfg.character_threshold}.get(tag.category)
            if limit is not None and p >= limit and tag.name.lower() not in self.excluded:
                kept.append((float(p), tag.name))
        kept.sort(key=lambda k: -k[0])
        if self.cfg.max_tags:
            kept = kept[:self.cfg.max_tags]
        names = [n.replace("_", " ") if self.cfg.underscores_to_spaces and n not in KAOMOJI else n for _, n in kept]
        return ", ".join(names)
