"""What the set holds: tags counted as kohya's ss_tag_frequency counts them, buckets as training assigns them,
near-duplicates by dHash with an inclusive threshold, uncaptioned images."""

import random

from PIL import Image, ImageDraw

from loramix.core.config import DatasetConfig
from tests.conftest import draw_image
from trainers import dataset as ds
from trainers.dataset_report import DUPLICATE_BITS, dataset_report, dhash, near_duplicates, tag_table


def test_tag_table_counts_like_the_metadata():
    captions = ["Red, blue, red", "red , green", ""]
    table = tag_table(captions)
    assert table == [("red", 3, 2), ("blue", 1, 1), ("green", 1, 1)]
    assert {tag: n for tag, n, _ in table} == ds.count_tags(captions)  # the ss_tag_frequency numbers


def test_near_duplicates_threshold_is_inclusive():
    hashes = {"a": 0, "b": (1 << DUPLICATE_BITS) - 1, "c": (1 << (DUPLICATE_BITS + 1)) - 1, "d": 1}
    pairs = near_duplicates(hashes)
    assert ("a", "d", 1) == pairs[0]
    assert ("a", "b", DUPLICATE_BITS) in pairs  # exactly at the threshold: reported
    assert not any({"a", "c"} == {p[0], p[1]} for p in pairs)  # one bit over: not


def _noise(seed, size=(96, 96)):
    rng = random.Random(seed)
    return Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))


def _scene(seed, size=(128, 96)):
    rng = random.Random(seed)
    im = Image.new("RGB", size, (rng.randrange(256),) * 3)
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        draw.ellipse([x, y, x + 40, y + 30], fill=tuple(rng.randrange(256) for _ in range(3)))
    return im


def test_dhash_finds_a_resaved_copy_and_not_a_different_picture(tmp_path):
    original = _scene(3)
    original.resize((200, 150)).save(tmp_path / "copy.jpg", quality=70)
    copy = Image.open(tmp_path / "copy.jpg")
    assert (dhash(original) ^ dhash(copy)).bit_count() <= 2
    assert (dhash(original) ^ dhash(_scene(9))).bit_count() > 16
    stripes = draw_image(3, (128, 96))  # fine diagonal stripes: the box filter keeps them from aliasing
    stripes.resize((200, 150)).save(tmp_path / "stripes.jpg", quality=70)
    assert (dhash(stripes) ^ dhash(Image.open(tmp_path / "stripes.jpg"))).bit_count() <= DUPLICATE_BITS


def test_report_on_a_folder(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _noise(1, (256, 128)).save(data / "wide.png")
    (data / "wide.txt").write_text("ohwx, Sky, sky\n")
    _noise(1, (256, 128)).resize((512, 256)).save(data / "wide-big.jpg", quality=90)
    (data / "wide-big.txt").write_text("  \n")  # empty: uncaptioned
    _noise(7, (128, 256)).save(data / "tall.png")
    report = dataset_report(str(data), ".txt", resolution=128)
    assert report.uncaptioned == ["tall.png", "wide-big.jpg"]
    assert [(r.image, r.width, r.height, r.bucket) for r in report.images] == [
        ("tall.png", 128, 256, (64, 192)), ("wide-big.jpg", 512, 256, (192, 64)), ("wide.png", 256, 128, (192, 64))]
    cfg = DatasetConfig(data_dir=str(data), resolution=128)
    assert {r.bucket for r in report.images} == {i.bucket for i in ds.scan_report(cfg).items}
    assert report.buckets == [((192, 64), 2), ((64, 192), 1)]
    assert report.tags[0] == ("sky", 2, 1) and ("ohwx", 1, 1) in report.tags
    assert [(a, b) for a, b, _ in report.duplicates] == [("wide-big.jpg", "wide.png")]
    assert "2 images have no caption" in report.summary() and "1 near-duplicate pairs" in report.summary()
