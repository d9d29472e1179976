"""Widgets bound to config fields by name: built from the config's field specs, read back as a dict.

Never by position: the form is `{field name: component}`, handlers get `{component: value}`.
"""

from __future__ import annotations

import re
import typing

import gradio as gr

from loramix.core.config import FieldSpec, LoramixConfig, coerce, field_specs

COMMON = ["model.base_model", "dataset.data_dir", "output.output_dir", "output.output_name",
          "dataset.resolution", "network.rank", "network.alpha", "optim.learning_rate", "train.max_steps",
          "train.batch_size", "dataset.trigger_word", "sample.prompts", "sample.sample_every_n_steps"]
LIST_SEPARATORS = {"sample.prompts": "\n"}
PLACEHOLDERS = {"output.output_name": "empty = the data folder's name",
                "output.output_dir": "empty = a new folder in outputs/ for each run"}


def _label(spec: FieldSpec) -> str:
    return spec.name.split(".", 1)[1].replace("_", " ")


def label_of(name: str) -> str:
    """The label the form shows for a config key (`train.batch_size` -> "batch size")."""
    return _label(next(s for s in field_specs() if s.name == name))


_KEY = re.compile(r"(?<![\w./\\-])([a-z]+\.[a-z_]+)(?![\w./\\(-])")


def for_people(message: str) -> str:
    """An engine sentence as the form speaks: each config key becomes the label a person sees, with the key in
    brackets for CLI and preset users ("batch size (train.batch_size): 0 is below the minimum 1.").
    The CLI shows the engine's sentence as it is."""
    labels = {s.name: _label(s) for s in field_specs()}
    return _KEY.sub(lambda m: f"{labels[m[1]]} ({m[1]})" if m[1] in labels else m[0], message)


def make_widget(spec: FieldSpec, value) -> gr.components.Component:
    kw = dict(label=_label(spec), info=spec.help, elem_id="cfg-" + spec.name.replace(".", "-"), min_width=200)
    if spec.type is bool:
        return gr.Checkbox(value=value, **kw)
    if "choices" in spec.metadata:
        return gr.Dropdown(choices=spec.metadata["choices"], value=value, interactive=True, **kw)
    if spec.type is int:
        return gr.Number(value=value, precision=0, **kw)
    if spec.type is float:
        return gr.Number(value=value, **kw)
    if typing.get_origin(spec.type) is list:
        sep = LIST_SEPARATORS.get(spec.name, ",")
        lines = 3 if sep == "\n" else 1
        hint = "one per line" if sep == "\n" else "comma-separated"
        return gr.Textbox(value=sep.join(value), lines=lines, **{**kw, "info": f"{spec.help} ({hint})"})
    return gr.Textbox(value=value, placeholder=PLACEHOLDERS.get(spec.name), **kw)


def _grid(specs: list[FieldSpec], config: LoramixConfig, form: dict, per_row: int = 3) -> None:
    for start in range(0, len(specs), per_row):
        with gr.Row(equal_height=False):
            for spec in specs[start:start + per_row]:
                form[spec.name] = make_widget(spec, config.get(spec.name))


def build_form(config: LoramixConfig) -> dict[str, gr.components.Component]:
    """The common fields on top, the rest in an Advanced accordion by section; values from `config`."""
    specs = {s.name: s for s in field_specs()}
    form: dict[str, gr.components.Component] = {}
    _grid([specs[name] for name in COMMON], config, form)
    with gr.Accordion("Advanced", open=False):
        sections: dict[str, list[FieldSpec]] = {}
        for spec in specs.values():
            if spec.name not in COMMON:
                sections.setdefault(spec.name.split(".")[0], []).append(spec)
        for section, fields in sections.items():
            gr.Markdown(f"**{section}**")
            _grid(fields, config, form)
    return form


def to_config(form: dict[str, gr.components.Component], values: dict) -> LoramixConfig:
    """Widget values -> a validated config (ConfigError names the field)."""
    config = LoramixConfig()
    for name, component in form.items():
        value = values[component]
        if name in LIST_SEPARATORS and isinstance(value, str):
            value = [v.strip() for v in value.split(LIST_SEPARATORS[name]) if v.strip()]
        elif isinstance(value, float) and value.is_integer() and field_type(name) is int:
            value = int(value)
        section, field = name.split(".")
        setattr(getattr(config, section), field, coerce(name, value if value is not None else ""))
    return config.validate()


def field_type(name: str):
    return next(s.type for s in field_specs() if s.name == name)


def to_widgets(form: dict[str, gr.components.Component], config: LoramixConfig) -> dict:
    """A config -> updates for every widget."""
    out = {}
    for name, component in form.items():
        value = config.get(name)
        if isinstance(value, list):
            value = LIST_SEPARATORS.get(name, ",").join(value)
        out[component] = value
    return out
