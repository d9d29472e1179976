"""The Mix tab: base model, adapter rows with weight sliders, preview, X/Y grid, merge and bake."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from loramix.errors import LoramixError
from loramix.lora_io import save_lora
from loramix.merge import merge_concat, merge_svd
from loramix.mixer import SAMPLERS, PreviewRequest
from loramix.xy_grid import Axis, xy_grid
from webui.state import AppState

MAX_ROWS = 6


@dataclass
class MixTab:
    files: list[gr.Dropdown]
    weights: list[gr.Slider]
    enabled: list[gr.Checkbox]
    count: gr.State
    rows: list[gr.Row]


def _rows(tab: MixTab, values: dict) -> list[tuple[str, float, bool]]:
    count = values[tab.count]
    return [(values[f], float(values[w]), bool(values[e]))
            for f, w, e in list(zip(tab.files, tab.weights, tab.enabled))[:count] if values[f]]


def adapter_choices(state: AppState) -> list[tuple[str, str]]:
    """(label, path) pairs: the folder and file name is enough to tell adapters apart."""
    return [(f"{Path(p).parent.name}/{Path(p).name}", p) for p in state.adapters()]


def _busy_note(state: AppState) -> str:
    job = state.jobs.current()
    return " A training job is running: previews share the machine with it and take longer." \
        if job and job.status == "running" else ""


def build(state: AppState) -> MixTab:
    with gr.Row():
        base = gr.Textbox(value="", label="Base model", placeholder="empty = the embedded tiny model",
                          info="A diffusers folder or hub id.", scale=3, elem_id="mix-base")
        refresh = gr.Button("Refresh adapter list", scale=1)
        upload = gr.File(label="Add LoRA files", file_count="multiple", file_types=[".safetensors"], scale=2)
    choices = adapter_choices(state)
    files, weights, enabled, rows, removes = [], [], [], [], []
    count = gr.State(1)
    for i in range(MAX_ROWS):
        with gr.Row(visible=i == 0, equal_height=True) as row:
            files.append(gr.Dropdown(choices, value=None, label=f"Adapter {i + 1}", interactive=True,
                                     allow_custom_value=True, scale=4, elem_id=f"mix-file-{i}"))
            weights.append(gr.Slider(-2, 2, value=1.0, step=0.05, label="Weight", scale=3,
                                     elem_id=f"mix-weight-{i}"))
            enabled.append(gr.Checkbox(value=True, label="On", scale=1, min_width=60))
            removes.append(gr.Button("✕", scale=0, min_width=40))
        rows.append(row)
    add = gr.Button("+ Add adapter", elem_id="mix-add")
    tab = MixTab(files, weights, enabled, count, rows)
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", value="a large red circle in the center, blue background",
                                lines=2, elem_id="mix-prompt")
            negative = gr.Textbox(label="Negative prompt")
            with gr.Row(equal_height=True):
                seed = gr.Number(value=1, precision=0, label="Seed", elem_id="mix-seed", scale=3)
                dice = gr.Button("Random seed", scale=1, size="sm")
                sampler = gr.Dropdown(SAMPLERS, value="ddim", label="Sampler", scale=3)
            with gr.Row():
                steps = gr.Slider(1, 100, value=20, step=1, label="Steps")
                cfg = gr.Slider(0, 20, value=6.0, step=0.5, label="CFG")
                size = gr.Slider(0, 2048, value=0, step=64, label="Size (0 = the model's own)")
            generate = gr.Button("Generate", variant="primary", elem_id="mix-generate")
            status = gr.Markdown(elem_id="mix-status")
        with gr.Column(scale=2):
            image = gr.Image(label="Preview", type="pil", format="png", elem_id="mix-image", height=320)
    with gr.Accordion("X/Y grid", open=False):
        with gr.Row():
            grid_row = gr.Dropdown([f"Adapter {i + 1}" for i in range(MAX_ROWS)], value="Adapter 1",
                                   label="X: weight of")
            grid_values = gr.Textbox("-1, 0, 0.5, 1", label="X: weights")
            grid_seeds = gr.Textbox("1, 2", label="Y: seeds")
            grid_button = gr.Button("Make grid")
        grid_image = gr.Image(label="Grid", type="pil", format="png")
    with gr.Accordion("Export", open=False):
        with gr.Row():
            export_name = gr.Textbox("blend", label="Name")
            export_rank = gr.Number(0, precision=0, label="Rank (0 = exact merge)",
                                    info="Exact concatenates ranks; a rank compresses with SVD.")
            export_precision = gr.Dropdown(["fp16", "bf16", "fp32"], value="fp16", label="Precision")
        with gr.Row():
            export_button = gr.Button("Export merged LoRA")
            bake_button = gr.Button("Bake into model")
        export_file = gr.File(label="Download")

    blend_inputs = {base, count, *files, *weights, *enabled}
    preview_inputs = blend_inputs | {prompt, negative, seed, steps, cfg, size, sampler}

    def blended(values):
        mixer = state.mixer(values[base].strip())
        names = mixer.set_blend(_rows(tab, values))
        return mixer, names

    def request(values) -> PreviewRequest:
        side = int(values[size] or 0)
        return PreviewRequest(values[prompt], values[negative], int(values[seed] or 0), int(values[steps]),
                              float(values[cfg]), values[sampler], side, side)

    def on_generate(values):
        try:
            with state.mixer_lock:
                mixer, names = blended(values)
                picture = mixer.generate(request(values))
        except LoramixError as e:
            return gr.skip(), f"⚠ {e}"
        what = ", ".join(f"{n} {mixer.slots[n].weight:+.2f}" for n in names if mixer.slots[n].enabled) or "base only"
        return picture, f"Seed {int(values[seed] or 0)} · {what}.{_busy_note(state)}"

    def on_grid(values):
        try:
            row = int(values[grid_row].split()[-1]) - 1
            rows = _rows(tab, values)
            with state.mixer_lock:
                mixer, names = blended(values)
                if not values[files[row]] or row >= values[count]:
                    raise LoramixError(f"X/Y grid: {values[grid_row]} has no adapter selected.")
                index = [f for f, _, _ in rows].index(values[files[row]])
                x = Axis("weight", [float(v) for v in values[grid_values].split(",")], names[index])
                y = Axis("seed", [int(v) for v in values[grid_seeds].split(",")])
                return xy_grid(mixer, request(values), x, y), ""
        except ValueError:
            return gr.skip(), "⚠ X/Y grid: weights and seeds are comma-separated numbers."
        except LoramixError as e:
            return gr.skip(), f"⚠ {e}"

    def on_export(values):
        try:
            with state.mixer_lock:
                mixer, _ = blended(values)
                sources = mixer.sources()
            if not sources:
                raise LoramixError("Export: enable at least one adapter.")
            rank = int(values[export_rank] or 0)
            adapter, report = merge_svd(sources, rank) if rank else merge_concat(sources)
            path = save_lora(state.lora_dir / f"{values[export_name] or 'blend'}.safetensors", adapter,
                             values[export_precision])
        except LoramixError as e:
            return gr.skip(), f"⚠ {e}"
        note = f" Relative error {report.relative_error:.4f}." if rank else " Exact."
        return str(path), f"Saved {path.name}: {len(adapter.layers)} layers.{note}"

    def on_bake(values):
        try:
            with state.mixer_lock:
                mixer, _ = blended(values)
                folder = mixer.bake(state.outputs / "baked" / (values[export_name] or "blend"))
        except LoramixError as e:
            return gr.skip(), f"⚠ {e}"
        archive = shutil.make_archive(str(folder), "zip", folder)
        return archive, f"Baked into {folder} (download the zip, or load the folder as a base model)."

    def on_add(n):
        n = min(n + 1, MAX_ROWS)
        return [n] + [gr.update(visible=i < n) for i in range(MAX_ROWS)]

    def on_remove(i):
        def handler(values):
            # shift the rows below up by one, then hide the last
            n = values[count]
            vals = [(values[files[j]], values[weights[j]], values[enabled[j]]) for j in range(MAX_ROWS)]
            del vals[i]
            vals.append((None, 1.0, True))
            n = max(n - 1, 1)
            out = {count: n}
            for j in range(MAX_ROWS):
                out[files[j]], out[weights[j]], out[enabled[j]] = vals[j]
                out[rows[j]] = gr.update(visible=j < n)
            return out
        return handler

    def on_refresh():
        listed = adapter_choices(state)
        return [gr.update(choices=listed) for _ in files]

    def on_upload(uploaded):
        state.import_files([getattr(f, "name", f) for f in uploaded or []], state.lora_dir)
        return on_refresh()

    private = dict(api_visibility="private")
    generate.click(on_generate, preview_inputs, [image, status], concurrency_limit=1, **private)
    grid_button.click(on_grid, preview_inputs | {grid_row, grid_values, grid_seeds}, [grid_image, status],
                      concurrency_limit=1, **private)
    export_button.click(on_export, blend_inputs | {export_name, export_rank, export_precision},
                        [export_file, status], concurrency_limit=1, **private)
    bake_button.click(on_bake, blend_inputs | {export_name}, [export_file, status], concurrency_limit=1, **private)
    add.click(on_add, count, [count, *rows], **private)
    for i, button in enumerate(removes):
        button.click(on_remove(i), {count, *files, *weights, *enabled},
                     [count, *files, *weights, *enabled, *rows], **private)
    dice.click(lambda: random.randint(0, 2**31 - 1), None, seed, **private)
    refresh.click(on_refresh, None, files, **private)
    upload.upload(on_upload, upload, files, **private)
    return tab


def send_to_mix(tab: MixTab, state: AppState):
    """Put a freshly trained file into the first empty adapter row (handler for the Train tab's button)."""
    def handler(values):
        job = state.jobs.current()
        path = job.lora_path if job and job.status in ("done", "cancelled") else None
        if not path:
            return {tab.count: values[tab.count]}
        path = str(Path(path).resolve())
        n = values[tab.count]
        current = [values[f] for f in tab.files]
        slot = next((i for i, v in enumerate(current[:n]) if not v), n if n < MAX_ROWS else MAX_ROWS - 1)
        n = max(n, slot + 1)
        listed = adapter_choices(state)
        out = {tab.count: n}
        for i, f in enumerate(tab.files):
            out[f] = gr.update(choices=listed, value=path if i == slot else current[i])
        for i, row in enumerate(tab.rows):
            out[row] = gr.update(visible=i < n)
        return out
    return handler
