import logging
import random

import numpy as np
import pytest
from PIL import Image

from loramix.config import DatasetConfig
from loramix.errors import DatasetError
from tests.conftest import draw_image, make_folder
from trainers import dataset as ds


def cfg(root, **kw) -> DatasetConfig:
    return DatasetConfig(data_dir=str(root), resolution=64, **kw)


def test_repeats_captions_and_folder_default_caption(tmp_path):
    make_folder(tmp_path, n=3)  # root images, captioned
    sub = tmp_path / "10_my_style"
    make_folder(sub, n=2, captions=False)
    (tmp_path / "notes").mkdir()  # no images: silently ignored
    items = ds.scan_folder(cfg(tmp_path, repeats=2))
    assert len(items) == 5
    root_items = [i for i in items if i.path.parent == tmp_path]
    sub_items = [i for i in items if i.path.parent == sub]
    assert {i.repeats for i in root_items} == {2} and {i.repeats for i in sub_items} == {10}
    assert root_items[0].caption == "red stripes, blue circle, picture 0"
    assert {i.caption for i in sub_items} == {"my style"}  # folder name is the default caption
    freq = ds.tag_frequency(items)
    assert freq["10_my_style"] == {"my style": 2}
    assert freq[f"2_{tmp_path.name}"]["red stripes"] == 3


def test_samples_per_epoch_counts_repeats(tmp_path):
    make_folder(tmp_path, n=3)
    make_folder(tmp_path / "4_x", n=2, captions=False)
    items = ds.assign_buckets(ds.scan_folder(cfg(tmp_path)), cfg(tmp_path))
    batches = ds.epoch_batches(items, cfg(tmp_path), global_batch=1, seed=1, epoch=0)
    counts = np.bincount([s.index for b in batches for s in b], minlength=len(items))
    assert sorted(counts.tolist()) == [1, 1, 1, 4, 4]
    assert ds.batches_per_epoch(items, 1) == 11


def test_unrepeated_subfolder_is_warned_about(tmp_path, caplog):
    make_folder(tmp_path, n=1)
    make_folder(tmp_path / "extra", n=1)
    with caplog.at_level(logging.WARNING):
        items = ds.scan_folder(cfg(tmp_path))
    assert len(items) == 1
    assert "name it N_name" in caplog.text and "extra" in caplog.text


def test_trigger_word_and_shuffle_keep_tokens():
    assert ds.with_trigger("a cat", "sks") == "sks, a cat"
    assert ds.with_trigger("sks, a cat", "sks") == "sks, a cat"
    assert ds.with_trigger("", "sks") == "sks"
    caption = "first, second, c, d, e, f, g"
    seen = {ds.shuffle_tags(caption, 2, random.Random(i)) for i in range(20)}
    assert len(seen) > 1
    assert all(s.startswith("first, second, ") for s in seen)
    assert all(sorted(s.split(", ")) == sorted(caption.split(", ")) for s in seen)


def test_caption_for_applies_dropout_and_trigger(tmp_path):
    make_folder(tmp_path, n=1)
    c = cfg(tmp_path, trigger_word="zxstyle")
    item = ds.scan_folder(c)[0]
    assert ds.caption_for(item, ds.Sample(0, False, False, 0), c).startswith("zxstyle, red stripes")
    assert ds.caption_for(item, ds.Sample(0, False, True, 0), c) == ""


def test_corrupt_and_truncated_images_are_skipped_with_one_warning(tmp_path, caplog):
    make_folder(tmp_path, n=2)
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    good = tmp_path / "img0.png"
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with caplog.at_level(logging.WARNING):
        items = ds.scan_folder(cfg(tmp_path))
    assert sorted(i.path.name for i in items) == ["img0.png", "img1.png"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "broken.jpg" in w]) == 1
    assert len([w for w in warnings if "truncated.png" in w]) == 1


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="has no image files"):
        ds.scan_folder(cfg(tmp_path))
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="1 image files but none could be read"):
        ds.scan_folder(cfg(tmp_path))
    with pytest.raises(DatasetError, match="is not a folder"):
        ds.scan_folder(cfg(tmp_path / "nope"))


def test_image_modes_are_normalised(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red -> white
    rgba.save(tmp_path / "rgba.png")
    assert ds.load_image(tmp_path / "rgba.png").getpixel((0, 0)) == (255, 255, 255)
    draw_image(0).convert("P").save(tmp_path / "pal.png")
    assert ds.load_image(tmp_path / "pal.png").mode == "RGB"
    draw_image(0).convert("L").save(tmp_path / "gray.png")
    assert ds.load_image(tmp_path / "gray.png").mode == "RGB"
    sixteen = Image.fromarray((np.ones((8, 8)) * 65535).astype(np.uint16))
    sixteen.save(tmp_path / "deep.png")
    assert ds.load_image(tmp_path / "deep.png").getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert ds.load_image(tmp_path / "rot.jpg").size == (20, 40)
    items = ds.scan_folder(cfg(tmp_path))
    assert items[0].size == (20, 40)


def test_buckets_respect_budget_and_step():
    buckets = ds.make_buckets(512)
    assert (512, 512) in buckets and (768, 320) in buckets and (320, 768) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in buckets)
    assert ds.bucket_for((1920, 1080), buckets) == (640, 384)
    assert ds.bucket_for((1000, 1000), buckets) == (512, 512)
    assert ds.bucket_for((300, 900), buckets) == (256, 832)  # ratio 0.308 is nearest 1:3


def test_bucketing_groups_batches_and_crops_to_bucket(tmp_path):
    make_folder(tmp_path, n=6, sizes=[(128, 64), (64, 64), (64, 128)])
    c = cfg(tmp_path)
    c.resolution = 128
    items = ds.assign_buckets(ds.scan_folder(c), c)
    assert {i.bucket for i in items} == {(192, 64), (128, 128), (64, 192)}
    for batch in ds.epoch_batches(items, c, global_batch=2, seed=0, epoch=0):
        assert len({items[s.index].bucket for s in batch}) == 1
        pixels = ds.pixels_for(items[batch[0].index], batch[0], c)
        w, h = items[batch[0].index].bucket
        assert pixels.shape == (3, h, w)
        assert -1.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0


def test_epoch_order_is_a_function_of_seed_and_epoch(tmp_path):
    make_folder(tmp_path, n=5)
    c = cfg(tmp_path, flip_aug=True, caption_dropout_rate=0.3)
    items = ds.assign_buckets(ds.scan_folder(c), c)
    a = ds.epoch_batches(items, c, 2, seed=7, epoch=3)
    assert a == ds.epoch_batches(items, c, 2, seed=7, epoch=3)
    assert a != ds.epoch_batches(items, c, 2, seed=7, epoch=4)
    assert all(len(b) == 2 for b in a)  # the short last batch is filled up
    flips = [s.flip for e in range(5) for b in ds.epoch_batches(items, c, 2, 7, e) for s in b]
    assert any(flips) and not all(flips)
    assert not any(s.flip for b in ds.epoch_batches(items, cfg(tmp_path), 2, 7, 0) for s in b)
