"""`loramix tags` and `loramix caption` as a user runs them: edits in the order given, a dry run writes nothing,
undo puts the captions back; captioning an uncaptioned folder with a tiny offline captioner."""

from __future__ import annotations

from loramix.cli import main
from loramix.embedded.tiny import build_tiny_captioner
from tests.conftest import make_folder


def _texts(folder):
    return {p.name: p.read_text() for p in sorted(folder.glob("*.txt"))}


def test_tags_dry_run_save_and_undo(tmp_path, capsys):
    data = make_folder(tmp_path / "data", n=2)
    before = _texts(data)
    assert main(["tags", str(data), "--remove", "blue circle", "--add", "ohwx", "--first", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "+ ohwx, red stripes, picture 0" in out and "2 captions would change" in out
    assert _texts(data) == before
    assert main(["tags", str(data), "--sort", "--trigger", "ohwx", "--only", "img1.png"]) == 0
    assert (data / "img1.txt").read_text() == "ohwx, blue circle, picture 1, red stripes\n"
    assert (data / "img0.txt").read_text() == before["img0.txt"]
    assert main(["tags", str(data), "--undo"]) == 0
    assert _texts(data) == before


def test_tags_errors_are_sentences(tmp_path, capsys):
    data = make_folder(tmp_path / "data", n=1)
    assert main(["tags", str(data)]) == 2
    assert "choose at least one edit" in capsys.readouterr().err
    assert main(["tags", str(data), "--undo"]) == 2
    assert "nothing to undo" in capsys.readouterr().err


def test_caption_command_captions_an_uncaptioned_folder(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = build_tiny_captioner(tmp_path / "captioner", "blip")
    data = make_folder(tmp_path / "data", n=3, captions=False)
    (data / "img0.txt").write_text("mine\n")
    assert main(["caption", str(data), "--model", str(model), "--max-new-tokens", "5", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "Captioned 2 images" in err and "1 skipped" in err
    assert (data / "img0.txt").read_text() == "mine\n"
    assert (data / "img1.txt").read_text().strip() and (data / "img2.txt").read_text().strip()
    assert main(["caption", str(data), "--model", "nobody/none", "--mode", "replace"]) == 2
    err = capsys.readouterr().err
    assert "hf download nobody/none" in err and "Traceback" not in err
