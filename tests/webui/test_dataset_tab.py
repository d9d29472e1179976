"""The Dataset tab's handlers without a browser: the report of a folder, captioning as a queued job with the tiny
captioner, bulk tag preview / save / undo changing the tag table, and confinement under --listen."""

import pytest

from loramix.embedded.tiny import build_tiny_captioner
from tests.conftest import make_folder
from webui import dataset_tab as dt
from webui.state import AppState


@pytest.fixture
def state(tmp_path):
    return AppState.create(tmp_path / "outputs")


def test_caption_then_add_a_trigger_and_the_tag_table_changes(tmp_path, state):
    model = build_tiny_captioner(tmp_path / "blip", "blip")
    data = make_folder(tmp_path / "data", n=3, captions=False)
    summary, tags, images, dups, thumbs = dt.show_report(state, str(data), ".txt", 64)
    assert "3 images have no caption" in summary and tags.empty and len(thumbs) == 3
    assert list(images["bucket"]) == ["64x64"] * 3
    message, job_id = dt.start_caption(state, str(data), ".txt", str(model), "skip", "", 5)
    assert job_id is not None, message
    job = state.jobs.wait(state.jobs.get(job_id), timeout=120)
    assert job.status == "done", job.error
    assert "3/3 images" in dt.caption_progress(state, job_id)
    summary, tags, *_ = dt.show_report(state, str(data), ".txt", 64)
    assert "Every image has a caption" in summary and "ohwx" not in set(tags["tag"])
    frame, plan, message = dt.preview_tags(state, str(data), ".txt", "add", "ohwx", "", True, "")
    assert len(plan) == 3 and all(after.startswith("ohwx") for after in frame["after"])
    assert "ohwx" not in set(dt.show_report(state, str(data), ".txt", 64)[1]["tag"])  # a preview writes nothing
    plan, message = dt.save_tags(state, str(data), ".txt", plan)
    assert plan == [] and message.startswith("Saved 3 captions")
    tags = dt.show_report(state, str(data), ".txt", 64)[1]
    assert tags[tags["tag"] == "ohwx"][["count", "images"]].values.tolist() == [[3, 3]]
    assert dt.save_tags(state, str(data), ".txt", plan)[1].startswith("⚠ Preview an edit first")
    assert dt.undo_tags(state, str(data)) == "Put back 3 captions."
    assert "ohwx" not in set(dt.show_report(state, str(data), ".txt", 64)[1]["tag"])
    _, _, images, dups, _ = dt.show_report(state, str(data), ".txt", 64)
    details = dt.image_details(images, dups, "img1.png")
    assert "64x64 → bucket 64x64" in details and "near-duplicate of" in details
    assert details.endswith(images[images["image"] == "img1.png"]["caption"].iloc[0])


def test_errors_are_sentences(tmp_path, state):
    data = make_folder(tmp_path / "data", n=1)
    assert dt.preview_tags(state, str(data), ".txt", "add", "", "", True, "")[2].startswith("⚠ Tag edit add")
    assert dt.show_report(state, str(tmp_path / "nope"), ".txt", 64)[0].startswith("⚠ ")
    message, job_id = dt.start_caption(state, str(data), ".txt", "", "skip", "", 5)
    assert job_id is None and "caption.model" in message


def test_listen_confines_folder_and_captioner(tmp_path):
    state = AppState.create(tmp_path / "outputs", listen=True, data_roots=[tmp_path / "allowed"], allow_hub=False)
    outside = make_folder(tmp_path / "outside", n=1)
    inside = make_folder(tmp_path / "allowed" / "data", n=1)
    assert dt.show_report(state, str(outside), ".txt", 64)[0].startswith("⚠ dataset.data_dir")
    assert dt.preview_tags(state, str(outside), ".txt", "sort", "", "", False, "")[2].startswith("⚠ dataset.data_dir")
    message, job_id = dt.start_caption(state, str(inside), ".txt", "someone/captioner", "skip", "", 5)
    assert job_id is None and "caption.model" in message


def test_masks_from_the_tab_tint_the_thumbnails(tmp_path, state):
    import numpy as np
    from PIL import Image

    from loramix.embedded.tiny import build_tiny_clipseg

    model = build_tiny_clipseg(tmp_path / "clipseg")
    data = make_folder(tmp_path / "data", n=2)
    plain = np.asarray(dt.masked_thumbnail(data / "img0.png"), dtype=np.int16)
    assert dt.masks_for_folder(state, str(data), "cat", str(model), 0.5, False).startswith("Wrote 2 masks")
    assert dt.masks_for_folder(state, str(data), "cat", str(model), 0, False).startswith("Wrote 0 masks; kept 2")
    Image.new("L", (64, 64), 0).save(data / "img0.mask.png")  # all left out: the whole thumbnail is tinted
    tinted = np.asarray(dt.masked_thumbnail(data / "img0.png"), dtype=np.int16)
    assert (tinted[..., 0] - tinted[..., 2]).mean() > (plain[..., 0] - plain[..., 2]).mean() + 50
    assert dt.show_report(state, str(data), ".txt", 64)[0].startswith("2 images")  # masks are not images
