"""The Mix tab's widgets, part by part (adapter rows, prompt and settings, block sliders, presets, grid, export).

Each builder returns its widgets as a small dataclass, so `webui.mix_tab` wires them by reference (a renamed
field is an AttributeError where it is used, not a silent miss). The picture settings start from the engine's
`PreviewRequest` defaults: the widgets, the CLI and the engine share one set.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import gradio as gr

from loramix.mix.block_weights import BLOCK_IDS, LAYOUTS, PRESET_NAMES, UNIFORM_NOTE
from loramix.mix.request import SAMPLERS, PreviewRequest

MAX_ROWS = 6
DRAFT_STEPS = 8
DEFAULT_PROMPT = "a large red circle in the center, blue background"  # loramix.embedded.quality.MIX_DEFAULT
LAYOUT_CHOICES = {"SD 1.x / 2.x (17)": 17, "SDXL (12)": 12, "all 26 blocks (tiny models)": 26}


@dataclass
class AdapterRows:
    """MAX_ROWS rows, index i in every list: file, weight, on, blocks, ✕ button, card, and the row's column."""

    files: list[gr.Dropdown]
    weights: list[gr.Slider]
    enabled: list[gr.Checkbox]
    blocks: list[gr.Dropdown]
    removes: list[gr.Button]
    cards: list[gr.Markdown]
    rows: list[gr.Column]


def adapter_rows(choices: list) -> AdapterRows:
    """MAX_ROWS rows of (file, weight, on, blocks, ✕) and a card; only the first is shown."""
    files, weights, enabled, blocks, cards, rows, removes = [], [], [], [], [], [], []
    for i in range(MAX_ROWS):
        with gr.Column(visible=i == 0) as row:
            with gr.Row(equal_height=True):
                files.append(gr.Dropdown(choices, value=None, label=f"Adapter {i + 1}", interactive=True,
                                         allow_custom_value=True, scale=4, elem_id=f"mix-file-{i}"))
                weights.append(gr.Slider(-2, 2, value=1.0, step=0.05, label="Weight", scale=3,
                                         elem_id=f"mix-weight-{i}"))
                enabled.append(gr.Checkbox(value=True, label="On", scale=1, min_width=60, elem_id=f"mix-on-{i}"))
                blocks.append(gr.Dropdown(["", *PRESET_NAMES], value="", label="Blocks", allow_custom_value=True,
                                          interactive=True, scale=2, min_width=120, elem_id=f"mix-blocks-{i}",
                                          info="A preset (OUTD, INS, MIDD…) or 17/12 comma-separated weights. "
                                          + UNIFORM_NOTE))
                removes.append(gr.Button("✕", scale=0, min_width=40))
            cards.append(gr.Markdown(elem_id=f"mix-card-{i}", elem_classes=["mix-card"]))
        rows.append(row)
    return AdapterRows(files, weights, enabled, blocks, removes, cards, rows)


@dataclass
class RequestPanel:
    """The picture settings, one widget per `PreviewRequest` field (`size` stands for width and height), and the
    step count a slider release draws with."""

    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    seed: gr.Number
    steps: gr.Slider
    cfg_scale: gr.Slider
    sampler: gr.Dropdown
    size: gr.Slider
    draft: gr.Slider

    def fields(self) -> dict[str, gr.components.Component]:
        """The request's widgets by field name (the names a mix preset's `[request]` table uses too)."""
        return dict(prompt=self.prompt, negative_prompt=self.negative_prompt, seed=self.seed, steps=self.steps,
                    cfg_scale=self.cfg_scale, sampler=self.sampler, size=self.size)

    def request(self, values: dict) -> PreviewRequest:
        """The engine's request from `{component: value}`; an empty box falls back to the request's default."""
        d = PreviewRequest("")
        size = int(values[self.size] or d.width)
        return PreviewRequest(values[self.prompt] or "", values[self.negative_prompt] or "",
                              int(values[self.seed] if values[self.seed] is not None else d.seed),
                              int(values[self.steps] or d.steps), float(values[self.cfg_scale]),
                              values[self.sampler] or d.sampler, size, size)


def request_panel() -> RequestPanel:
    d = PreviewRequest("")  # the engine's defaults
    prompt = gr.Textbox(label="Prompt", value=DEFAULT_PROMPT, lines=2,
                        info="Write each adapter's trigger word (on its card) where it was trained.",
                        elem_id="mix-prompt")
    negative = gr.Textbox(value=d.negative_prompt, label="Negative prompt")
    with gr.Row(equal_height=True):
        seed = gr.Number(value=d.seed, precision=0, label="Seed", elem_id="mix-seed", scale=3)
        dice = gr.Button("Random seed", scale=1, size="sm")
        sampler = gr.Dropdown(SAMPLERS, value=d.sampler, label="Sampler", scale=3)
    with gr.Row():
        steps = gr.Slider(1, 100, value=d.steps, step=1, label="Steps (Generate)")
        draft = gr.Slider(1, 50, value=DRAFT_STEPS, step=1, label="Preview steps (sliders)", elem_id="mix-draft")
        cfg = gr.Slider(0, 20, value=d.cfg_scale, step=0.5, label="CFG")
        size = gr.Slider(0, 2048, value=d.width, step=64, label="Size (0 = the model's own)")
    dice.click(lambda: random.randint(0, 2**31 - 1), None, seed, api_visibility="private")
    return RequestPanel(prompt, negative, seed, steps, cfg, sampler, size, draft)


@dataclass
class GridPanel:
    x_axis: gr.Dropdown
    x_values: gr.Textbox
    y_axis: gr.Dropdown
    y_values: gr.Textbox
    button: gr.Button
    image: gr.Image
    message: gr.Markdown


def grid_panel(axes: list[str]) -> GridPanel:
    with gr.Accordion("X/Y grid", open=False):
        with gr.Row():
            x_axis = gr.Dropdown(axes, value="weight of Adapter 1", label="X axis", elem_id="mix-grid-x")
            x_values = gr.Textbox("-1, 0, 0.5, 1", label="X values",
                                  info="Comma-separated; block presets are separated by ; (e.g. ALL; OUTD; INS)")
            y_axis = gr.Dropdown(axes, value="seed", label="Y axis", elem_id="mix-grid-y")
            y_values = gr.Textbox("1, 2", label="Y values")
            button = gr.Button("Make grid", elem_id="mix-grid-make")
        message = gr.Markdown(elem_id="mix-grid-message")
        image = gr.Image(label="Grid", type="pil", format="png", elem_id="mix-grid-image")
    return GridPanel(x_axis, x_values, y_axis, y_values, button, image, message)


@dataclass
class BlockEditor:
    """One slider per block for the row `row` names: Read fills them from the row, Apply writes them back."""

    row: gr.Dropdown
    layout: gr.Dropdown
    read: gr.Button
    write: gr.Button
    sliders: list[gr.Slider]  # one per BLOCK_IDS entry
    message: gr.Markdown


def block_editor_panel() -> BlockEditor:
    with gr.Accordion("Block weights, one slider per block", open=False):
        with gr.Row(equal_height=True):
            row = gr.Dropdown([f"Adapter {i + 1}" for i in range(MAX_ROWS)], value="Adapter 1", label="Edit the row",
                              elem_id="mix-lbw-row")
            layout = gr.Dropdown(list(LAYOUT_CHOICES), value="SD 1.x / 2.x (17)", label="Layout",
                                 elem_id="mix-lbw-layout")
            read = gr.Button("Read the row", elem_id="mix-lbw-read")
            write = gr.Button("Apply to the row", variant="primary", elem_id="mix-lbw-apply")
        message = gr.Markdown(elem_id="mix-lbw-message")
        sliders = []
        with gr.Row(elem_id="mix-lbw-sliders"):  # a grid (app.CSS): every block visible on a narrow page
            for block in BLOCK_IDS:
                sliders.append(gr.Slider(-1, 2, value=1.0, step=0.05, label=block, min_width=110,
                                         visible=block in LAYOUTS[17], elem_id=f"mix-lbw-{block}",
                                         elem_classes=["mix-lbw-slider"]))
    return BlockEditor(row, layout, read, write, sliders, message)


@dataclass
class MixPresetPanel:
    name: gr.Textbox
    replace: gr.Checkbox
    save: gr.Button
    saved: gr.Dropdown
    load: gr.Button
    message: gr.Markdown


def mix_preset_panel(names: list[str]) -> MixPresetPanel:
    with gr.Accordion("Mix presets", open=False):
        with gr.Row(equal_height=True):
            name = gr.Textbox(label="Save blend as", placeholder="my-mix", elem_id="mix-preset-name")
            replace = gr.Checkbox(False, label="Replace a saved mix of that name", elem_id="mix-preset-replace")
            save = gr.Button("Save mix", elem_id="mix-preset-save")
            saved = gr.Dropdown(names, label="Saved mixes", interactive=True, allow_custom_value=True,
                                elem_id="mix-preset-list")  # a mix saved in another tab loads too
            load = gr.Button("Load mix", elem_id="mix-preset-load")
        message = gr.Markdown(elem_id="mix-preset-message")
    return MixPresetPanel(name, replace, save, saved, load, message)


@dataclass
class ExportPanel:
    name: gr.Textbox
    rank: gr.Number
    precision: gr.Dropdown
    replace: gr.Checkbox
    export: gr.Button
    bake: gr.Button
    download: gr.File
    message: gr.Markdown


def export_panel() -> ExportPanel:
    with gr.Accordion("Export", open=False):
        with gr.Row():
            name = gr.Textbox("blend", label="Name", info="A plain name: the file goes into your LoRA folder, a "
                                                          "bake into outputs/baked/.", elem_id="mix-export-name")
            rank = gr.Number(0, precision=0, label="Rank (0 = exact merge)",
                             info="Exact concatenates ranks; a rank compresses with SVD.")
            precision = gr.Dropdown(["fp16", "bf16", "fp32"], value="fp16", label="Precision")
            replace = gr.Checkbox(False, label="Replace an existing file / bake", elem_id="mix-replace")
        with gr.Row():
            export = gr.Button("Export merged LoRA", elem_id="mix-export")
            bake = gr.Button("Bake into model", elem_id="mix-bake")
        message = gr.Markdown(elem_id="mix-export-message")
        download = gr.File(label="Download")
    return ExportPanel(name, rank, precision, replace, export, bake, download, message)
