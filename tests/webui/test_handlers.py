"""The web handlers without a browser: run folders per start, duplicates, resume, send to Mix, captions."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from loramix.core.errors import LoramixError
from loramix.core.events import TrainEvent
from loramix.mix.request import PreviewRequest
from tests.conftest import make_folder
from trainers.lora_trainer import TrainResult
from webui import mix_actions, mix_tab, train_data, train_form, train_jobs, train_live, train_tab
from webui.jobs import JobManager
from webui.state import AppState


class Recorder:
    """A stand-in trainer: records configs, waits for `release`, cancels on request."""

    def __init__(self, release_at_once=True):
        self.configs = []
        self.release = threading.Event()
        if release_at_once:
            self.release.set()

    def __call__(self, config, events, cancel):
        self.configs.append(config)
        events(TrainEvent("start", 3 if config.train.resume_from else 0, 10))
        while not self.release.wait(0.01):
            if cancel.cancelled:
                folder = Path(config.output.output_dir)
                state = folder / f"{config.output.output_name}-state.safetensors"
                state.write_bytes(b"state")
                return TrainResult(None, state, 3, cancelled=True)
        lora = Path(config.output.output_dir) / f"{config.output.output_name}.safetensors"
        lora.write_bytes(b"lora")
        return TrainResult(lora, None, 10)


class FakeForm(dict):
    """`{field name: component}` where each component is its own key into the values dict."""


def form_and_values(config_values: dict):
    from loramix.core.config import LoramixConfig, field_specs

    base = LoramixConfig()
    form = FakeForm({spec.name: spec.name for spec in field_specs()})
    values = {spec.name: base.get(spec.name) for spec in field_specs()}
    values.update({k: v for k, v in config_values.items()})
    values["sample.prompts"] = "\n".join(values["sample.prompts"])
    values["network.target_modules"] = ",".join(values["network.target_modules"])
    return form, values


@pytest.fixture
def state(tmp_path):
    return AppState.create(tmp_path / "outputs", jobs=JobManager(tmp_path / "jobs.db", Recorder()))


def test_each_start_gets_its_own_run_folder_named_after_the_data(state, tmp_path):
    data = make_folder(tmp_path / "mystyle", n=2)
    form, values = form_and_values({"dataset.data_dir": str(data), "output.output_name": "",
                                    "output.output_dir": "", "train.max_steps": 2})
    first = train_form.start_job(state, form, values)[0]
    assert "started in" in first and str(state.outputs / "mystyle") in first
    state.jobs.wait(state.jobs.current(), timeout=5)
    values["train.seed"] = 7  # other work with the same name: a new folder, the first run's files untouched
    second = train_form.start_job(state, form, values)[0]
    assert str(state.outputs / "mystyle-2") in second, second
    state.jobs.wait(state.jobs.current(), timeout=5)
    assert (state.outputs / "mystyle" / "mystyle.safetensors").read_bytes() == b"lora"
    assert (state.outputs / "mystyle-2" / "mystyle.safetensors").is_file()


def test_a_chosen_folder_holding_another_run_is_refused(state, tmp_path):
    data = make_folder(tmp_path / "d", n=2)
    used = state.outputs / "used"
    used.mkdir()
    (used / "old.safetensors").write_bytes(b"old")
    form, values = form_and_values({"dataset.data_dir": str(data), "output.output_name": "x",
                                    "output.output_dir": str(used)})
    assert "already holds another run" in train_form.start_job(state, form, values)[0]
    values["output.output_dir"] = str(tmp_path / "outside")
    assert "loramix writes only inside" in train_form.start_job(state, form, values)[0]
    assert (used / "old.safetensors").read_bytes() == b"old" and not (tmp_path / "outside").exists()


def test_duplicate_start_is_refused_and_leaves_no_empty_folder(tmp_path):
    recorder = Recorder(release_at_once=False)
    state = AppState.create(tmp_path / "outputs", jobs=JobManager(tmp_path / "jobs.db", recorder))
    data = make_folder(tmp_path / "dup", n=2)
    form, values = form_and_values({"dataset.data_dir": str(data), "output.output_name": "",
                                    "output.output_dir": ""})
    assert "started" in train_form.start_job(state, form, values)[0]
    refused = train_form.start_job(state, form, values)[0]
    assert "already" in refused and "⚠" in refused
    assert sorted(p.name for p in state.outputs.iterdir() if p.name.startswith("dup")) == ["dup"]
    recorder.release.set()


def test_cancel_then_resume_continues_in_the_same_folder(tmp_path):
    recorder = Recorder(release_at_once=False)
    state = AppState.create(tmp_path / "outputs", jobs=JobManager(tmp_path / "jobs.db", recorder))
    data = make_folder(tmp_path / "res", n=2)
    form, values = form_and_values({"dataset.data_dir": str(data), "output.output_name": "",
                                    "output.output_dir": ""})
    train_form.start_job(state, form, values)[0]
    job = state.jobs.current()
    while job.status != "running" and job.active:
        threading.Event().wait(0.01)
    assert "Resume: this job is not" in train_jobs.resume_job(state, job.id)[0]
    _, _, selected, _, due = train_tab.tick(state, None, None)
    buttons = train_tab.catch_up(state, selected, due, None)
    assert buttons["cancel"]["visible"] is True and buttons["resume"]["visible"] is False  # running
    assert train_jobs.cancel_job(state, None).startswith(f"Cancelled job {job.id}")
    state.jobs.wait(job, timeout=5)
    progress, _, selected, _, due = train_tab.tick(state, None, None)
    buttons = train_tab.catch_up(state, selected, due, None)
    assert "Cancelled" in progress and buttons["resume"]["visible"] is True
    assert buttons["cancel"]["visible"] is False  # nothing left to cancel: no red button beside Resume
    message = train_jobs.resume_job(state, None)[0]
    assert "resumes job" in message
    recorder.release.set()
    state.jobs.wait(state.jobs.current(), timeout=5)
    resumed = recorder.configs[-1]
    assert resumed.train.resume_from == str(job.folder / "res-state.safetensors")
    assert resumed.output.output_dir == str(job.folder)
    assert "resumed from step 3" in train_live.log_text(state.jobs.current())


def test_a_tick_with_nothing_new_sends_nothing(state):
    import gradio as gr

    first = train_tab.tick(state, None, None)
    again = train_tab.tick(state, first[2], first[3])
    assert "No training yet" in first[0] and again[:2] == first[:2]
    assert again[4] == gr.skip()  # nothing due: no plot, samples, log, file, picker, button or sentence is sent


def test_place_in_rows_fills_the_first_empty_shown_row():
    assert mix_actions.place_in_rows([None] * 6, 1, "a") == (1, ["a", None, None, None, None, None])
    assert mix_actions.place_in_rows(["x", None, None, None, None, None], 1, "a") == (2, ["x", "a", None, None, None,
                                                                                       None])
    assert mix_actions.place_in_rows(["x", None, "y", None, None, None], 3, "a")[1][:3] == ["x", "a", "y"]
    full = [str(i) for i in range(6)]
    assert mix_actions.place_in_rows(full, 6, "a") == (6, ["0", "1", "2", "3", "4", "a"])


def test_send_to_mix_handler_puts_the_finished_lora_into_a_row(state, tmp_path):
    data = make_folder(tmp_path / "sent", n=2)
    form, values = form_and_values({"dataset.data_dir": str(data), "output.output_name": "",
                                    "output.output_dir": "", "dataset.trigger_word": "glow"})
    train_form.start_job(state, form, values)[0]
    state.jobs.wait(state.jobs.current(), timeout=5)

    class Tab:  # the handler reads and writes components by identity only
        files = [f"file{i}" for i in range(mix_tab.MAX_ROWS)]
        rows = [f"row{i}" for i in range(mix_tab.MAX_ROWS)]
        count = "count"

        class request:
            prompt = "prompt"

    raw = {"count": 1, "selected": None, "prompt": mix_tab.DEFAULT_PROMPT, **{f: None for f in Tab.files}}
    out = mix_tab.send_to_mix(Tab, state, "selected", "message", "tabs")(raw)
    assert out["count"] == 1 and out["tabs"].selected == "mix"
    assert out["file0"]["value"] == str((state.outputs / "sent" / "sent.safetensors").resolve())
    assert out["row0"]["visible"] is True and out["row1"]["visible"] is False
    # the first preview shows what was trained: the default prompt carries the LoRA's trigger word
    assert out["prompt"] == "glow, " + mix_tab.DEFAULT_PROMPT and "**glow**" in out["message"]


def test_a_sent_lora_puts_its_trigger_into_the_default_prompt_only():
    default = mix_tab.DEFAULT_PROMPT
    assert mix_tab.prompt_with_trigger(default, "style", "end")[0] == default + ", style"
    assert mix_tab.prompt_with_trigger(default, "ink", "start")[0] == "ink, " + default
    # a second LoRA after a first one's trigger: the prompt is still the default, with one-word tags added
    assert mix_tab.prompt_with_trigger(default + ", style", "ink", "start")[0] == "ink, " + default + ", style"
    assert mix_tab.prompt_with_trigger(default + ", style", "style", "end") == (default + ", style", "")
    assert mix_tab.prompt_with_trigger(default, "", "start") == (default, "")
    # what the person wrote is theirs: left alone, and told the word
    mine = "a small green star on the left, white background"
    assert mix_tab.prompt_with_trigger(mine, "style", "end") == (
        mine, " Its trigger word is **style**: write it last in the prompt.")
    edited = default + ", soft light"  # the default with a phrase of theirs added
    assert mix_tab.prompt_with_trigger(edited, "style", "end")[0] == edited


def test_caption_table_saves_only_next_to_scanned_images(state, tmp_path):
    data = make_folder(tmp_path / "caps", n=2)
    thumbs, table, note = train_data.show_images(state, str(data), ".txt")
    assert len(thumbs) == 2 and thumbs[0][0].size[0] <= train_data.THUMB and "2 images" in note
    table.iloc[0, 1] = "new caption"
    assert train_data.write_captions(state, table, str(data), ".txt") == "Saved 2 captions."
    assert (data / "img0.txt").read_text() == "new caption\n"
    table.iloc[0, 0] = "../escape.png"
    assert "is not an image of" in train_data.write_captions(state, table, str(data), ".txt")
    assert not (tmp_path / "escape.txt").exists()
    assert "not a caption extension" in train_data.write_captions(state, table, str(data), ".py")


def test_adapter_list_shows_step_files_under_their_run(state):
    run = state.outputs / "mystyle"
    run.mkdir()
    for name in ("mystyle.safetensors", "mystyle-step000050.safetensors", "mystyle-state.safetensors"):
        (run / name).write_bytes(b"x")
    labels = [label for label, _ in mix_actions.adapter_choices(state)]
    assert sorted(labels) == ["mystyle/mystyle-step000050.safetensors", "mystyle/mystyle.safetensors"]


def test_mix_grid_block_weights_presets_and_export_metadata(tmp_path, tiny_model):
    import json

    from loramix.formats.lora_io import read_lora
    from loramix.mix.mix_preset import METADATA_KEY
    from tests.conftest import random_lora

    state = AppState.create(tmp_path / "outputs", jobs=JobManager(tmp_path / "jobs.db", Recorder()))
    a = random_lora(tiny_model, state.lora_dir / "a.safetensors", 1)
    random_lora(tiny_model, state.lora_dir / "b.safetensors", 2)
    v = mix_actions.MixValues(str(tiny_model), [(str(a), 0.8, True, "OUTD"), (str(state.lora_dir / "b.safetensors"),
                                                                          -0.5, True, None)],
                          PreviewRequest("red stripes", "", 1, 2, 3.0, "ddim", 0, 0))
    assert "Saved mix duo" in mix_actions.save_mix(state, v, "duo")
    count, rows, _ = mix_actions.load_mix(state, "duo")
    assert count == 2 and rows[0][1:] == (0.8, True, "OUTD") and rows[1][1:] == (-0.5, True, "")
    with pytest.raises(LoramixError, match="plain file name"):
        mix_actions.save_mix(state, v, "../out")
    image, message = mix_actions.make_grid(state, v, "blocks of Adapter 1", "ALL; OUTD", "cfg", "1, 4")
    assert message == "Grid done: 2 × 2 images." and image.size[0] > 2 * 64
    with pytest.raises(LoramixError, match="Adapter 3 has no adapter"):
        mix_actions.make_grid(state, v, "weight of Adapter 3", "0, 1", "seed", "1")
    path, note = mix_actions.export_blend(state, v, "duo-merged", 0, "fp32", False)
    recorded = json.loads(read_lora(path).metadata[METADATA_KEY])
    assert [r["weight"] for r in recorded["adapter"]] == [0.8, -0.5] and recorded["adapter"][0]["blocks"] == "OUTD"


def test_block_sliders_round_trip_a_rows_text():
    values = mix_actions.blocks_to_sliders("OUTD", 17)
    assert mix_actions.sliders_to_blocks(values, 17) == "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0"
    assert mix_actions.blocks_to_sliders("", 17) == [1.0] * 26
    sdxl = mix_actions.sliders_to_blocks(mix_actions.blocks_to_sliders("1,0,0,0,0,0.5,1,1,1,1,1,1", 12), 12)
    assert sdxl == "1,0,0,0,0,0.5,1,1,1,1,1,1"
