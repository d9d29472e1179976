"""What an image folder holds, before training on it: tags, sizes and buckets, near-duplicates, uncaptioned images.

* **Tags** are counted as kohya counts `ss_tag_frequency` (`trainers.dataset.count_tags`: comma-separated,
  stripped, lower-cased, every occurrence), over the captions training reads (a folder's default caption too),
  with the number of images holding each tag beside it.
* **Sizes and buckets** come from the same scan and bucketing the trainer uses, at the resolution asked.
* **Near-duplicates** are pairs whose difference hash (dHash: 9x8 grey box-filtered thumbnail, one bit per
  left/right brightness step, 64 bits) differ in at most `max_distance` bits: a resized, re-saved JPEG copy
  measured 0-2 bits away, unrelated pictures about 30 (the box filter, not LANCZOS, keeps fine stripes from
  aliasing into noise).
* **Uncaptioned** images have no caption file, or an empty one (training would use the folder's name, or nothing).

Nothing here writes a file.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from loramix.core.config import DatasetConfig
from loramix.core.paths import caption_extension
from trainers.dataset import IMAGE_ERRORS, count_tags, load_image, scan_report

DUPLICATE_BITS = 6  # dHash distance at or below which two images are reported as near-duplicates


@dataclass
class ImageRow:
    image: str  # relative to the folder
    width: int
    height: int
    bucket: tuple[int, int]
    caption: str


@dataclass
class DatasetReport:
    images: list[ImageRow]
    tags: list[tuple[str, int, int]]  # (tag, occurrences, images holding it), most frequent first
    buckets: list[tuple[tuple[int, int], int]]  # (bucket, images), largest group first
    uncaptioned: list[str]
    duplicates: list[tuple[str, str, int]]  # (image, image, bits apart), closest first
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        n = len(self.images)
        parts = [f"{n} images, {len(self.tags)} distinct tags, {len(self.buckets)} bucket(s)."]
        parts.append(f"{len(self.uncaptioned)} images have no caption: {', '.join(self.uncaptioned[:8])}"
                     + ("…" if len(self.uncaptioned) > 8 else "") + "." if self.uncaptioned else
                     "Every image has a caption.")
        parts.append(f"{len(self.duplicates)} near-duplicate pairs (dHash within {DUPLICATE_BITS} bits)"
                     + (f", the closest {self.duplicates[0][0]} and {self.duplicates[0][1]}." if self.duplicates
                        else "."))
        return " ".join(parts)


def tag_table(captions: list[str]) -> list[tuple[str, int, int]]:
    """(tag, occurrences as kohya counts them, images holding it), most frequent first, then by name."""
    occurrences = count_tags(captions)
    holding = Counter(tag for caption in captions for tag in set(count_tags([caption])))
    return sorted(((tag, n, holding[tag]) for tag, n in occurrences.items()), key=lambda row: (-row[1], row[0]))


def dhash(image: Image.Image) -> int:
    """The 64-bit difference hash: each bit says whether a pixel of the 9x8 grey thumbnail is brighter than
    its right neighbour."""
    import numpy as np

    small = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = 0
    for bit in (small[:, :-1] > small[:, 1:]).ravel():
        bits = (bits << 1) | int(bit)
    return bits


def near_duplicates(hashes: dict[str, int], max_distance: int = DUPLICATE_BITS) -> list[tuple[str, str, int]]:
    """Every pair of images whose hashes differ in at most `max_distance` bits, closest first."""
    names = sorted(hashes)
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            distance = (hashes[a] ^ hashes[b]).bit_count()
            if distance <= max_distance:
                pairs.append((a, b, distance))
    return sorted(pairs, key=lambda p: (p[2], p[0], p[1]))


def dataset_report(data_dir: str, ext: str = ".txt", resolution: int = 512, enable_bucket: bool = True,
                   min_bucket_reso: int = 0, max_bucket_reso: int = 0,
                   max_distance: int = DUPLICATE_BITS) -> DatasetReport:
    """Scan the folder as training would at `resolution` and report what it holds."""
    ext = caption_extension("dataset.caption_extension", ext or ".txt")
    root = Path(data_dir).expanduser()
    cfg = DatasetConfig(data_dir=str(root), caption_extension=ext, resolution=int(resolution),
                        enable_bucket=enable_bucket, min_bucket_reso=min_bucket_reso, max_bucket_reso=max_bucket_reso)
    scan = scan_report(cfg)
    rows, hashes, warnings = [], {}, list(scan.warnings)
    uncaptioned = []
    for item in scan.items:
        rel = item.path.relative_to(root).as_posix()
        rows.append(ImageRow(rel, item.size[0], item.size[1], item.bucket, item.caption))
        caption_file = item.path.with_suffix(ext)
        if not caption_file.is_file() or not caption_file.read_bytes().strip():
            uncaptioned.append(rel)
        try:
            hashes[rel] = dhash(load_image(item.path, cover=(64, 64)))
        except IMAGE_ERRORS as e:
            warnings.append(f"{rel} could not be decoded for the duplicate check ({e}).")
    buckets = Counter(row.bucket for row in rows)
    return DatasetReport(rows, tag_table([row.caption for row in rows]),
                         sorted(buckets.items(), key=lambda b: (-b[1], b[0])), uncaptioned,
                         near_duplicates(hashes, max_distance), warnings)
