"""Issue 29, the tabs as a newcomer met them, without a browser: presets that round-trip the whole Mix tab, an
exported blend that keeps its trigger words, sentences that name the form's labels, messages that go when their
job changes, the hint on an empty Mix tab, an ETA that counts sampling, a time estimate before Start, and a README
whose commands write the file the app writes."""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path

import pytest
import torch

from loramix.core.events import TrainEvent
from loramix.formats.adapter_info import adapter_info
from loramix.formats.lora_io import LoraAdapter, LoraLayer
from loramix.mix.merge import Source, save_blend
from tests.conftest import make_folder, random_lora
from tests.webui.test_handlers import Recorder, form_and_values
from webui import bindings, mix_tab, train_tab
from webui.jobs import Job, JobManager
from webui.state import AppState

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def state(tmp_path):
    return AppState.create(tmp_path / "outputs", jobs=JobManager(tmp_path / "jobs.db", Recorder()))


# ---- row 3: a mix preset round-trips the whole Mix tab, rows in order -----------------------------------------
def test_a_mix_preset_round_trips_the_rows_in_order_and_the_picture_settings(state, tiny_model):
    a = random_lora(tiny_model, state.lora_dir / "a.safetensors", 1)
    b = random_lora(tiny_model, state.lora_dir / "b.safetensors", 2)
    first = mix_tab.MixValues(str(tiny_model), [(str(a), 0.5, True, None), (str(b), 0.5, True, None)])
    with state.mixer_lock:
        mix_tab.blended(state, first)  # the mixer now holds a, then b
    saved = mix_tab.MixValues(str(tiny_model), [(str(b), -0.7, True, "OUTD"), (str(a), 1.3, False, None)],
                              "a small yellow star, pastelz", "blurry", 1234, 33, 7.5, 128, "euler")
    assert "Saved mix two" in mix_tab.save_mix(state, saved, "two")
    changed = mix_tab.MixValues(str(tiny_model), [(str(a), 0.1, True, None)], "other", "", 1, 5, 1.0, 0, "ddim")
    with state.mixer_lock:
        mix_tab.blended(state, changed)  # everything changed before the load
    count, rows, settings = mix_tab.load_mix(state, "two")
    assert count == 2
    assert [(Path(f).name, w, on, blocks) for f, w, on, blocks in rows[:2]] == \
        [("b.safetensors", -0.7, True, "OUTD"), ("a.safetensors", 1.3, False, "")]
    assert settings == dict(prompt="a small yellow star, pastelz", negative="blurry", seed=1234, steps=33, cfg=7.5,
                            size=128, sampler="euler")


def test_a_mix_saved_before_the_settings_were_kept_still_loads(state):
    (state.outputs / "mixes" / "old.toml").write_text(
        f'schema_version = 1\n[[adapter]]\npath = "{state.lora_dir / "x.safetensors"}"\nweight = 0.25\n')
    count, rows, settings = mix_tab.load_mix(state, "old")
    assert count == 1 and rows[0][1:] == (0.25, True, "") and settings == {}


# ---- row 4: an exported blend keeps its adapters' trigger words and positions ----------------------------------
def _source(name: str, trigger: str, position: str, seed: int) -> Source:
    torch.manual_seed(seed)
    meta = {"loramix_config": json.dumps({"dataset": {"trigger_word": trigger, "trigger_position": position}})}
    return Source(name, LoraAdapter({"lora_unet_a": LoraLayer(torch.randn(2, 8), torch.randn(8, 2), 2.0)}, meta), 0.5)


@pytest.mark.parametrize("rank", [0, 2])
def test_an_exported_blend_records_every_trigger_word_and_its_card_shows_them(tmp_path, rank):
    path = tmp_path / "blend.safetensors"
    save_blend([_source("pastel", "pastelz", "start", 0), _source("ink", "style", "end", 1)], path, rank=rank)
    info = adapter_info(path)
    assert info.triggers == [("pastelz", "start", "pastel"), ("style", "end", "ink")]
    card = info.markdown()
    assert "**pastelz** (from pastel)" in card and "**style** (from ink, last in the prompt)" in card, card
    again = tmp_path / "again.safetensors"  # a blend of a blend passes the words on
    from loramix.formats.lora_io import read_lora

    save_blend([Source("blend", read_lora(path), 1.0)], again)
    assert adapter_info(again).triggers == info.triggers


# ---- row 9: sentences name the label a person sees, the key in brackets ----------------------------------------
def test_a_form_error_names_the_label_the_form_shows_with_the_key_in_brackets(state, tmp_path):
    data = make_folder(tmp_path / "mystyle", n=2)
    form, values = form_and_values({"dataset.data_dir": str(data), "train.batch_size": 0})
    message, job_id = train_tab.start_job(state, form, values)
    assert job_id is None
    assert message.startswith("⚠ batch size (train.batch_size): 0 is below"), message
    assert bindings.label_of("train.batch_size") == "batch size"
    form, values = form_and_values({"dataset.data_dir": "", "train.batch_size": 1})
    assert "⚠ data dir (dataset.data_dir): give the folder" in train_tab.start_job(state, form, values)[0]
    plain = "pastel.safetensors in /x/train.max_steps_dir"  # file names and paths stay as they are
    assert bindings.for_people(plain) == plain


# ---- row 2: a message goes when the state it describes changes -------------------------------------------------
def test_the_queued_message_goes_once_that_job_starts_and_the_started_one_when_it_ends(tmp_path):
    recorder = Recorder(release_at_once=False)
    state = AppState.create(tmp_path / "outputs", jobs=JobManager(tmp_path / "jobs.db", recorder))
    data = make_folder(tmp_path / "mystyle", n=2)
    form, values = form_and_values({"dataset.data_dir": str(data), "output.output_name": "", "output.output_dir": ""})
    first = train_tab._with_selection(state, train_tab.start_job(state, form, values))
    values["train.seed"] = 9
    second = train_tab._with_selection(state, train_tab.start_job(state, form, values))
    assert "is queued" in second[0] and second[3] == (second[1], "queued")
    assert train_tab.stale_message(state, second[3]) == (train_tab.gr.skip(), train_tab.gr.skip())
    assert train_tab.stale_message(state, first[3]) == (train_tab.gr.skip(), train_tab.gr.skip())
    recorder.release.set()
    state.jobs.wait(state.jobs.get(first[1]), timeout=10)
    assert train_tab.stale_message(state, first[3]) == ("", None)  # "Job 1 started" goes when job 1 is done
    deadline = time.time() + 10
    while state.jobs.get(second[1]).status == "queued":
        assert time.time() < deadline
        time.sleep(0.01)
    assert train_tab.stale_message(state, second[3]) == ("", None)  # "Job 2 is queued" goes when it starts
    state.jobs.wait(state.jobs.get(second[1]), timeout=10)


# ---- row 10: the first Mix tab says where adapters come from --------------------------------------------------
def test_an_empty_mix_tab_says_how_to_get_an_adapter_and_stops_once_there_is_one(state, tiny_model):
    hint = mix_tab.empty_hint(state)
    assert "Train tab" in hint and "Send to Mix" in hint and "Add LoRA files" in hint
    random_lora(tiny_model, state.lora_dir / "a.safetensors", 1)
    assert mix_tab.empty_hint(state) == ""


# ---- row 12: the ETA counts sample pauses and checkpoint saves ---------------------------------------------------
def _timed_job(sample_s: float, events: list[tuple[str, int, float]]) -> Job:
    from loramix.core.config import LoramixConfig

    config = LoramixConfig()
    config.train.max_steps, config.sample.sample_every_n_steps, config.output.save_every_n_steps = 400, 100, 0
    job = Job(1, config, status="running")
    for kind, step, at in events:
        job.events.append(TrainEvent(kind, step, 400, steps_per_s=1.0, eta_s=400 - step))
        job.event_times.append(at)
    return job


def test_the_eta_counts_the_sample_pauses_still_to_come(state):
    steps = [("step", s, s * 0.1) for s in range(1, 101)]
    job = _timed_job(95, [*steps, ("sample", 100, 10.0 + 95), ("step", 101, 105.1), ("step", 102, 105.2)])
    # 298 steps at 0.1 s + 3 more samples (steps 200, 300, 400) at 95 s, in the progress line
    assert "ETA 5m14s (steps 29s, 3 sample pauses × 1m35s)" in train_tab.progress_html(job, state)
    unmeasured = _timed_job(95, [("step", s, s * 0.1) for s in range(1, 51)])
    text = train_tab.eta_text(unmeasured)
    assert "not counting 4 sample pauses (not measured yet)" in text, text
    at_sample = _timed_job(95, steps)  # the last event is step 100, a sample point: it is sampling now
    assert train_tab.eta_text(at_sample).startswith("making samples · ETA")


# ---- row 13: a time estimate before Start, from a run measured on this machine ---------------------------------
def test_before_start_an_estimate_from_this_machines_measured_pace(state, tmp_path):
    data = make_folder(tmp_path / "mystyle", n=2)
    form, values = form_and_values({"dataset.data_dir": str(data), "train.max_steps": 300, "output.output_dir": "",
                                    "output.output_name": ""})
    assert "Time estimate: none yet" in train_tab.start_estimate(state, form, values)
    message, job_id = train_tab.start_job(state, form, values)
    job = state.jobs.get(job_id)
    assert job is not None, message
    state.jobs.wait(job, timeout=10)
    job.events.append(TrainEvent("step", 10, 10, steps_per_s=2.5))
    text = train_tab.start_estimate(state, form, {**values, "train.max_steps": 600})
    assert text.startswith(f"Time estimate: about 4m00s for 600 steps: job {job.id} ran 2.50 steps/s on this machine"), text
    other = {**values, "dataset.resolution": 128}  # another resolution: that pace says nothing about it
    assert "Time estimate: none yet" in train_tab.start_estimate(state, form, other)


# ---- row 11: the README's commands write the file the app writes -----------------------------------------------
def test_the_readmes_demo_commands_write_the_file_the_train_tab_writes(state):
    from loramix.cli import build_parser
    from loramix.core.config import load_config

    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("## The embedded demo model"):]
    block = block[block.index("```bash") + 7:block.index("```", block.index("```bash") + 7)]
    lines = [shlex.split(line.replace("\\\n", " ")) for line in block.replace("\\\n", " ").splitlines() if line]
    trains = [line[1:] for line in lines if line[:2] == ["loramix", "train"]]
    mixes = [line[1:] for line in lines if line[:2] == ["loramix", "mix"]]
    assert trains and len(trains) == len(mixes)
    for train_args, mix_args in zip(trains, mixes):
        args = build_parser().parse_args(train_args)
        config = load_config(REPO / args.preset, overrides=[f"dataset.data_dir={args.data}",
                                                     f"output.output_dir={args.output}",
                                                     *([f"output.output_name={args.name}"] if args.name else [])])
        written = Path(config.output.output_dir) / f"{config.output.output_name}.safetensors"
        lora = mix_args[mix_args.index("--lora") + 1].rsplit(":", 1)[0]
        assert Path(lora) == written, (lora, written)
        grid = mix_args[mix_args.index("--grid-x") + 1]
        assert grid.split(":")[1] == config.output.output_name, grid  # the adapter's name in the mix is its stem
        # the Train tab, with that preset and data folder and nothing typed, names the file the same way
        form, values = form_and_values({"dataset.data_dir": str(REPO / args.data), "output.output_name": "",
                                        "output.output_dir": ""})
        app = train_tab.job_config(state, form, values)
        assert app.output.output_name == config.output.output_name
    assert re.search(r"outputs/pastel/pastel\.safetensors", readme)
