"""The Train tab's form column: the preset picker and Save preset, the config fields (one widget per config
field, `webui.bindings`), Start, the time estimate beside it and the sentence about the last action."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from loramix.core.config import LoramixConfig, load_config, to_toml, with_absolute_folders
from loramix.core.errors import LoramixError
from loramix.core.paths import plain_name, unique_name
from loramix.core.runs import check_run_folder, confine_config, drop_if_empty, new_run_folder
from loramix.core.writer import check_target, make_folder, write_text
from trainers.captions import captions_table
from webui import bindings
from webui.state import AppState
from webui.train_jobs import Selection, with_selection
from webui.train_times import PACE_KEYS, start_estimate


def preset_config(state: AppState, name: str | None) -> LoramixConfig:
    """A preset's config (defaults when none) as the form shows it: the output name and folder are left
    empty, so that a run is named after its data folder and gets a new folder in outputs/."""
    from loramix.embedded import STYLE_SETS

    config = load_config(state.preset_path(name), validate=False) if name else LoramixConfig()
    config.output.output_dir = ""
    config.output.output_name = ""
    if not config.dataset.data_dir and (STYLE_SETS / "pastel").is_dir():
        config.dataset.data_dir = str(STYLE_SETS / "pastel")  # a first run works with no typing
    return config


def job_config(state: AppState, form: dict, values: dict) -> LoramixConfig:
    """The form's values as a confined config with its own run folder (created here)."""
    values = dict(values)
    name_box, dir_box = form["output.output_name"], form["output.output_dir"]
    data_dir = str(values[form["dataset.data_dir"]] or "").strip()
    name = str(values[name_box] or "").strip() or Path(data_dir.rstrip("/\\")).name or "lora"
    values[name_box] = plain_name("output.output_name", name)
    chosen = str(values[dir_box] or "").strip()
    values[dir_box] = chosen or str(state.outputs / values[name_box])
    config = confine_config(bindings.to_config(form, values), state.confinement, state.reserved_folders())
    if chosen:
        check_run_folder(config)
    else:
        config.output.output_dir = str(new_run_folder(state.outputs, values[name_box]))
    return config


def check_data_folder(state: AppState, values: dict, form: dict) -> None:
    """Refuse at Start, before a run folder is made, a data folder the page flags: the same scan and sentence."""
    folder = str(values[form["dataset.data_dir"]] or "").strip()
    if not folder:
        raise LoramixError("dataset.data_dir: give the folder of training images.")
    try:
        folder = str(state.confinement.readable_folder("dataset.data_dir", folder))
        captions_table(folder, values[form["dataset.caption_extension"]], int(values[form["dataset.resolution"]] or 512))
    except ValueError as e:
        raise LoramixError(f"dataset.data_dir: {e}") from e


def start_job(state: AppState, form: dict, values: dict) -> tuple[str, int | None]:
    """(the sentence to show, the new job's id or None)."""
    config = None
    try:
        check_data_folder(state, values, form)
        config = job_config(state, form, values)
        ahead = state.jobs.current()
        job = state.jobs.submit(config)
    except LoramixError as e:
        if config is not None and not str(values[form["output.output_dir"]] or "").strip():
            drop_if_empty(config.output.output_dir)
        return f"⚠ {bindings.for_people(str(e))}", None
    if ahead is not None and ahead.active:
        return f"Job {job.id} is queued in {job.folder}: it starts when job {ahead.id} ends.", job.id
    return f"Job {job.id} started in {job.folder}.", job.id


def save_as_preset(state: AppState, form: dict, name: str, values: dict, replace: bool = False):
    """Save the form as a user preset in outputs/presets; a shipped preset's name is refused (it could never be
    selected), and an existing user preset is replaced only with `replace`."""
    try:
        name = plain_name("Save as preset", (name or "").strip())
        if name.casefold() in state.shipped_presets():
            raise LoramixError(f"Save as preset: {name!r} is the name of a preset that ships with loramix; pick "
                               "another name.")
        unique_name("Save as preset", name, state.presets())
        config = bindings.to_config(form, {**values, form["output.output_name"]: "preset",
                                           form["output.output_dir"]: ""})
        config.output.output_name, config.output.output_dir = LoramixConfig().output.output_name, ""
        presets = make_folder(state.outputs / "presets", within=state.outputs)
        rules = dict(replace=bool(replace), within=presets, field="Save as preset")
        target = check_target(presets / f"{name}.toml", **rules)
        write_text(target, to_toml(with_absolute_folders(config), only_changed=True), **rules)
    except LoramixError as e:
        return f"⚠ {bindings.for_people(str(e))}", gr.skip()
    return f"Saved preset {name}.", gr.update(choices=list(state.presets()), value=name)


@dataclass
class FormPanel:
    form: dict  # config field name -> widget
    message: gr.Markdown  # the sentence beside Start / Cancel / Resume / Send to Mix
    estimate: gr.Markdown
    said_estimate: gr.State  # the estimate this tab shows, so a tick re-sends it only when it changed
    estimate_now: object  # (pace values) -> the estimate sentence: also run at page load

    @property
    def pace(self) -> set:
        """The fields the estimate depends on."""
        return {self.form[name] for name in (*PACE_KEYS, "train.max_steps")}

    def fresh_estimate(self, values: dict):
        """(estimate, said) for one tick: a run that just finished measured a pace, so say it without a field
        change; skip both when the sentence is the one this tab shows."""
        text = self.estimate_now(values)
        return (gr.skip(), gr.skip()) if text == values[self.said_estimate] else (text, text)


def build(state: AppState, selection: Selection) -> FormPanel:
    """The form column, wired: the preset fills the fields, Save preset, Start (the new job becomes the one this
    tab shows), and the estimate that follows the pace fields."""
    presets = state.presets()
    with gr.Row():
        preset = gr.Dropdown(list(presets), value="demo-cpu" if "demo-cpu" in presets else None,
                             label="Preset", info="Fills every field below; your edits come after.",
                             interactive=True, allow_custom_value=True, scale=3)  # saved in another tab too
        preset_name = gr.Textbox(label="Save as preset", placeholder="my-preset", scale=2)
        with gr.Column(scale=1, min_width=140):
            preset_replace = gr.Checkbox(False, label="replace", elem_id="train-preset-replace")
            save_preset = gr.Button("Save preset", elem_id="train-preset-save")
    preset_message = gr.Markdown(elem_id="train-preset-message")
    form = bindings.build_form(preset_config(state, preset.value))
    with gr.Row():
        start = gr.Button("Start training", variant="primary", elem_id="train-start")
    estimate = gr.Markdown(elem_id="train-estimate")
    message = gr.Markdown(elem_id="train-error")
    panel = FormPanel(form, message, estimate, gr.State(""), lambda values: start_estimate(state, form, values))

    private = dict(api_visibility="private")
    preset.change(lambda name: bindings.to_widgets(form, preset_config(state, name)) if name else {},
                  preset, list(form.values()), **private)
    preset.focus(lambda: gr.update(choices=list(state.presets())), None, preset, **private)
    save_preset.click(lambda values: save_as_preset(state, form, values[preset_name], values,
                                                    values[preset_replace]),
                      {preset_name, preset_replace, *form.values()}, [preset_message, preset], **private)
    start.click(lambda values: with_selection(state, start_job(state, form, values)), set(form.values()),
                [message, *selection.outputs], **private)
    for widget in panel.pace:
        widget.change(panel.estimate_now, panel.pace, estimate, **private)
    return panel
