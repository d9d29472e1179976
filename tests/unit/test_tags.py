"""Bulk tag editing: each edit on a caption, the preview writes nothing, the save goes through the writer and
refuses stale previews, undo puts back the previous text (and removes captions the save created)."""

import pytest

from loramix.core.errors import DatasetError
from loramix.core.writer import WriteRefused
from tests.conftest import make_folder
from trainers.tags import TagEdit, edit_caption, plan_edits, save_changes, undo_last


@pytest.mark.parametrize("caption, edits, expected", [
    ("a, b", [TagEdit("add", "ohwx")], "a, b, ohwx"),
    ("a, b", [TagEdit("add", "ohwx", first=True)], "ohwx, a, b"),
    ("a, OHWX", [TagEdit("add", "ohwx", first=True)], "a, OHWX"),  # there already (as kohya counts: lower-cased)
    ("", [TagEdit("add", "ohwx")], "ohwx"),
    ("a, b, A , c", [TagEdit("remove", "a")], "b, c"),
    ("1girl, solo, woman", [TagEdit("rename", "1girl", "woman")], "woman, solo"),
    ("1girl, solo", [TagEdit("rename", "1girl", "1woman")], "1woman, solo"),
    ("a girl in a red dress, girlish", [TagEdit("replace", "girl", "woman")], "a woman in a red dress, girlish"),
    ("a, b, a, B", [TagEdit("dedupe")], "a, b"),
    ("c, A, b", [TagEdit("sort")], "A, b, c"),
    ("a, ohwx, b, ohwx", [TagEdit("trigger", "ohwx")], "ohwx, a, b"),
    ("b, a", [TagEdit("sort"), TagEdit("trigger", "t")], "t, a, b"),  # in order given
])
def test_each_edit(caption, edits, expected):
    assert edit_caption(caption, edits) == expected


def test_bad_edits_are_sentences():
    with pytest.raises(DatasetError, match="give the tag"):
        TagEdit("add", " ")
    with pytest.raises(DatasetError, match="one tag at a time"):
        TagEdit("add", "a, b")
    with pytest.raises(DatasetError, match="not one of"):
        TagEdit("explode", "x")


def _captions(folder):
    return {p.name: p.read_text() for p in sorted(folder.glob("*.txt"))}


def test_preview_writes_nothing_then_save_and_undo(tmp_path):
    data = make_folder(tmp_path / "data", n=3)
    (data / "img2.txt").unlink()  # one image without a caption file
    before = _captions(data)
    changes = plan_edits(str(data), ".txt", [TagEdit("add", "ohwx", first=True)])
    assert _captions(data) == before
    assert [(c.image, c.after) for c in changes] == [
        ("img0.png", "ohwx, red stripes, blue circle, picture 0"),
        ("img1.png", "ohwx, red stripes, blue circle, picture 1"), ("img2.png", "ohwx")]
    save_changes(str(data), ".txt", changes)
    assert (data / "img2.txt").read_text() == "ohwx\n"
    assert (data / "img0.txt").read_text().startswith("ohwx, red stripes")
    assert undo_last(str(data)) == ["img0.png", "img1.png", "img2.png"]
    assert _captions(data) == before  # img2.txt is gone again
    with pytest.raises(DatasetError, match="nothing to undo"):
        undo_last(str(data))


def test_only_selected_images_change(tmp_path):
    data = make_folder(tmp_path / "data", n=3)
    changes = plan_edits(str(data), ".txt", [TagEdit("remove", "blue circle")], only=["img1.png"])
    assert [c.image for c in changes] == ["img1.png"]


def test_save_refuses_a_caption_changed_since_the_preview(tmp_path):
    data = make_folder(tmp_path / "data", n=2)
    changes = plan_edits(str(data), ".txt", [TagEdit("sort")])
    (data / "img1.txt").write_text("edited meanwhile\n")
    with pytest.raises(DatasetError, match="changed since the preview"):
        save_changes(str(data), ".txt", changes)
    assert (data / "img0.txt").read_text() == "red stripes, blue circle, picture 0\n"  # nothing written
    assert not (data / ".loramix-tags-undo.json").exists()


def test_save_never_writes_through_a_link_out_of_the_folder(tmp_path):
    data = make_folder(tmp_path / "data", n=1)
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    (data / "img0.txt").unlink()
    (data / "img0.txt").symlink_to(outside)
    changes = plan_edits(str(data), ".txt", [TagEdit("add", "ohwx")])
    with pytest.raises(WriteRefused):
        save_changes(str(data), ".txt", changes)
    assert outside.read_text() == "precious\n"
    assert not (data / ".loramix-tags-undo.json").exists()  # refused before anything was written
