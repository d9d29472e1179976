"""One set of preview defaults (issue 26 §3): the Mix tab's widgets, `loramix mix`'s flags and a mix preset's
`[request]` table start from the engine's `PreviewRequest`, so they cannot drift apart (they once said CFG 6 in the
UI and 7 in the engine and CLI)."""

from __future__ import annotations

from dataclasses import asdict

import gradio as gr
import pytest

from loramix import cli
from loramix.core.errors import LoramixError
from loramix.mix.mix_preset import MixPreset, build_blend, from_dict
from loramix.mix.request import PreviewRequest
from tests.webui.test_handlers import Recorder
from webui import mix_tab
from webui.jobs import JobManager
from webui.state import AppState


def test_the_mix_form_as_it_opens_asks_for_the_engines_defaults(tmp_path):
    state = AppState.create(tmp_path / "outputs", jobs=JobManager(tmp_path / "jobs.db", Recorder()))
    with gr.Blocks():
        tab = mix_tab.build(state)
    raw = {c: c.value for c in tab.inputs()}  # every widget as the page first shows it
    request = tab.values(raw).request
    assert request == PreviewRequest(tab.request.prompt.value), \
        f"the Mix tab opens with {request}, the engine's defaults are {PreviewRequest(request.prompt)}"
    shown = {name: widget.value for name, widget in tab.request.fields().items() if name != "prompt"}
    assert shown == {**{k: v for k, v in asdict(PreviewRequest("")).items() if k not in ("prompt", "width",
                                                                                          "height")},
                     "size": PreviewRequest.width}


def test_the_cli_flags_default_to_the_engines_request():
    args = cli.build_parser().parse_args(["mix", "--prompt", "p", "--out", "x.png"])
    assert cli.preview_request(args, MixPreset()) == PreviewRequest("p")


def test_the_cli_takes_a_mix_presets_request_and_each_flag_given_wins(tmp_path):
    preset = tmp_path / "blend.toml"
    preset.write_text('schema_version = 2\n[request]\nprompt = "a small blue star on the left, white background"\n'
                      'seed = 7\ncfg_scale = 4.5\nsize = 128\n')
    blend = build_blend(preset)
    args = cli.build_parser().parse_args(["mix", "--mix", str(preset), "--steps", "9", "--seed", "0", "--out", "x.png"])
    assert cli.preview_request(args, blend) == PreviewRequest("a small blue star on the left, white background",
                                                              seed=0, steps=9, cfg_scale=4.5, width=128, height=128)
    args = cli.build_parser().parse_args(["mix", "--mix", str(preset), "--prompt", "red", "--size", "0", "--out", "x"])
    assert cli.preview_request(args, blend) == PreviewRequest("red", seed=7, cfg_scale=4.5)


def test_the_cli_without_any_prompt_says_so_before_the_model_loads():
    args = cli.build_parser().parse_args(["mix", "--out", "x.png"])
    with pytest.raises(LoramixError, match="--prompt"):
        cli.preview_request(args, MixPreset())


def test_a_mix_preset_without_a_setting_reads_the_engines_default():
    assert from_dict({"request": {}}).request == PreviewRequest("")
    assert from_dict({"request": {"size": 256}}).request == PreviewRequest("", width=256, height=256)
    table = from_dict({"request": {"seed": 3}}).request_table()
    assert table == {"prompt": "", "negative_prompt": "", "seed": 3, "steps": PreviewRequest.steps,
                     "cfg_scale": PreviewRequest.cfg_scale, "sampler": PreviewRequest.sampler, "size": 0}
