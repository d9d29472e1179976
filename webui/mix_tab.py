"""The Mix tab's page: base model, adapter rows (file, weight slider, on/off, card), live before/after preview,
X/Y grid, export and bake.

Each part of the tab is a small builder (`webui.mix_panels`) that returns its widgets as a dataclass; `build`
keeps them all in one `MixTab` and wires each part by reference in its own `_wire_…` function below. What a
button or slider does is a plain function in `webui.mix_actions`. A slider release draws a preview at once (at the
draft step count); a preview made stale by a newer move is dropped before it draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from loramix.core.errors import LoramixError
from loramix.mix.block_weights import BLOCK_IDS, LAYOUTS
from webui.mix_actions import (
    SHOWN_PX,
    MixValues,
    Previewer,
    adapter_choices,
    axis_choices,
    bake_blend,
    blocks_to_sliders,
    card_text,
    empty_hint,
    export_blend,
    load_mix,
    make_grid,
    mix_names,
    place_in_rows,
    remove_row,
    save_mix,
    shown_pair,
    sliders_to_blocks,
)
from webui.mix_panels import (
    DEFAULT_PROMPT,
    LAYOUT_CHOICES,
    MAX_ROWS,
    AdapterRows,
    BlockEditor,
    ExportPanel,
    GridPanel,
    MixPresetPanel,
    RequestPanel,
    adapter_rows,
    block_editor_panel,
    export_panel,
    grid_panel,
    mix_preset_panel,
    request_panel,
)
from webui.state import AppState


@dataclass
class MixTab:
    """Every widget of the tab, by reference, as the builders made them."""

    base: gr.Textbox
    refresh: gr.Button
    upload: gr.File
    adapters_note: gr.Markdown
    adapters: AdapterRows
    count: gr.State
    add: gr.Button
    request: RequestPanel
    generate: gr.Button
    status: gr.Markdown
    image: gr.ImageSlider
    block_editor: BlockEditor
    presets: MixPresetPanel
    grid: GridPanel
    export: ExportPanel
    first_view: tuple = ()  # (handler, inputs, outputs) the page runs on load: the adapter list as it is now

    # the rows' widgets, as the Train tab's Send to Mix (webui.app) uses them
    @property
    def files(self) -> list[gr.Dropdown]:
        return self.adapters.files

    @property
    def rows(self) -> list[gr.Column]:
        return self.adapters.rows

    def inputs(self) -> set:
        a = self.adapters
        return {self.base, self.count, *a.files, *a.weights, *a.enabled, *a.blocks,
                *self.request.fields().values()}

    def values(self, raw: dict) -> MixValues:
        a, n = self.adapters, raw[self.count]
        rows = [(raw[f], float(raw[w]), bool(raw[e]), (raw[b] or "").strip() or None)
                for f, w, e, b in list(zip(a.files, a.weights, a.enabled, a.blocks))[:n] if raw[f]]
        return MixValues((raw[self.base] or "").strip(), rows, self.request.request(raw))



def build(state: AppState) -> MixTab:
    """The tab's widgets, then each part wired to its handlers by reference."""
    with gr.Row():
        base = gr.Textbox(value="", label="Base model", placeholder="empty = the embedded tiny model",
                          info="A diffusers folder, a single .safetensors checkpoint (SD 1.x, 2.x, SDXL) or a hub id.",
                          scale=3, elem_id="mix-base")
        refresh = gr.Button("Refresh adapter list", scale=1)
        upload = gr.File(label="Add LoRA files", file_count="multiple", file_types=[".safetensors"], scale=2,
                         elem_id="mix-upload")
    adapters_note = gr.Markdown(empty_hint(state), elem_id="mix-adapters-note")
    adapters = adapter_rows(adapter_choices(state))
    count = gr.State(1)
    add = gr.Button("+ Add adapter", elem_id="mix-add")
    with gr.Row():
        with gr.Column(scale=2):
            request = request_panel()
            generate = gr.Button("Generate", variant="primary", elem_id="mix-generate")
            status = gr.Markdown(elem_id="mix-status")
        with gr.Column(scale=2):
            image = gr.ImageSlider(label="Before (all adapters off) / after", type="pil", format="png",
                                   elem_id="mix-image", height=SHOWN_PX + 40)
    tab = MixTab(base, refresh, upload, adapters_note, adapters, count, add, request, generate, status, image,
                 block_editor=block_editor_panel(), presets=mix_preset_panel(mix_names(state)),
                 grid=grid_panel(axis_choices()), export=export_panel())
    live = _wire_preview(state, tab)
    _wire_rows(state, tab, live)
    _wire_block_editor(tab, live)
    _wire_presets(state, tab, live)
    _wire_grid(state, tab)
    _wire_export(state, tab)
    return tab


PRIVATE = dict(api_visibility="private")
PREVIEW_SLOT = dict(concurrency_limit=1, concurrency_id="preview")  # one preview, grid or export at a time


def guarded(fn, failed):
    """`fn`, with a LoramixError shown as a sentence in the last output and `failed` in the others."""
    def run(*args):
        try:
            return fn(*args)
        except LoramixError as e:
            return (*failed, f"⚠ {e}")
    return run


def _wire_preview(state: AppState, tab: MixTab) -> dict:
    """Generate, and the redraw every user change that a slider release redraws for (a weight typed or slid, On,
    Blocks, a file picked, Apply) triggers alike; returns that redraw as event arguments for the other parts."""
    previewer = Previewer(state)

    def on_generate(raw):
        picture, text = previewer.preview(tab.values(raw), ticket=previewer.ticket())
        return (shown_pair(picture), text) if picture else (gr.skip(), gr.skip())

    def on_live(raw):
        ticket = previewer.ticket()
        picture, text = previewer.preview(tab.values(raw), steps=int(raw[tab.request.draft]), ticket=ticket)
        return (shown_pair(picture), text) if picture else (gr.skip(), gr.skip())

    out = [tab.image, tab.status]
    tab.generate.click(guarded(on_generate, (gr.skip(),)), tab.inputs(), out, **PREVIEW_SLOT, **PRIVATE)
    live = dict(fn=guarded(on_live, (gr.skip(),)), inputs=tab.inputs() | {tab.request.draft}, outputs=out,
                trigger_mode="always_last", **PREVIEW_SLOT, **PRIVATE)
    a = tab.adapters
    for block in a.blocks:
        block.input(**live)
    for slider, box in zip(a.weights, a.enabled):
        slider.release(**live)  # the range let go, and the number box left (blur)
        slider.input(**live)  # a number typed (Enter): the range's drag sends release as well, always_last
        box.input(**live)
    return live


def _wire_rows(state: AppState, tab: MixTab, live: dict) -> None:
    """+ Add, ✕, a file picked (its card), Refresh, upload, and the adapter list on the page's first view."""
    a = tab.adapters

    def on_add(n):
        n = min(n + 1, MAX_ROWS)
        return [n] + [gr.update(visible=i < n) for i in range(MAX_ROWS)]

    def on_remove(i):
        def handler(raw):
            old = [(raw[f], raw[wt], raw[e], raw[b]) for f, wt, e, b in zip(a.files, a.weights, a.enabled, a.blocks)]
            n, new = remove_row(old, raw[tab.count], i)
            result = {tab.count: n}
            for j in range(MAX_ROWS):
                result[a.files[j]], result[a.weights[j]], result[a.enabled[j]], result[a.blocks[j]] = new[j]
                result[a.rows[j]] = gr.update(visible=j < n)
                result[a.cards[j]] = card_text(state, new[j][0])
            return result
        return handler

    def on_refresh():
        listed = adapter_choices(state)
        return [*(gr.update(choices=listed) for _ in a.files), empty_hint(state)]

    def on_upload(uploaded):
        try:
            state.import_files([getattr(f, "name", f) for f in uploaded or []], (".safetensors",), state.lora_dir)
        except LoramixError as e:
            return [*on_refresh()[:-1], f"⚠ {e}"]
        return on_refresh()

    tab.add.click(on_add, tab.count, [tab.count, *a.rows], **PRIVATE)
    for i, button in enumerate(a.removes):
        button.click(on_remove(i), {tab.count, *a.files, *a.weights, *a.enabled, *a.blocks},
                     [tab.count, *a.files, *a.weights, *a.enabled, *a.blocks, *a.rows, *a.cards],
                     **PRIVATE).then(**live)
    for f, card in zip(a.files, a.cards):
        f.change(lambda path: (card_text(state, path), empty_hint(state)), f, [card, tab.adapters_note], **PRIVATE)
        # a file picked: an earlier file's error beside the adapters goes, and the preview redraws
        f.input(lambda: empty_hint(state), None, tab.adapters_note, **PRIVATE).then(**live)
    tab.refresh.click(on_refresh, None, [*a.files, tab.adapters_note], **PRIVATE)
    tab.upload.upload(on_upload, tab.upload, [*a.files, tab.adapters_note], **PRIVATE)
    tab.first_view = (on_refresh, None, [*a.files, tab.adapters_note])


def _wire_block_editor(tab: MixTab, live: dict) -> None:
    """Layout shows its blocks' sliders; Read fills the sliders from a row; Apply writes them back and redraws."""
    e, blocks = tab.block_editor, tab.adapters.blocks

    def on_layout(choice):
        keep = set(LAYOUTS[LAYOUT_CHOICES[choice]])
        return [gr.update(visible=b in keep) for b in BLOCK_IDS]

    def on_read(raw):
        i = int(raw[e.row].split()[-1]) - 1
        try:
            values = blocks_to_sliders(raw[blocks[i]], LAYOUT_CHOICES[raw[e.layout]])
        except LoramixError as error:
            return {e.message: f"⚠ {error}"}
        return {**dict(zip(e.sliders, values)), e.message: f"Block weights of Adapter {i + 1} loaded."}

    def on_write(raw):
        i = int(raw[e.row].split()[-1]) - 1
        text = sliders_to_blocks([raw[c] for c in e.sliders], LAYOUT_CHOICES[raw[e.layout]])
        return {blocks[i]: text, e.message: f"Adapter {i + 1} blocks: {text}; the preview redraws."}

    e.layout.change(on_layout, e.layout, e.sliders, **PRIVATE)
    e.read.click(on_read, {e.row, e.layout, *blocks}, [*e.sliders, e.message], **PRIVATE)
    e.write.click(on_write, {e.row, e.layout, *e.sliders}, [*blocks, e.message], **PRIVATE).then(**live)


def _wire_presets(state: AppState, tab: MixTab, live: dict) -> None:
    """Save mix, the saved list (fresh on focus), and Load mix (every row and setting, then a redraw)."""
    p, a, settings = tab.presets, tab.adapters, tab.request.fields()

    def on_save_mix(raw):
        message = save_mix(state, tab.values(raw), raw[p.name], raw[p.replace])
        return gr.update(choices=mix_names(state), value=raw[p.name]), message

    def on_load_mix(name):
        count, rows, saved = load_mix(state, name)
        out = {tab.count: count, p.message: f"Loaded mix {name}."}
        for j, (f, wt, on, b) in enumerate(rows):
            out[a.files[j]] = gr.update(choices=adapter_choices(state), value=f)
            out[a.weights[j]], out[a.enabled[j]], out[a.blocks[j]] = wt, on, b
            out[a.rows[j]] = gr.update(visible=j < count)
        for key, value in saved.items():
            out[settings[key]] = value
        return out

    def load_or_say(name):
        try:
            return on_load_mix(name)
        except LoramixError as e:
            return {p.message: f"⚠ {e}"}

    p.save.click(guarded(on_save_mix, (gr.skip(),)), tab.inputs() | {p.name, p.replace}, [p.saved, p.message],
                 **PREVIEW_SLOT, **PRIVATE)
    p.saved.focus(lambda: gr.update(choices=mix_names(state)), None, p.saved, **PRIVATE)
    p.load.click(load_or_say, p.saved, [tab.count, p.message, *a.files, *a.weights, *a.enabled, *a.blocks, *a.rows,
                                        *settings.values()], **PRIVATE).then(**live)


def _wire_grid(state: AppState, tab: MixTab) -> None:
    g = tab.grid
    g.button.click(
        guarded(lambda raw: make_grid(state, tab.values(raw), raw[g.x_axis], raw[g.x_values], raw[g.y_axis],
                                      raw[g.y_values]), (gr.skip(),)),
        tab.inputs() | {g.x_axis, g.x_values, g.y_axis, g.y_values}, [g.image, g.message], **PREVIEW_SLOT, **PRIVATE)


def _wire_export(state: AppState, tab: MixTab) -> None:
    x = tab.export
    x.export.click(
        guarded(lambda raw: export_blend(state, tab.values(raw), raw[x.name], raw[x.rank], raw[x.precision],
                                         raw[x.replace]), (gr.skip(),)),
        tab.inputs() | {x.name, x.rank, x.precision, x.replace}, [x.download, x.message], **PREVIEW_SLOT, **PRIVATE)
    x.bake.click(
        guarded(lambda raw: bake_blend(state, tab.values(raw), raw[x.name], raw[x.replace]), (gr.skip(),)),
        tab.inputs() | {x.name, x.replace}, [x.download, x.message], **PREVIEW_SLOT, **PRIVATE)


def prompt_with_trigger(prompt: str, trigger: str, position: str) -> tuple[str, str]:
    """(the prompt, a sentence) after a LoRA trained with `trigger` was sent to the Mix tab. The default prompt,
    bare or carrying trigger words added by earlier sends (one-word tags), gets the trigger where the LoRA was
    trained with it, so that the first preview shows the style; a prompt the person wrote is left as it is and
    the sentence names the word to write."""
    from trainers.dataset import with_trigger

    if not trigger:
        return prompt, ""
    tags = [t.strip() for t in (prompt or "").split(",") if t.strip()]
    if trigger in tags:
        return prompt, ""
    where = "last" if position == "end" else "first"
    default = [t.strip() for t in DEFAULT_PROMPT.split(",")]
    rest = [t for t in tags if t not in default]
    if all(t in tags for t in default) and all(" " not in t for t in rest):
        return with_trigger(prompt, trigger, position), f" The prompt now has its trigger word **{trigger}** ({where})."
    return prompt, f" Its trigger word is **{trigger}**: write it {where} in the prompt."


def send_to_mix(tab: MixTab, state: AppState, selected, message, tabs):
    """Handler for the Train tab's button: the LoRA of the job that tab shows goes into the first empty row, the
    default prompt gets its trigger word (`prompt_with_trigger`), and the Mix tab opens; a job without a LoRA file
    says so beside the button and the Train tab stays."""
    from webui.train_jobs import finished_lora, shown_job

    def handler(raw):
        job = shown_job(state, raw[selected])
        path = finished_lora(job)
        if path is None:
            why = "no job yet" if job is None else f"job {job.id} is {job.status} and has no LoRA file yet"
            return {message: f"⚠ Send to Mix: {why}.", tabs: gr.skip()}
        count, files = place_in_rows([raw[f] for f in tab.files], raw[tab.count], str(Path(path).resolve()))
        listed = adapter_choices(state)
        dataset = job.config.dataset  # what the job trained with (its file says the same in loramix_config)
        prompt, said = prompt_with_trigger(raw[tab.request.prompt], dataset.trigger_word, dataset.trigger_position)
        out = {tab.count: count, message: f"Sent {Path(path).name} (job {job.id}) to the Mix tab.{said}",
               tabs: gr.Tabs(selected="mix"), tab.request.prompt: prompt}
        for f, value in zip(tab.files, files):
            out[f] = gr.update(choices=listed, value=value)
        for i, row in enumerate(tab.rows):
            out[row] = gr.update(visible=i < count)
        return out
    return handler
