"""The WD tagger path on a tiny ONNX model built here whose outputs are fixed probabilities: thresholds are
inclusive and per category, ratings never written, exclusions, underscores (not in emoticons), max tags, the
preprocessing's layout, and the whole captioning job writing tags."""

import math

import numpy as np
import pytest
from PIL import Image

from loramix.core.config import CaptionConfig
from loramix.core.errors import LoramixError
from tests.conftest import make_folder
from trainers.captioner import caption_folder
from trainers.tagger import WDTagger, is_wd_tagger

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

TAGS = [  # (name, category, probability the tiny model gives every image; 0.5 is exact: sigmoid(0))
    ("general", 9, 0.99), ("long_hair", 0, 0.90), ("smile", 0, 0.5), ("blush", 0, 0.34),
    ("^_^", 0, 0.80), ("watermark", 0, 0.95), ("hatsune_miku", 4, 0.9), ("other_girl", 4, 0.5)]


def build_tiny_wd_tagger(folder, tags=TAGS, side=8):
    """model.onnx (NHWC float input; output sigmoid(x·0 + logit(p))) and selected_tags.csv, as the WD repos have."""
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    n = len(tags)
    logits = np.array([math.log(p / (1 - p)) for _, _, p in tags], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "shape"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["mm"]),
         helper.make_node("Add", ["mm", "b"], ["logits"]),
         helper.make_node("Sigmoid", ["logits"], ["output"])],
        "tiny-wd", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", side, side, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", n])],
        [numpy_helper.from_array(np.array([-1, side * side * 3], dtype=np.int64), "shape"),
         numpy_helper.from_array(np.zeros((side * side * 3, n), dtype=np.float32), "w"),
         numpy_helper.from_array(logits, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, folder / "model.onnx")
    rows = ["tag_id,name,category,count"] + [f"{i},{name},{cat},1" for i, (name, cat, _) in enumerate(tags)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    return build_tiny_wd_tagger(tmp_path_factory.mktemp("wd"))


def _tags(folder, **kw):
    tagger = WDTagger(CaptionConfig(data_dir="x", model=str(folder), **kw))
    return tagger.caption([Image.new("RGB", (30, 20), (10, 200, 30))])[0]


def test_thresholds_are_inclusive_per_category_and_ratings_are_never_written(tagger_dir):
    assert _tags(tagger_dir) == "watermark, long hair, hatsune miku, ^_^, smile"  # 0.35 general, 0.85 character
    assert _tags(tagger_dir, general_threshold=0.5, character_threshold=0.5) == \
        "watermark, long hair, hatsune miku, ^_^, smile, other girl"  # exactly at the threshold: kept
    assert _tags(tagger_dir, general_threshold=0.92, character_threshold=0.95) == "watermark"


def test_exclusions_underscores_and_max_tags(tagger_dir):
    assert _tags(tagger_dir, exclude_tags="Watermark, long hair", underscores_to_spaces=False) == \
        "hatsune_miku, ^_^, smile"
    assert _tags(tagger_dir, max_tags=2) == "watermark, long hair"


def test_preprocess_pads_white_to_a_square_in_bgr(tagger_dir):
    tagger = WDTagger(CaptionConfig(data_dir="x", model=str(tagger_dir)))
    arr = tagger.preprocess(Image.new("RGB", (16, 8), (255, 0, 0)))
    assert arr.shape == (8, 8, 3) and arr.dtype == np.float32
    assert arr[4, 4].tolist() == [0.0, 0.0, 255.0]  # red, as BGR, 0-255
    assert arr[0, 4].tolist() == [255.0, 255.0, 255.0]  # the white padding above


def test_a_captioning_job_with_the_tagger_writes_tags(tmp_path, tagger_dir):
    assert is_wd_tagger(str(tagger_dir)) and is_wd_tagger("SmilingWolf/wd-vit-tagger-v3")
    assert not is_wd_tagger("Salesforce/blip-image-captioning-large")
    data = make_folder(tmp_path / "data", n=2, captions=False)
    result = caption_folder(CaptionConfig(data_dir=str(data), model=str(tagger_dir), max_tags=3))
    assert len(result.written) == 2
    assert (data / "img0.txt").read_text() == "watermark, long hair, hatsune miku\n"
    result = caption_folder(CaptionConfig(data_dir=str(data), model=str(tagger_dir), mode="replace",
                                          general_threshold=1.0, character_threshold=1.0))
    assert not result.written and len(result.failed) == 2  # nothing reached a threshold: the files stay
    assert (data / "img0.txt").read_text() == "watermark, long hair, hatsune miku\n"


def test_missing_tagger_is_one_sentence(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LoramixError, match="hf download SmilingWolf/wd-vit-tagger-v3 model.onnx selected_tags.csv"):
        WDTagger(CaptionConfig(data_dir="x", model="SmilingWolf/wd-vit-tagger-v3"))


def test_cli_flags_reach_the_tagger(tmp_path, tagger_dir):
    from loramix.cli import main

    data = make_folder(tmp_path / "data", n=1, captions=False)
    assert main(["caption", str(data), "--model", str(tagger_dir), "--general-threshold", "0.5",
                 "--character-threshold", "0.95", "--exclude-tags", "watermark", "--no-underscores-to-spaces",
                 "--quiet"]) == 0
    assert (data / "img0.txt").read_text() == "long_hair, ^_^, smile\n"
