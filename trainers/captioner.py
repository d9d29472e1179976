"""Auto-captioning: caption every image of a folder with a natural-language captioner, writing `<stem><ext>`.

The captioners are the ones transformers 5 loads natively (`AutoProcessor` + `AutoModelForImageTextToText`,
no remote code): BLIP, GIT and Florence-2, each a small entry of `FAMILIES` (its default prompt and how its
output is cleaned). The pipeline per batch: preprocess (the model's own processor), generate, post-process
(special tokens and a repeated prompt cut off, whitespace collapsed), write through the writer.

A caption that exists is never replaced unasked: `mode` skip leaves it (the image is not even run through the
model), replace writes the new caption, prepend / append join the new one before / after it with ", ". In
skip mode a new caption is written with `replace=False`, so a caption that appears meanwhile is refused, not
overwritten. Progress is published as events (start, one step per batch, log), cancel is checked between
batches, so the job queue runs it like a training.

A WD tagger (`trainers.tagger`, their ONNX export on onnxruntime) takes the captioner's place when `cfg.model`
names one; the rest of the pipeline is the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from loramix.core.config import CaptionConfig
from loramix.core.errors import LoramixError
from loramix.core.events import CancelToken, EventSink, TrainEvent, no_events
from trainers.captions import captions_table
from trainers.dataset import IMAGE_ERRORS, decode_caption, load_image


@dataclass(frozen=True)
class Family:
    prompt: str = ""  # the default prompt (Florence-2: a task token its processor expands)
    task: bool = False  # the prompt is a task token: the caption does not repeat it


FAMILIES = {"blip": Family(), "git": Family(), "florence2": Family("<MORE_DETAILED_CAPTION>", task=True)}
MAX_SIDE = 1024  # images are downscaled to this before the processor (which resizes far smaller anyway)


@dataclass
class CaptionResult:
    written: list[Path] = field(default_factory=list)
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    cancelled: bool = False
    lora_path: Path | None = None  # the job queue's result shape: a captioning writes no LoRA
    state_path: Path | None = None


def _load_error(model: str, exc: BaseException) -> LoramixError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if Path(model).expanduser().exists():
        return LoramixError(f"caption.model: cannot load the captioner folder {model!r} ({text}); it needs the "
                            "files save_pretrained writes (config.json, the weights, the processor files).")
    return LoramixError(f"caption.model: the captioner {model!r} is not on this machine and cannot be downloaded "
                        f"now ({text}); run `hf download {model}` where there is a network (it lands in the Hugging "
                        "Face cache), or give a local folder of that model.")


class Captioner:
    """A loaded captioner: `caption(images)` runs preprocess, generate and post-process for one batch."""

    def __init__(self, model_id: str, prompt: str = "", max_new_tokens: int = 60, num_beams: int = 1,
                 min_new_tokens: int = 0):
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        try:
            model_type = AutoConfig.from_pretrained(model_id).model_type
        except (OSError, ValueError) as e:
            raise _load_error(model_id, e) from e
        if model_type not in FAMILIES:
            raise LoramixError(f"caption.model: {model_id!r} is a {model_type} model; the captioners loramix runs "
                               f"are {', '.join(sorted(FAMILIES))}.")
        self.family = FAMILIES[model_type]
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        try:
            self.processor = AutoProcessor.from_pretrained(model_id)
            self.model = AutoModelForImageTextToText.from_pretrained(model_id, dtype=dtype).to(self.device).eval()
        except (OSError, ValueError) as e:
            raise _load_error(model_id, e) from e
        self.prompt = prompt or self.family.prompt
        self.generate_kwargs = dict(max_new_tokens=max_new_tokens, num_beams=num_beams,
                                    min_new_tokens=min_new_tokens or None)

    def caption(self, images) -> list[str]:
        import torch

        kwargs = {"images": images, "return_tensors": "pt"}
        if self.prompt:
            kwargs["text"] = [self.prompt] * len(images)
        inputs = self.processor(**kwargs).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            ids = self.model.generate(**inputs, **self.generate_kwargs)
        texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        return [self.clean(text) for text in texts]

    def clean(self, text: str) -> str:
        """The caption without special tokens (dropped by the decode; Florence-2's post-processing of a caption
        task does no more), a repeated prompt, or doubled whitespace."""
        text = " ".join(str(text).split())
        prompt = " ".join(self.prompt.split())
        if prompt and not self.family.task and text.lower().startswith(prompt.lower()):
            text = text[len(prompt):].strip()
        return text


def merge_caption(existing: str | None, new: str, mode: str) -> str | None:
    """The caption to write (None: leave the file alone). An empty existing caption counts as none."""
    if not existing:
        return new
    if mode == "skip":
        return None
    if mode == "replace":
        return new
    return f"{new}, {existing}" if mode == "prepend" else f"{existing}, {new}"


def _existing(image: Path, ext: str) -> str | None:
    path = image.with_suffix(ext)
    return " ".join(decode_caption(path.read_bytes())[0].split()) if path.is_file() else None


def caption_folder(cfg: CaptionConfig, on_event: EventSink = no_events, cancel: CancelToken | None = None,
                   captioner: Captioner | None = None) -> CaptionResult:
    """Caption the folder as `cfg` says; returns what was written, skipped and failed."""
    from loramix.core.writer import write_text

    cfg.validate()
    cancel = cancel or CancelToken()
    root = Path(cfg.data_dir).expanduser()
    rows, warnings = captions_table(str(root), cfg.caption_extension)
    todo = [(image, _existing(image, cfg.caption_extension)) for _, image, _ in rows]
    result = CaptionResult(skipped=sum(1 for _, text in todo if text and cfg.mode == "skip"))
    todo = [(image, text) for image, text in todo if not (text and cfg.mode == "skip")]
    on_event(TrainEvent("start", step=0, total=len(todo), message=f"Captioning {len(todo)} images of {root} "
                                                                   f"({result.skipped} already captioned, skipped)."))
    for warning in warnings:  # files the scan skipped or doubts
        on_event(TrainEvent("warning", message=warning))
    if todo and captioner is None:
        from trainers.tagger import WDTagger, is_wd_tagger

        captioner = WDTagger(cfg) if is_wd_tagger(cfg.model) else \
            Captioner(cfg.model, cfg.prompt, cfg.max_new_tokens, cfg.num_beams)
    started, done = time.monotonic(), 0
    for start in range(0, len(todo), cfg.batch_size):
        if cancel.cancelled:
            result.cancelled = True
            break
        batch, images = [], []
        for image_path, existing in todo[start:start + cfg.batch_size]:
            try:
                image = load_image(image_path, cover=(MAX_SIDE, MAX_SIDE))
            except IMAGE_ERRORS as e:
                result.failed.append(f"{image_path.name}: cannot be decoded ({e})")
                continue
            image.thumbnail((MAX_SIDE, MAX_SIDE))
            batch.append((image_path, existing))
            images.append(image)
        new = captioner.caption(images) if images else []
        paths = []
        for (image_path, existing), text in zip(batch, new):
            if not text:
                result.failed.append(f"{image_path.name}: the captioner gave nothing (no tag reached its threshold); "
                                     "its caption file was left as it was")
                continue
            caption = merge_caption(existing, text, cfg.mode)
            asked = existing is not None and (cfg.mode != "skip" or not existing)  # an empty file counts as none
            paths.append(str(write_text(image_path.with_suffix(cfg.caption_extension), caption + "\n",
                                        replace=asked, within=root, field="Captions")))
        result.written += [Path(p) for p in paths]
        done += len(todo[start:start + cfg.batch_size])
        elapsed = time.monotonic() - started
        on_event(TrainEvent("step", step=done, total=len(todo), steps_per_s=done / elapsed if elapsed else None,
                            eta_s=elapsed / done * (len(todo) - done), paths=tuple(paths),
                            message=new[-1] if new else ""))
    for failure in result.failed:
        on_event(TrainEvent("warning", message=failure))
    verb = "Stopped after captioning" if result.cancelled else "Captioned"
    on_event(TrainEvent("log", step=done, total=len(todo), message=f"{verb} {len(result.written)} images of {root}; "
                                                                   f"{result.skipped} skipped, {len(result.failed)} "
                                                                   "failed."))
    return result
