import logging
import random

import numpy as np
import pytest
from PIL import Image

from loramix.core.config import DatasetConfig
from loramix.core.errors import DatasetError
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


def test_trigger_position_end_puts_the_trigger_last_once(tmp_path):
    assert ds.with_trigger("a cat", "sks", "end") == "a cat, sks"
    assert ds.with_trigger("a cat, sks", "sks", "end") == "a cat, sks"
    assert ds.with_trigger("", "sks", "end") == "sks"
    make_folder(tmp_path, n=1)
    c = cfg(tmp_path, trigger_word="zxstyle", trigger_position="end", shuffle_captions=True)
    item = ds.scan_folder(c)[0]
    for seed in range(5):  # shuffled tags, the trigger still last
        caption = ds.caption_for(item, ds.Sample(0, False, False, seed), c)
        assert caption.endswith(", zxstyle") and caption.count("zxstyle") == 1


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


# ---- issue 12: limits, warnings, decoding --------------------------------------------------
def png_header_only(path, width, height):
    """A PNG whose header claims width x height but holds no pixels: a size probe must not need them."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_scan_reads_sizes_from_headers_and_decodes_nothing(tmp_path, monkeypatch):
    from PIL import ImageFile

    make_folder(tmp_path, n=2)
    draw_image(5, (80, 48)).save(tmp_path / "photo.jpg")
    draw_image(6, (48, 80)).save(tmp_path / "web.webp")
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or real_load(self))
    items = ds.scan_folder(cfg(tmp_path))
    assert {i.path.name: i.size for i in items} == {"img0.png": (64, 64), "img1.png": (64, 64),
                                                    "photo.jpg": (80, 48), "web.webp": (48, 80)}
    assert decoded == []


def test_images_over_the_pixel_cap_are_refused_by_header_with_a_sentence(tmp_path, caplog):
    make_folder(tmp_path, n=1)
    png_header_only(tmp_path / "huge.png", 12000, 12000)  # the audit's 12000x12000: no decode, no 1.3 GB
    png_header_only(tmp_path / "bomb.png", 20000, 20000)  # beyond PIL's own decompression-bomb limit
    c = cfg(tmp_path)
    with caplog.at_level(logging.WARNING):
        report = ds.scan_report(c)
    assert [i.path.name for i in report.items] == ["img0.png"]
    huge = next(w for w in report.warnings if "huge.png" in w)
    assert "12000x12000 is 144,000,000 pixels, over dataset.max_image_pixels (64,000,000)" in huge
    assert any("bomb.png" in w and "dataset.max_image_pixels" in w for w in report.warnings)
    assert huge in caplog.text  # logged as well as returned
    c.max_image_pixels = 5000  # 64x64 = 4096 pixels is under this cap
    assert len(ds.scan_folder(c)) == 1
    c.max_image_pixels = 4095
    with pytest.raises(DatasetError, match="3 image files but none could be read"):
        ds.scan_folder(c)


def test_large_images_are_downscaled_while_read(tmp_path):
    big = draw_image(3, (1024, 768))
    big.save(tmp_path / "big.png")
    big.save(tmp_path / "big.jpg", quality=95)
    for name in ("big.png", "big.jpg"):
        small = ds.load_image(tmp_path / name, cover=(64, 64))
        assert 128 <= min(small.size) < 256 and small.size[0] > small.size[1], (name, small.size)
    c = cfg(tmp_path)
    items = ds.assign_buckets(ds.scan_folder(c), c)
    for item in items:
        fast = ds.pixels_for(item, ds.Sample(0, False, False, 0), c)
        full = ds.fit_to_bucket(ds.load_image(item.path), item.bucket, "center", random.Random(0))
        full = np.asarray(full, dtype=np.float32) / 127.5 - 1.0
        assert fast.shape[1:] == full.shape[:2]
        assert float(np.abs(fast.permute(1, 2, 0).numpy() - full).mean()) < 0.05, item.path.name


def test_tiny_images_are_warned_about_naming_the_file(tmp_path):
    make_folder(tmp_path, n=1)
    Image.new("RGB", (1, 1), (9, 9, 9)).save(tmp_path / "dot.png")
    report = ds.scan_report(cfg(tmp_path))  # resolution 64: smallest bucket side 64, warn below 32
    assert len(report.items) == 2
    assert report.warnings == [f"{tmp_path / 'dot.png'} is only 1x1 pixels, less than 32 (half the smallest bucket "
                               "side); it will be upscaled and look blurry. Use a larger image."]
    assert ds.smallest_bucket_side(cfg(tmp_path, enable_bucket=False)) == 64
    assert ds.smallest_bucket_side(DatasetConfig(resolution=512)) == 256


def test_non_utf8_captions_use_a_stated_fallback_and_warn(tmp_path):
    make_folder(tmp_path, n=2)
    (tmp_path / "img0.txt").write_bytes("caf\xe9 au lait, \x93quoted\x94".encode("latin-1"))
    (tmp_path / "img1.txt").write_bytes("\ufeffna\u00efve".encode())  # UTF-8 with a BOM: no warning
    report = ds.scan_report(cfg(tmp_path))
    captions = {i.path.name: i.caption for i in report.items}
    assert captions == {"img0.png": "café au lait, “quoted”", "img1.png": "naïve"}
    assert len(report.warnings) == 1
    assert report.warnings[0].startswith(f"{tmp_path / 'img0.txt'} is not UTF-8 text; read it as cp1252")
    assert ds.decode_caption(b"\x81\xe9") == ("\x81é", "latin-1")  # bytes cp1252 leaves undefined


def test_probe_catches_image_errors_only(tmp_path, monkeypatch):
    make_folder(tmp_path, n=1)

    def bug(*a, **k):
        raise RuntimeError("a bug in loramix, not a bad image")

    monkeypatch.setattr(ds.Image, "open", bug)
    with pytest.raises(RuntimeError, match="a bug in loramix"):
        ds.scan_folder(cfg(tmp_path))


def test_a_file_that_fails_to_decode_later_is_named(tmp_path):
    make_folder(tmp_path, n=1)
    full = tmp_path / "photo.jpg"
    draw_image(1, (64, 64)).save(full, quality=95)
    full.write_bytes(full.read_bytes()[: len(full.read_bytes()) * 2 // 3])  # the header survives, not the pixels
    c = cfg(tmp_path)
    items = ds.assign_buckets(ds.scan_folder(c), c)
    broken = next(i for i in items if i.path.name == "photo.jpg")
    with pytest.raises(DatasetError, match=r"photo.jpg could not be decoded .*remove it from dataset.data_dir"):
        ds.pixels_for(broken, ds.Sample(0, False, False, 0), c)


# ---- options that must do what they say -----------------------------------------------------
def test_flip_mirrors_the_pixels(tmp_path):
    make_folder(tmp_path, n=1, sizes=[(96, 64)])
    c = cfg(tmp_path, flip_aug=True)
    item = ds.assign_buckets(ds.scan_folder(c), c)[0]
    plain = ds.pixels_for(item, ds.Sample(0, False, False, 0), c)
    flipped = ds.pixels_for(item, ds.Sample(0, True, False, 0), c)
    assert not torch_equal(plain, flipped)
    assert torch_equal(flipped, plain.flip(-1))  # left-right mirror of the same crop


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def test_caption_shuffle_respects_keep_tokens_in_caption_for(tmp_path):
    make_folder(tmp_path, n=1, captions=False)
    (tmp_path / "img0.txt").write_text("zxstyle, portrait, red, blue, green, circle, square")
    c = cfg(tmp_path, shuffle_captions=True, keep_tokens=2)
    item = ds.scan_folder(c)[0]
    seen = {ds.caption_for(item, ds.Sample(0, False, False, seed), c) for seed in range(30)}
    assert len(seen) > 5  # it does shuffle
    assert all(s.startswith("zxstyle, portrait, ") for s in seen), seen
    assert all(sorted(s.split(", ")) == sorted(item.caption.split(", ")) for s in seen)
    c.keep_tokens = 0
    firsts = {ds.caption_for(item, ds.Sample(0, False, False, seed), c).split(", ")[0] for seed in range(30)}
    assert len(firsts) > 1  # without keep_tokens the first tag moves too


# ---- regularisation images (dataset.reg_data_dir), kohya's DreamBooth balancing -------------------
def _reg_setup(tmp_path, n_train=3, train_repeats=2, n_reg=4, **kw):
    make_folder(tmp_path / "train", n=n_train)
    make_folder(tmp_path / "reg", n=n_reg, prefix="reg")
    return cfg(tmp_path / "train", repeats=train_repeats, reg_data_dir=str(tmp_path / "reg"), **kw)


def test_reg_images_are_balanced_to_the_training_samples_as_kohya_does(tmp_path):
    c = _reg_setup(tmp_path, n_train=3, train_repeats=2, n_reg=4)  # 6 training samples, 4 reg images
    items = ds.scan_report(c).items
    train, reg = [i for i in items if not i.is_reg], [i for i in items if i.is_reg]
    assert len(train) == 3 and len(reg) == 4
    # kohya: all 4 once (n = 4), then one more repeat each from the first until n = 6
    assert [i.repeats for i in reg] == [2, 2, 1, 1]
    assert sum(i.repeats for i in reg) == sum(i.repeats for i in train)
    batches = ds.epoch_batches(items, c, global_batch=2, seed=0, epoch=0)
    drawn = [items[s.index].is_reg for b in batches for s in b]
    assert drawn.count(True) == drawn.count(False) == 6


def test_surplus_reg_images_are_left_out_with_a_warning(tmp_path):
    c = _reg_setup(tmp_path, n_train=2, train_repeats=1, n_reg=5)
    report = ds.scan_report(c)
    reg = [i for i in report.items if i.is_reg]
    assert [i.path.name for i in reg] == ["reg0.png", "reg1.png"] and [i.repeats for i in reg] == [1, 1]
    assert any("dataset.reg_data_dir: only 2 of its 5 images are used" in w for w in report.warnings)


def test_reg_captions_get_no_trigger_word_and_no_tag_frequency(tmp_path):
    c = _reg_setup(tmp_path, trigger_word="pstl")
    items = ds.scan_report(c).items
    sample = ds.Sample(0, False, False, 0)
    captions = {i.is_reg: ds.caption_for(i, sample, c) for i in items}
    assert captions[False].startswith("pstl, ") and not captions[True].startswith("pstl")
    assert list(ds.tag_frequency(items)) == ["2_train"]


def test_reg_folder_errors_name_the_field(tmp_path):
    make_folder(tmp_path / "train", n=2)
    with pytest.raises(DatasetError, match=r"^dataset.reg_data_dir: .*missing.* is not a folder"):
        ds.scan_report(cfg(tmp_path / "train", reg_data_dir=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"^dataset.reg_data_dir: .*empty has no image files"):
        ds.scan_report(cfg(tmp_path / "train", reg_data_dir=str(tmp_path / "empty")))
    with pytest.raises(DatasetError, match=r"^dataset.reg_data_dir: .*img0.png is also a training image"):
        ds.scan_report(cfg(tmp_path / "train", reg_data_dir=str(tmp_path / "train")))
