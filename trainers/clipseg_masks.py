"""Making foreground masks for masked training (`trainers.masks` reads them) with CLIPSeg, from a text prompt.

CLIPSeg is native in transformers. Each image `<stem>.<ext>` gets `<stem>.mask.png` beside it: an 8-bit grey PNG of the image's own size, white
where the prompt's subject is (CLIPSeg's probability × 255, or 0 / 255 with a `threshold`). A mask that exists
is kept unless `replace`. The scan of a training folder never takes a `.mask.png` for a training image.
Written through the writer (inside the folder, atomic, never through a link); cancel is checked per batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from loramix.core.errors import LoramixError
from loramix.core.events import CancelToken, EventSink, TrainEvent, no_events
from trainers.captions import captions_table
from trainers.dataset import IMAGE_ERRORS, MASK_SUFFIX, load_image

DEFAULT_CLIPSEG = "CIDAS/clipseg-rd64-refined"


def mask_path(image: Path) -> Path:
    return image.with_name(image.stem + MASK_SUFFIX)


@dataclass
class MaskResult:
    written: list[Path] = field(default_factory=list)
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    cancelled: bool = False


class ClipSeg:
    """A loaded CLIPSeg: `masks(images, prompt)` gives one probability map (H, W) in [0, 1] per image."""

    def __init__(self, model: str = DEFAULT_CLIPSEG):
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        try:
            self.processor = CLIPSegProcessor.from_pretrained(model)
            self.model = CLIPSegForImageSegmentation.from_pretrained(model).eval()
        except (OSError, ValueError) as e:
            text = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise LoramixError(f"masks.model: cannot load the CLIPSeg model {model!r} ({text}); run `hf download "
                               f"{model}` where there is a network, or give a local folder of it.") from e

    def masks(self, images: list[Image.Image], prompt: str) -> list[np.ndarray]:
        import torch

        inputs = self.processor(text=[prompt] * len(images), images=images, padding=True, return_tensors="pt")
        with torch.inference_mode():
            logits = self.model(**inputs).logits
        logits = logits.reshape(len(images), *logits.shape[-2:])
        out = []
        for image, logit in zip(images, logits):
            prob = torch.sigmoid(logit)[None, None]
            prob = torch.nn.functional.interpolate(prob, size=(image.height, image.width), mode="bilinear")
            out.append(prob[0, 0].numpy())
        return out


def mask_image(prob: np.ndarray, threshold: float = 0.0) -> Image.Image:
    """The grey mask PNG's picture: probability × 255, or with `threshold` > 0 white where prob ≥ threshold."""
    values = (prob >= threshold) * 255.0 if threshold > 0 else np.clip(prob, 0.0, 1.0) * 255.0
    return Image.fromarray(np.round(values).astype(np.uint8), "L")


def make_masks(data_dir: str, prompt: str, model: str = DEFAULT_CLIPSEG, threshold: float = 0.0,
               replace: bool = False, batch_size: int = 4, on_event: EventSink = no_events,
               cancel: CancelToken | None = None, segmenter: ClipSeg | None = None) -> MaskResult:
    """Write `<stem>.mask.png` for every image of the folder (those with a mask only with `replace`)."""
    from loramix.core.writer import save_png

    if not prompt.strip():
        raise LoramixError("masks.prompt: name what the mask should cover, e.g. 'person' or 'the cat'.")
    if not 0.0 <= threshold <= 1.0:
        raise LoramixError(f"masks.threshold: {threshold} is outside 0..1 (0 keeps the soft mask).")
    cancel = cancel or CancelToken()
    root = Path(data_dir).expanduser()
    rows, _ = captions_table(str(root), ".txt")
    todo = [image for _, image, _ in rows if replace or not mask_path(image).exists()]
    result = MaskResult(skipped=len(rows) - len(todo))
    on_event(TrainEvent("start", total=len(todo), message=f"Masking {len(todo)} images of {root} "
                                                          f"({result.skipped} have a mask, kept)."))
    if todo and segmenter is None:
        segmenter = ClipSeg(model)
    for start in range(0, len(todo), batch_size):
        if cancel.cancelled:
            result.cancelled = True
            break
        batch, images = [], []
        for path in todo[start:start + batch_size]:
            try:
                images.append(load_image(path))
                batch.append(path)
            except IMAGE_ERRORS as e:
                result.failed.append(f"{path.name}: cannot be decoded ({e})")
        for path, prob in zip(batch, segmenter.masks(images, prompt) if images else []):
            result.written.append(save_png(mask_image(prob, threshold), mask_path(path), replace=replace,
                                           within=root, field="Masks"))
        on_event(TrainEvent("step", step=min(start + batch_size, len(todo)), total=len(todo),
                            paths=tuple(str(mask_path(p)) for p in batch)))
    on_event(TrainEvent("log", message=f"Wrote {len(result.written)} masks in {root}; {result.skipped} kept, "
                                       f"{len(result.failed)} failed."))
    return result
