"""The workspace rules at the handlers: what a job list, a Start, a caption table and a save may and may not do."""

from __future__ import annotations

import errno
import threading

import gradio as gr
import pytest

from loramix.core.runs import RunLock
from loramix.core.writer import DiskFullError
from tests.conftest import make_folder
from tests.webui.test_handlers import Recorder, form_and_values
from webui import train_data, train_form, train_jobs, train_tab
from webui.jobs import JobManager
from webui.state import AppState


@pytest.fixture
def listening(tmp_path):
    """An app started with --listen and one --data-root, with a secret outside every root."""
    root = tmp_path / "shared-data"
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "env.txt").write_text("API_KEY=hunter2")
    make_folder(secret / "10_private", n=1)
    state = AppState.create(tmp_path / "outputs", listen=True, data_roots=[root],
                            jobs=JobManager(tmp_path / "jobs.db", Recorder()))
    return state, root, secret


@pytest.mark.parametrize("link", ["caption", "subfolder"])
def test_with_listen_a_link_out_of_the_data_folder_is_never_read_or_written(listening, link):
    state, root, secret = listening
    data = make_folder(root / "style", n=2)
    if link == "caption":
        (data / "img0.txt").unlink()
        (data / "img0.txt").symlink_to(secret / "env.txt")
    else:
        (data / "10_sub").symlink_to(secret / "10_private", target_is_directory=True)
    thumbs, table, note = train_data.show_images(state, str(data), ".txt")
    assert thumbs == [] and "leads outside the folders this app may read" in note and "hunter2" not in note
    rows = [("img0.png", "overwritten"), ("img1.png", "x")]
    assert "leads outside" in train_data.write_captions(state, rows, str(data), ".txt")
    form, values = form_and_values({"dataset.data_dir": str(data), "output.output_name": "",
                                    "output.output_dir": ""})
    message, job_id = train_form.start_job(state, form, values)
    assert "leads outside" in message and job_id is None
    assert (secret / "env.txt").read_text() == "API_KEY=hunter2"
    assert not (state.outputs / "style").exists()  # no run folder was made


@pytest.mark.parametrize("problem", ["missing", "a file", "no images", "unreadable"])
def test_an_unusable_data_folder_is_refused_at_start_before_a_run_folder_exists(tmp_path, problem):
    state = AppState.create(tmp_path / "outputs", jobs=JobManager(tmp_path / "jobs.db", Recorder()))
    data = tmp_path / "bad"
    if problem == "a file":
        data.write_text("not a folder")
    elif problem == "no images":
        data.mkdir()
        (data / "notes.txt").write_text("hello")
    elif problem == "unreadable":
        data.mkdir()
        (data / "broken.png").write_bytes(b"not a png at all")
    form, values = form_and_values({"dataset.data_dir": str(data), "output.output_name": "",
                                   "output.output_dir": ""})
    _, _, page_note = train_data.show_images(state, str(data), ".txt")
    message, job_id = train_form.start_job(state, form, values)
    assert message.startswith("⚠") and job_id is None and state.jobs.listing() == []
    assert page_note.lstrip("⚠ ").split(".")[0] in message  # the sentence the page already showed
    assert not (state.outputs / "bad").exists()


@pytest.mark.parametrize("folder", ["presets", "mixes", "loras", "uploads", "baked"])
def test_the_apps_own_folders_are_never_a_run_folder(tmp_path, folder):
    state = AppState.create(tmp_path / "outputs", jobs=JobManager(tmp_path / "jobs.db", Recorder()))
    keep = state.outputs / folder / "keepme.toml"
    keep.write_text("mine")
    data = make_folder(tmp_path / "data", n=2)
    form, values = form_and_values({"dataset.data_dir": str(data), "output.output_name": "keepme",
                                    "output.output_dir": str(state.outputs / folder)})
    message, job_id = train_form.start_job(state, form, values)
    assert "never a run folder" in message and job_id is None and keep.read_text() == "mine"


def test_a_new_job_does_not_take_a_tab_away_from_the_job_it_shows(tmp_path):
    recorder = Recorder(release_at_once=False)
    state = AppState.create(tmp_path / "outputs", jobs=JobManager(tmp_path / "jobs.db", recorder))
    form, values = form_and_values({"dataset.data_dir": str(make_folder(tmp_path / "one", n=2)),
                                    "output.output_name": "", "output.output_dir": ""})
    _, first = train_form.start_job(state, form, values)
    view = train_tab.tick(state, None, None)  # a tab that had picked nothing: it shows job 1 and keeps it
    assert view[2] == first
    recorder.release.set()
    state.jobs.wait(state.jobs.get(first), timeout=5)
    recorder.release.clear()
    values["dataset.data_dir"] = str(make_folder(tmp_path / "two", n=2))
    _, second = train_form.start_job(state, form, values)  # from another tab
    progress, _, selected, _, _ = train_tab.tick(state, view[2], view[3])
    # the tab keeps job 1: the tick sends no id back (one still in flight when the person picks another job or
    # starts one must not put the old id back over theirs)
    assert selected == gr.skip() and f"job {first}" in progress and "Done" in progress
    assert "is done; nothing to cancel" in train_jobs.cancel_job(state, first)
    assert state.jobs.get(second).active  # Cancel acted on the shown job, not the running one
    recorder.release.set()


def test_a_full_disk_when_the_lock_is_taken_leaves_no_empty_lock_file(tmp_path, monkeypatch):
    import loramix.core.writer as writer

    folder = tmp_path / "run"
    real_open = writer.open_lock_file

    class FullDisk:  # the lock file opens (the inode exists), but its first line finds the disk full
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def write(self, _text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "open_lock_file", lambda *a, **k: FullDisk(real_open(*a, **k)))
    with pytest.raises(DiskFullError, match=r"The disk is full: saving .*\.loramix\.lock"):
        RunLock(folder).acquire()
    assert list(folder.iterdir()) == []


def test_a_full_disk_on_save_preset_is_the_sentence(tmp_path, monkeypatch):
    state = AppState.create(tmp_path / "outputs", jobs=JobManager(tmp_path / "jobs.db", Recorder()))
    form, values = form_and_values({})
    import loramix.core.writer as writer

    real = writer._commit

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "_commit", full)
    message, _ = train_form.save_as_preset(state, form, "mine", values)
    monkeypatch.setattr(writer, "_commit", real)
    assert message.startswith("⚠ The disk is full: saving") and "mine.toml" in message
    assert not (state.outputs / "presets" / "mine.toml").exists()
    assert [p.name for p in (state.outputs / "presets").iterdir()] == []


def test_two_uploads_in_the_same_second_get_two_folders(tmp_path):
    state = AppState.create(tmp_path / "outputs", jobs=JobManager(tmp_path / "jobs.db", Recorder()))
    source = make_folder(tmp_path / "browser-temp", n=1)
    got = []
    threads = [threading.Thread(target=lambda: got.append(state.import_files([str(source / "img0.png")],
                                                                             (".png",)))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({paths[0].parent for paths in got}) == 4


def test_with_listen_every_folder_a_job_reads_is_confined(listening, tmp_path):
    state, root, secret = listening
    data = make_folder(root / "style", n=2)
    for field in ("dataset.validation_dir", "dataset.reg_data_dir"):
        form, values = form_and_values({"dataset.data_dir": str(data), "output.output_name": "",
                                        "output.output_dir": "", field: str(secret / "10_private")})
        message, job_id = train_form.start_job(state, form, values)
        assert job_id is None and f"({field}): with --listen loramix reads only inside" in message, message


def test_with_listen_captions_outside_every_root_are_neither_shown_nor_saved(listening, tmp_path):
    state, root, secret = listening
    outside = make_folder(tmp_path / "elsewhere", n=2)
    before = (outside / "img0.txt").read_text()
    _, table, note = train_data.show_images(state, str(outside), ".txt")
    assert table.empty and "with --listen loramix reads only inside" in note
    message = train_data.write_captions(state, [("img0.png", "overwritten"), ("img1.png", "x")], str(outside), ".txt")
    assert "with --listen loramix reads only inside" in message
    assert (outside / "img0.txt").read_text() == before
