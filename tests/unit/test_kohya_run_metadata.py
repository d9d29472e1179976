"""The run metadata A1111 shows (tags, "Resolution", epochs, batch sizes) computed as kohya sd-scripts computes it.

Each peer formula below is retyped from kohya-ss/sd-scripts (commit 48d368f, 2026-02-16); the source is named.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

from loramix.core.config import load_config
from loramix.formats.families import ModelFamily
from trainers import dataset as ds
from trainers.checkpoint import adapter_metadata
from trainers.lora_trainer import LoraTrainer


def kohya_set_tag_frequency(captions: list[str]) -> dict[str, int]:
    """kohya sd-scripts `library/train_util.py`, `BaseDataset.set_tag_frequency`, for one folder (retyped)."""
    frequency_for_dir: dict[str, int] = {}
    for caption in captions:
        for tag in caption.split(","):
            tag = tag.strip()
            if tag:
                tag = tag.lower()
                frequency = frequency_for_dir.get(tag, 0)
                frequency_for_dir[tag] = frequency + 1
    return frequency_for_dir


CAPTIONS = ["Red Stripes, blue circle, red stripes", "red stripes,  ,Blue Circle", "BLUE circle, a, a, a", ""]


def test_count_tags_equals_kohya_set_tag_frequency():
    assert ds.count_tags(CAPTIONS) == kohya_set_tag_frequency(CAPTIONS)
    assert ds.count_tags(CAPTIONS)["red stripes"] == 3  # lower-cased, and twice in one caption counts 2
    assert ds.count_tags(CAPTIONS)["a"] == 3


def _item(folder, caption, size=(64, 64), bucket=(64, 64), repeats=1, reg=False):
    return ds.ImageItem(Path(f"/x/{folder}/{caption[:3]}.png"), caption, repeats, folder, size, bucket, reg)


def test_tag_frequency_per_folder_skips_regularisation_images():
    items = [_item("2_a", c) for c in CAPTIONS] + [_item("1_b", "Tag"), _item("1_reg", "tag", reg=True)]
    assert ds.tag_frequency(items) == {"2_a": kohya_set_tag_frequency(CAPTIONS), "1_b": {"tag": 1}}


def kohya_bucket_info(resos, buckets, img_ar_errors):
    """kohya `library/train_util.py`, `BaseDataset.make_buckets`, the `bucket_info` part (retyped): `buckets[i]` is
    the list of image keys in bucket `resos[i]` with repeats, `img_ar_errors` one signed error per image."""
    bucket_info = {"buckets": {}}
    for i, (reso, bucket) in enumerate(zip(resos, buckets)):
        count = len(bucket)
        if count > 0:
            bucket_info["buckets"][i] = {"resolution": reso, "count": len(bucket)}
    mean_img_ar_error = 0 if len(img_ar_errors) == 0 else sum(abs(e) for e in img_ar_errors) / len(img_ar_errors)
    bucket_info["mean_img_ar_error"] = mean_img_ar_error
    return bucket_info


def test_bucket_info_is_kohyas_structure_and_counts():
    cfg = load_config(overrides=["dataset.resolution=128", "dataset.enable_bucket=true"]).dataset
    resos = ds.make_buckets(cfg.resolution, cfg.min_bucket_reso, cfg.max_bucket_reso)
    sizes = [(300, 200), (200, 300), (100, 100), (640, 480)]
    items = ds.assign_buckets([_item("3_a", f"c{i}", size=s, repeats=3 if i else 1) for i, s in enumerate(sizes)], cfg)
    items.append(ds.replace(items[0], is_reg=True, repeats=2))  # kohya buckets regularisation images too
    buckets = [[i.path for i in items if i.bucket == r for _ in range(i.repeats)] for r in resos]
    # kohya's select_bucket: ar_error = bucket w/h − image w/h
    errors = [i.bucket[0] / i.bucket[1] - i.size[0] / i.size[1] for i in items]
    ours = ds.bucket_info(items, cfg)
    assert json.dumps(ours) == json.dumps(kohya_bucket_info([list(r) for r in resos], buckets, errors))
    assert sum(b["count"] for b in ours["buckets"].values()) == 1 + 3 * 3 + 2
    off = load_config(overrides=["dataset.enable_bucket=false"]).dataset
    assert ds.bucket_info(items, off) is None  # kohya leaves bucket_info None without buckets: "null"


def test_metadata_carries_kohyas_run_keys():
    cfg = load_config(overrides=["train.batch_size=2", "train.gradient_accumulation_steps=3"])
    meta = adapter_metadata(cfg, ModelFamily(), step=10, epoch=2, num_images=4, tag_frequency={}, started_at=0.0,
                            bucket_info={"buckets": {}, "mean_img_ar_error": 0}, batches_per_epoch=7,
                            num_epochs=5, num_processes=2, session_id=1234)
    # kohya train_network.py: total_batch_size = train_batch_size * num_processes * gradient_accumulation_steps
    assert meta["ss_total_batch_size"] == str(2 * 2 * 3)
    assert meta["ss_num_batches_per_epoch"] == "7" and meta["ss_num_epochs"] == "5"
    assert meta["ss_epoch"] == "2" and meta["ss_session_id"] == "1234"
    assert json.loads(meta["ss_bucket_info"]) == {"buckets": {}, "mean_img_ar_error": 0}
    assert meta["ss_clip_skip"] == "None"  # kohya: str(args.clip_skip), None when not given
    assert all(isinstance(v, str) for v in meta.values())


def kohya_ss_epoch(step: int, steps_per_epoch: int) -> str:
    """kohya `train_network.py`: `for epoch in range(...): metadata["ss_epoch"] = str(epoch + 1)` before the
    epoch's steps, so a save after optimizer step `step` (1-based) carries the epoch that step belongs to."""
    epoch = (step - 1) // steps_per_epoch
    return str(epoch + 1)


def test_trainer_writes_ss_epoch_one_based_as_kohya(tmp_path):
    cfg = load_config(overrides=[f"dataset.data_dir={tmp_path}", f"output.output_dir={tmp_path / 'out'}",
                                 "train.gradient_accumulation_steps=2"])
    trainer = LoraTrainer(cfg)
    trainer.trained, trainer.family, trainer.items, trainer.reg_found = {}, ModelFamily(), [], []
    trainer.num_train, trainer.tag_frequency = 4, {}
    trainer.acc = SimpleNamespace(num_processes=1)
    trainer.m = SimpleNamespace(prediction_type="epsilon")  # the craft keys read the loaded model's prediction
    trainer.micro_per_epoch = 8  # 4 optimizer steps per epoch
    trainer.total_steps = 10
    for step in (1, 3, 4, 5, 8, 9, 10):
        meta = trainer.adapter(step).metadata
        assert meta["ss_epoch"] == kohya_ss_epoch(step, 4), step
    assert meta["ss_num_epochs"] == str(math.ceil(10 / 4)) and meta["ss_num_batches_per_epoch"] == "8"
    assert meta["ss_session_id"] == str(trainer.session_id) and 0 <= trainer.session_id <= 2**32
