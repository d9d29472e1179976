"""The training set: scan an image folder, read captions and repeats, bucket by aspect ratio, batch.

Folder layout (kohya style): images directly in the folder repeat `dataset.repeats` times; a
sub-folder named `N_name` repeats its images N times and `name` is the caption of images without
a caption file. An optional regularisation folder (`dataset.reg_data_dir`, same layout) is balanced
as kohya's DreamBooth dataset does it: each epoch holds as many regularisation samples as training
samples; their captions get no trigger word and their loss is weighted by `train.prior_loss_weight`.
Everything random (order, flips, crops, caption shuffling and dropout) is a pure function of
(seed, epoch, item), so a resumed run sees exactly the data an uninterrupted one would.

The scan reads image sizes from file headers only (nothing is decoded); an image is decoded when its
pixels are needed (once, when latents are cached) and downscaled right away. Everything the scan
skips or doubts becomes a warning sentence naming the file: logged, and returned by `scan_report`
(the trainer publishes them as "warning" events, the UI shows them).
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from loramix.core.config import DatasetConfig
from loramix.core.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
BUCKET_STEP = 64
MASK_SUFFIX = ".mask.png"  # `<stem>.mask.png` beside an image is its loss mask (trainers.masks), not an image
# What PIL raises for a file it cannot read or decode (a truncated PNG fails its CRC check with SyntaxError).
IMAGE_ERRORS = (Image.UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError,
                EOFError)
CAPTION_FALLBACK = "cp1252"  # then latin-1, which decodes any byte
_REPEAT_DIR = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class ImageItem:
    path: Path
    caption: str
    repeats: int
    folder: str  # the caption group, as kohya's ss_tag_frequency keys it
    size: tuple[int, int]  # (width, height) after EXIF orientation
    bucket: tuple[int, int] = (0, 0)
    is_reg: bool = False  # a regularisation image (dataset.reg_data_dir)


# ---- images ----------------------------------------------------------------------------------
def load_image(path: Path, cover: tuple[int, int] | None = None) -> Image.Image:
    """Open an image as 8-bit RGB: EXIF rotation applied, transparency composited onto white.

    With `cover` (width, height), a large image is downscaled while it is read (JPEG decodes at a
    reduced scale) to the smallest size that still covers `cover` at least twice over, so a 12000 px
    photo never lives in memory at full size longer than one decode.
    """
    with Image.open(path) as im:
        if cover and im.format == "JPEG":
            oriented = _oriented_size(im)
            scale = max(cover[0] / oriented[0], cover[1] / oriented[1])
            if scale < 0.5:
                w, h = im.size
                im.draft("RGB", (max(1, math.ceil(w * scale * 2)), max(1, math.ceil(h * scale * 2))))
        im.load()
        if cover:
            oriented = _oriented_size(im)
            factor = int(min(oriented[0] / cover[0], oriented[1] / cover[1]) // 2)
            if factor >= 2:
                im = im.reduce(factor)  # a box filter; the bucket resize (LANCZOS) follows
        im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        scale = 255.0 / 65535.0 if arr.max() > 255 else 1.0
        im = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB")


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed, from the header's EXIF orientation; decodes nothing."""
    raw = im.info.get("exif")
    orientation = 1
    if raw:
        exif = Image.Exif()
        exif.load(raw)
        orientation = exif.get(0x0112, 1)
    w, h = im.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _probe(path: Path, max_pixels: int) -> tuple[tuple[int, int] | None, str]:
    """The oriented size read from the file's header (no pixel is decoded), or None and why not.

    A PNG's chunk checksums are verified (a read of the file, no decompression), so a truncated PNG
    is caught here; a file whose pixels fail to decode later is named by `pixels_for`.
    """
    try:
        with Image.open(path) as im:
            size = _oriented_size(im)
            if size[0] * size[1] <= max_pixels and im.format == "PNG":
                im.verify()
    except Image.DecompressionBombError:
        return None, (f"Skipping {path}: it has more pixels than PIL will open safely; downscale it below "
                      f"dataset.max_image_pixels ({max_pixels:,}).")
    except IMAGE_ERRORS as e:
        return None, f"Skipping {path}: cannot read this image ({e})."
    if size[0] * size[1] > max_pixels:
        return None, (f"Skipping {path}: {size[0]}x{size[1]} is {size[0] * size[1]:,} pixels, over "
                      f"dataset.max_image_pixels ({max_pixels:,}); downscale it or raise that limit.")
    return size, ""


# ---- captions --------------------------------------------------------------------------------
def decode_caption(data: bytes) -> tuple[str, str]:
    """Caption bytes as text, and the encoding used: UTF-8 (a BOM is dropped), else cp1252, else latin-1."""
    for encoding in ("utf-8-sig", CAPTION_FALLBACK, "latin-1"):
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any byte")  # pragma: no cover


def read_caption(image: Path, extension: str, default: str, warnings: list[str] | None = None) -> str:
    """The caption file next to `image` (or `default`); a file that is not UTF-8 is read as cp1252 with a warning."""
    ext = extension if extension.startswith(".") else "." + extension
    caption_file = image.with_suffix(ext)
    if caption_file.is_file():
        text, encoding = decode_caption(caption_file.read_bytes())
        text = " ".join(text.split())
        if encoding != "utf-8-sig":
            _warn(warnings, f"{caption_file} is not UTF-8 text; read it as {encoding} (\"{text[:60]}\"). "
                            "Save it as UTF-8 if that is not what you wrote.")
        return text
    return default


def _warn(warnings: list[str] | None, message: str) -> None:
    log.warning("%s", message)
    if warnings is not None:
        warnings.append(message)


def write_caption(image: Path, extension: str, text: str, data_dir: str | Path) -> Path:
    """Save a caption next to its image through the writer: inside `data_dir` after links, replacing the old
    caption (the user pressed Save), never through a link."""
    from loramix.core.writer import write_text

    ext = extension if extension.startswith(".") else "." + extension
    path = Path(image).with_suffix(ext)
    return write_text(path, " ".join(text.split()) + "\n", replace=True, within=Path(data_dir).expanduser(),
                      field="Captions")


@dataclass
class ScanReport:
    """What a scan found: the usable images, and one warning sentence per file it skipped or doubts."""

    items: list[ImageItem]
    warnings: list[str] = field(default_factory=list)
    reg_found: list[ImageItem] = field(default_factory=list)  # every regularisation image, before balancing
    validation: list[ImageItem] = field(default_factory=list)  # held out: never trained on


def scan_report(cfg: DatasetConfig) -> ScanReport:
    """Scan `cfg.data_dir` (and `cfg.reg_data_dir`) without training: the images (bucketed; training images
    first, then the balanced regularisation images) and every warning, for the UI to show."""
    warnings: list[str] = []
    items, validation = hold_out(scan_folder(cfg, warnings), cfg.validation_split)
    if cfg.validation_dir:
        validation = scan_folder(cfg, warnings, validation=True)
        _refuse_shared("dataset.validation_dir", items, validation)
    reg: list[ImageItem] = []
    if cfg.reg_data_dir:
        reg = scan_folder(cfg, warnings, reg=True)
        train_paths = {i.path.resolve() for i in items}
        both = next((i.path for i in reg if i.path.resolve() in train_paths), None)
        if both is not None:
            raise DatasetError(f"dataset.reg_data_dir: {both} is also a training image of dataset.data_dir; "
                               "keep the regularisation images in a folder of their own.")
        items += balance_reg(items, reg, warnings)
    return ScanReport(assign_buckets(items, cfg), warnings, reg, assign_buckets(validation, cfg))


def hold_out(items: list[ImageItem], fraction: float) -> tuple[list[ImageItem], list[ImageItem]]:
    """(training, validation): round(fraction x images), at least one, held out by a hash of each image's folder
    and file name, so the same images are held out on every run and machine whatever the seed."""
    if not fraction:
        return items, []
    count = max(1, round(fraction * len(items)))
    if count >= len(items):
        raise DatasetError(f"dataset.validation_split: {fraction} of {len(items)} images leaves none to train on; "
                           "add images or lower it.")
    ranked = sorted(items, key=lambda i: hashlib.sha256(f"{i.path.parent.name}/{i.path.name}".encode()).hexdigest())
    held = {id(i) for i in ranked[:count]}
    return [i for i in items if id(i) not in held], [i for i in items if id(i) in held]


def _refuse_shared(name: str, items: list[ImageItem], other: list[ImageItem]) -> None:
    train_paths = {i.path.resolve() for i in items}
    both = next((i.path for i in other if i.path.resolve() in train_paths), None)
    if both is not None:
        raise DatasetError(f"{name}: {both} is also a training image of dataset.data_dir; keep these images in a "
                           "folder of their own.")


def balance_reg(train: list[ImageItem], reg: list[ImageItem], warnings: list[str] | None = None) -> list[ImageItem]:
    """The regularisation images with their repeats set so that an epoch holds as many of them as training
    samples, exactly as kohya's DreamBooth dataset does it: take the images in order with their own repeats
    until the count is reached; if they fall short, go round again adding one repeat at a time."""
    needed = sum(i.repeats for i in train)
    taken: list[ImageItem] = []
    n = 0
    for item in reg:
        if n >= needed:
            break
        taken.append(item)
        n += item.repeats
    while n < needed:
        for k in range(len(taken)):
            taken[k] = replace(taken[k], repeats=taken[k].repeats + 1)
            n += 1
            if n >= needed:
                break
    if len(taken) < len(reg):
        _warn(warnings, f"dataset.reg_data_dir: only {len(taken)} of its {len(reg)} images are used, since an epoch "
                        f"takes as many regularisation samples as training samples ({needed}).")
    return taken


def trigger_of(item: ImageItem, cfg: DatasetConfig) -> str:
    """The trigger word added to this item's caption: none for a regularisation image."""
    return "" if item.is_reg else cfg.trigger_word


def with_trigger(caption: str, trigger: str, position: str = "start") -> str:
    """The caption with the trigger word as its first (or, with position "end", last) comma-separated tag,
    unless it is there already."""
    tags = [t.strip() for t in caption.split(",")]
    if not trigger or trigger == (tags[0] if position == "start" else tags[-1]):
        return caption
    if not caption:
        return trigger
    return f"{trigger}, {caption}" if position == "start" else f"{caption}, {trigger}"


def shuffle_tags(caption: str, keep_tokens: int, rng: random.Random) -> str:
    tags = [t.strip() for t in caption.split(",") if t.strip()]
    head, tail = tags[:keep_tokens], tags[keep_tokens:]
    rng.shuffle(tail)
    return ", ".join(head + tail)


# ---- scanning --------------------------------------------------------------------------------
def scan_folder(cfg: DatasetConfig, warnings: list[str] | None = None, reg: bool = False,
                validation: bool = False) -> list[ImageItem]:
    """Find every usable image under `cfg.data_dir` (or `cfg.reg_data_dir`, `cfg.validation_dir`) with its
    caption and repeat count.

    Sizes come from headers; nothing is decoded. Warnings are logged and appended to `warnings`.
    """
    name, folder_text = ("dataset.reg_data_dir", cfg.reg_data_dir) if reg else ("dataset.data_dir", cfg.data_dir)
    if validation:
        name, folder_text = "dataset.validation_dir", cfg.validation_dir
    root = Path(folder_text).expanduser()
    if not folder_text or not root.is_dir():
        raise DatasetError(f"{name}: {folder_text!r} is not a folder. Point it at a folder of images.")
    groups: list[tuple[Path, int, str]] = [(root, 1 if reg or validation else cfg.repeats, "")]  # dataset.repeats: training
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        m = _REPEAT_DIR.match(sub.name)
        if m:
            groups.append((sub, int(m.group(1)), m.group(2).replace("_", " ")))
        elif any(f.suffix.lower() in IMAGE_EXTENSIONS for f in sub.iterdir()):
            _warn(warnings, f"Ignoring sub-folder {sub}: name it N_name (e.g. 10_{sub.name}) to train on it.")
    items = []
    found_files = 0
    tiny = smallest_bucket_side(cfg) // 2
    for folder, repeats, default_caption in groups:
        if repeats < 1:
            _warn(warnings, f"Ignoring {folder}: 0 repeats.")
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file() or \
                    path.name.lower().endswith(MASK_SUFFIX):
                continue
            found_files += 1
            size, why = _probe(path, cfg.max_image_pixels)
            if size is None:
                _warn(warnings, why)
                continue
            if min(size) < tiny:
                _warn(warnings, f"{path} is only {size[0]}x{size[1]} pixels, less than {tiny} (half the smallest "
                                f"bucket side); it will be upscaled and look blurry. Use a larger image.")
            caption = read_caption(path, cfg.caption_extension, default_caption, warnings)
            group = folder.name if folder != root else f"{repeats}_{root.name}"
            items.append(ImageItem(path, caption, repeats, group, size, is_reg=reg))
    if not items:
        what = "no image files" if not found_files else f"{found_files} image files but none could be read"
        raise DatasetError(f"{name}: {root} has {what} ({', '.join(sorted(IMAGE_EXTENSIONS))}). "
                           "Add images, or put them in a sub-folder named like 10_mystyle.")
    return items


def count_tags(captions) -> dict[str, int]:
    """Tag -> count over `captions`, as kohya's `set_tag_frequency` counts them (and A1111 shows them): each
    comma-separated tag stripped and lower-cased, every occurrence counted (a tag twice in one caption counts 2)."""
    counter: Counter = Counter()
    for caption in captions:
        counter.update(t.strip().lower() for t in caption.split(",") if t.strip())
    return dict(counter)


def tag_frequency(items: list[ImageItem]) -> dict[str, dict[str, int]]:
    """kohya's ss_tag_frequency: per folder, `count_tags` of its training images' captions (one per image)."""
    captions: dict[str, list[str]] = {}
    for item in items:
        if not item.is_reg:
            captions.setdefault(item.folder, []).append(item.caption)
    return {folder: count_tags(texts) for folder, texts in captions.items()}


# ---- buckets ---------------------------------------------------------------------------------
def smallest_bucket_side(cfg: DatasetConfig) -> int:
    """The smallest side of any bucket this config makes (the resolution without bucketing)."""
    if not cfg.enable_bucket:
        return cfg.resolution
    return min(min(b) for b in make_buckets(cfg.resolution, cfg.min_bucket_reso, cfg.max_bucket_reso))


def make_buckets(resolution: int, min_side: int = 0, max_side: int = 0) -> list[tuple[int, int]]:
    """All (width, height), multiples of 64, with width*height <= resolution**2 and sides in range."""
    min_side = min_side or max(BUCKET_STEP, resolution // 2 // BUCKET_STEP * BUCKET_STEP)
    max_side = max_side or resolution * 2
    budget = resolution * resolution
    buckets = set()
    for w in range(min_side, max_side + 1, BUCKET_STEP):
        h = min(max_side, budget // w // BUCKET_STEP * BUCKET_STEP)
        if h >= min_side:
            buckets.add((w, h))
            buckets.add((h, w))
    return sorted(buckets)


def bucket_for(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the image's (then the larger area)."""
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def assign_buckets(items: list[ImageItem], cfg: DatasetConfig) -> list[ImageItem]:
    if cfg.enable_bucket:
        buckets = make_buckets(cfg.resolution, cfg.min_bucket_reso, cfg.max_bucket_reso)
    else:
        buckets = [(cfg.resolution, cfg.resolution)]
    return [replace(i, bucket=bucket_for(i.size, buckets)) for i in items]


def bucket_info(items: list[ImageItem], cfg: DatasetConfig) -> dict | None:
    """kohya's `ss_bucket_info` (A1111 shows it as "Resolution"): None without bucketing, else
    {"buckets": {index in the sorted bucket list: {"resolution": [w, h], "count": images with repeats}},
    "mean_img_ar_error": mean |bucket w/h − image w/h| over the images, each once}; only non-empty buckets."""
    if not cfg.enable_bucket:
        return None
    buckets = make_buckets(cfg.resolution, cfg.min_bucket_reso, cfg.max_bucket_reso)
    counts = Counter()
    for item in items:
        counts[item.bucket] += item.repeats
    errors = [abs(i.bucket[0] / i.bucket[1] - i.size[0] / i.size[1]) for i in items]
    return {"buckets": {i: {"resolution": list(b), "count": counts[b]} for i, b in enumerate(buckets) if counts[b]},
            "mean_img_ar_error": sum(errors) / len(errors) if errors else 0}


def crop_box(size: tuple[int, int], bucket: tuple[int, int], crop: str,
             rng: random.Random) -> tuple[tuple[int, int], int, int]:
    """The size an image is resized to so that it covers the bucket, and the crop's left and top."""
    (w, h), (bw, bh) = size, bucket
    scale = max(bw / w, bh / h)
    nw, nh = max(bw, round(w * scale)), max(bh, round(h * scale))
    if crop == "random":
        return (nw, nh), rng.randint(0, nw - bw), rng.randint(0, nh - bh)
    return (nw, nh), (nw - bw) // 2, (nh - bh) // 2


def fit_to_bucket(image: Image.Image, bucket: tuple[int, int], crop: str, rng: random.Random) -> Image.Image:
    """Resize so the image covers the bucket, then crop the excess (centre or random)."""
    (nw, nh), left, top = crop_box(image.size, bucket, crop, rng)
    image = image.resize((nw, nh), Image.Resampling.LANCZOS)
    return image.crop((left, top, left + bucket[0], top + bucket[1]))


def geometry(item: ImageItem, sample: Sample, cfg: DatasetConfig) -> tuple[int, int, int, int, int, int]:
    """SDXL's size conditioning: (original_h, original_w, crop_top, crop_left, target_h, target_w)."""
    _, left, top = crop_box(item.size, item.bucket, cfg.crop, random.Random(sample.variant_seed))
    return (item.size[1], item.size[0], top, left, item.bucket[1], item.bucket[0])


# ---- epochs and batches ----------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One entry of a batch: which item, and the random choices made for it this epoch."""

    index: int  # into the item list
    flip: bool
    drop_caption: bool
    variant_seed: int  # seeds crop and caption shuffle


def epoch_batches(items: list[ImageItem], cfg: DatasetConfig, global_batch: int, seed: int,
                  epoch: int) -> list[list[Sample]]:
    """The global batches of one epoch, each from a single bucket, every item `repeats` times.

    A bucket's last short batch is filled up with that bucket's first items of the epoch, so every
    process of a distributed run always gets the same number of samples.
    """
    rng = random.Random(f"{seed}:{epoch}")
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for idx, item in enumerate(items):
        by_bucket.setdefault(item.bucket, []).extend([idx] * item.repeats)
    batches = []
    for bucket in sorted(by_bucket):
        order = by_bucket[bucket]
        rng.shuffle(order)
        for start in range(0, len(order), global_batch):
            chunk = order[start:start + global_batch]
            chunk += (order * global_batch)[: global_batch - len(chunk)]
            batches.append(chunk)
    rng.shuffle(batches)
    out = []
    for chunk in batches:
        out.append([Sample(i, cfg.flip_aug and rng.random() < 0.5, rng.random() < cfg.caption_dropout_rate,
                           rng.getrandbits(32)) for i in chunk])
    return out


def batches_per_epoch(items: list[ImageItem], global_batch: int) -> int:
    counts = Counter()
    for item in items:
        counts[item.bucket] += item.repeats
    return sum(math.ceil(n / global_batch) for n in counts.values())


def caption_for(item: ImageItem, sample: Sample, cfg: DatasetConfig) -> str:
    """The caption the model sees for this sample (trigger, shuffle, dropout applied)."""
    if sample.drop_caption:
        return ""
    caption = item.caption
    if cfg.shuffle_captions:
        caption = shuffle_tags(caption, cfg.keep_tokens, random.Random(sample.variant_seed))
    return with_trigger(caption, trigger_of(item, cfg), cfg.trigger_position)


def pixels_for(item: ImageItem, sample: Sample, cfg: DatasetConfig):
    """The image as a (3, H, W) float tensor in [-1, 1], cropped to its bucket, flipped if drawn."""
    import torch

    try:
        image = load_image(item.path, cover=item.bucket)
    except IMAGE_ERRORS as e:
        raise DatasetError(f"{item.path} could not be decoded ({e}); remove it from dataset.data_dir or save it "
                           "again.") from e
    image = fit_to_bucket(image, item.bucket, cfg.crop, random.Random(sample.variant_seed))
    if sample.flip:
        image = ImageOps.mirror(image)
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
