"""Auto-captioning end to end with tiny random-weight BLIP and GIT models built offline (a local tokenizer):
preprocess, generate, post-process, write; the modes never replace a caption unasked; cancel and progress."""

import pytest

from loramix.core.config import CaptionConfig
from loramix.core.errors import ConfigError, LoramixError
from loramix.core.events import CancelToken
from loramix.embedded.tiny import CAPTION_WORDS, build_tiny_captioner
from tests.conftest import draw_image, make_folder
from trainers.captioner import Captioner, caption_folder, merge_caption


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    return build_tiny_captioner(tmp_path_factory.mktemp("blip"), "blip")


@pytest.fixture(scope="module")
def tiny_git(tmp_path_factory):
    return build_tiny_captioner(tmp_path_factory.mktemp("git"), "git")


def _config(folder, model, **kw):
    return CaptionConfig(data_dir=str(folder), model=str(model), max_new_tokens=6, **kw)


@pytest.mark.parametrize("family", ["blip", "git"])
def test_pipeline_writes_a_caption_of_the_models_words(tmp_path, family, request):
    model = request.getfixturevalue(f"tiny_{family}")
    data = make_folder(tmp_path / "data", n=3, captions=False, sizes=[(64, 64), (80, 48)])
    events = []
    result = caption_folder(_config(data, model, batch_size=2), events.append)
    assert sorted(p.name for p in result.written) == ["img0.txt", "img1.txt", "img2.txt"]
    for path in result.written:
        text = path.read_text(encoding="utf-8")
        assert text.endswith("\n") and "[" not in text  # special tokens were dropped
        assert text.split() and set(text.split()) <= set(CAPTION_WORDS)
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == [2, 3] and steps[-1].total == 3
    assert events[0].kind == "start" and events[-1].kind == "log"


def test_prompt_is_cut_from_the_caption(tiny_blip):
    captioner = Captioner(str(tiny_blip), prompt="a picture of", max_new_tokens=4)
    assert captioner.clean("a picture of red cat") == "red cat"
    assert captioner.clean("  red   cat ") == "red cat"


def test_florence2_task_prompt_end_to_end(tmp_path):
    model = build_tiny_captioner(tmp_path / "florence2", "florence2")
    captioner = Captioner(str(model), max_new_tokens=4, min_new_tokens=3)  # random weights end at once otherwise
    assert captioner.prompt == "<MORE_DETAILED_CAPTION>"
    inputs = captioner.processor(images=[draw_image(0)], text=[captioner.prompt], return_tensors="pt")
    prompt_text = captioner.processor.batch_decode(inputs["input_ids"], skip_special_tokens=True)[0]
    assert "Describe with a paragraph" in prompt_text  # the processor expanded the task token
    captions = captioner.caption([draw_image(0), draw_image(1, (80, 48))])
    assert len(captions) == 2 and all(c and "<" not in c for c in captions)


@pytest.mark.parametrize("mode, expected", [
    ("skip", None), ("replace", "new"), ("prepend", "new, old"), ("append", "old, new")])
def test_merge_modes(mode, expected):
    assert merge_caption("old", "new", mode) == expected
    assert merge_caption(None, "new", mode) == "new"
    assert merge_caption("", "new", mode) == "new"


def test_modes_on_disk_never_replace_unasked(tmp_path, tiny_blip):
    data = make_folder(tmp_path / "data", n=2, captions=False)
    (data / "img0.txt").write_text("my own words\n")
    result = caption_folder(_config(data, tiny_blip))  # skip
    assert [p.name for p in result.written] == ["img1.txt"] and result.skipped == 1
    assert (data / "img0.txt").read_text() == "my own words\n"
    first = (data / "img1.txt").read_text().strip()
    caption_folder(_config(data, tiny_blip, mode="append"))
    assert (data / "img0.txt").read_text().startswith("my own words, ")
    assert (data / "img1.txt").read_text().strip() == f"{first}, {first}"  # same weights, same caption
    caption_folder(_config(data, tiny_blip, mode="replace"))
    assert (data / "img1.txt").read_text().strip() == first


def test_skip_refuses_a_caption_that_appears_meanwhile(tmp_path, tiny_blip):
    data = make_folder(tmp_path / "data", n=1, captions=False)

    class Racing(Captioner):
        def caption(self, images):
            (data / "img0.txt").write_text("written by hand meanwhile\n")
            return super().caption(images)

    from loramix.core.writer import WriteRefused

    with pytest.raises(WriteRefused):
        caption_folder(_config(data, tiny_blip), captioner=Racing(str(tiny_blip), max_new_tokens=3))
    assert (data / "img0.txt").read_text() == "written by hand meanwhile\n"


def test_cancel_stops_between_batches(tmp_path, tiny_blip):
    data = make_folder(tmp_path / "data", n=4, captions=False)
    cancel = CancelToken()

    def on_event(event):
        if event.kind == "step":
            cancel.cancel()

    result = caption_folder(_config(data, tiny_blip, batch_size=1), on_event, cancel)
    assert result.cancelled and len(result.written) == 1


def test_missing_model_is_one_sentence_naming_it(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at call time
    data = make_folder(tmp_path / "data", n=1, captions=False)
    with pytest.raises(LoramixError, match=r"'nobody/no-such-captioner' is not on this machine.*hf download"):
        caption_folder(_config(data, "nobody/no-such-captioner"))
    with pytest.raises(ConfigError, match="caption.mode"):
        caption_folder(_config(data, "x/y", mode="overwrite"))
