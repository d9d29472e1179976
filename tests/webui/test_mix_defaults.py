"""One set of preview defaults (issue 26 §3): the Mix tab's widgets, `loramix mix`'s flags and a mix preset's
`[request]` table start from the engine's `PreviewRequest`, so they cannot drift apart (they once said CFG 6 in the
UI and 7 in the engine and CLI)."""

from __future__ import annotations

from dataclasses import asdict, fields

import gradio as gr

from loramix import cli
from loramix.mix.mix_preset import MixRequest
from loramix.mix.mixer import PreviewRequest
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
    d = PreviewRequest("p")
    assert (args.negative, args.seed, args.steps, args.cfg, args.sampler, args.size, args.size) == \
        (d.negative_prompt, d.seed, d.steps, d.cfg_scale, d.sampler, d.width, d.height)


def test_a_mix_preset_without_a_setting_reads_the_engines_default():
    d = asdict(PreviewRequest(""))
    for f in fields(MixRequest):
        assert getattr(MixRequest(), f.name) == d.get(f.name, d["width"]), f"MixRequest.{f.name}"

