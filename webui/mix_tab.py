"""The Mix tab: base model, adapter rows (file, weight slider, on/off, card), live before/after preview,
X/Y grid, export and bake.

Each part of the tab is a small builder; handlers are plain functions of the app state and a dict of
named values (`MixValues`), so tests call them without a browser. A slider release draws a preview at
once (at the draft step count); a preview made stale by a newer move is dropped before it draws.
"""

from __future__ import annotations

import itertools
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from loramix.core.errors import LoramixError
from loramix.core.paths import plain_name, unique_name
from loramix.core.writer import check_target, make_folder, write_zip
from loramix.formats.adapter_info import adapter_info
from loramix.mix.block_weights import (
    BLOCK_IDS,
    LAYOUTS,
    format_block_weights,
    parse_block_weights,
)
from loramix.mix.merge import save_blend
from loramix.mix.mix_preset import (
    MixRequest,
    load_mix_preset,
    mix_preset_metadata,
    preset_from_mixer,
    save_mix_preset,
)
from loramix.mix.mixer import PreviewRequest, check_bake_target
from loramix.mix.xy_grid import Axis, xy_grid
from webui.mix_panels import (
    LAYOUT_CHOICES,
    MAX_ROWS,
    adapter_rows,
    block_editor_panel,
    export_panel,
    grid_panel,
    mix_preset_panel,
    request_panel,
)
from webui.state import AppState

SHOWN_PX = 384  # the before/after frame: a smaller picture is shown at the largest whole scale that fits


# ---- named values ----------------------------------------------------------------------------------
@dataclass
class MixValues:
    """What the Mix form holds, by name (built from `{component: value}` by `MixTab.values`)."""

    base: str = ""
    rows: list[tuple[str, float, bool, str | None]] = field(default_factory=list)  # (file, weight, on, blocks)
    prompt: str = ""
    negative: str = ""
    seed: int = 0
    steps: int = 20
    cfg: float = 6.0
    size: int = 0
    sampler: str = "ddim"

    def request(self, steps: int | None = None) -> PreviewRequest:
        return PreviewRequest(self.prompt, self.negative, int(self.seed or 0), int(steps or self.steps),
                              float(self.cfg), self.sampler, int(self.size or 0), int(self.size or 0))

    def mix_request(self) -> MixRequest:
        """The picture settings as a mix preset keeps them."""
        return MixRequest(self.prompt or "", self.negative or "", int(self.seed or 0), int(self.steps),
                          float(self.cfg), self.sampler, int(self.size or 0))


REQUEST_FIELDS = {"prompt": "prompt", "negative": "negative_prompt", "seed": "seed", "steps": "steps",
                  "cfg": "cfg_scale", "sampler": "sampler", "size": "size"}  # MixValues name -> MixRequest name


@dataclass
class MixTab:
    base: gr.Textbox
    files: list[gr.Dropdown]
    weights: list[gr.Slider]
    enabled: list[gr.Checkbox]
    blocks: list[gr.Dropdown]
    cards: list[gr.Markdown]
    count: gr.State
    rows: list[gr.Row]
    request: dict  # name -> component: prompt, negative, seed, steps, cfg, size, sampler

    def inputs(self) -> set:
        return {self.base, self.count, *self.files, *self.weights, *self.enabled, *self.blocks,
                *self.request.values()}

    def values(self, raw: dict) -> MixValues:
        n = raw[self.count]
        rows = [(raw[f], float(raw[w]), bool(raw[e]), (raw[b] or "").strip() or None)
                for f, w, e, b in list(zip(self.files, self.weights, self.enabled, self.blocks))[:n] if raw[f]]
        req = {name: raw[c] for name, c in self.request.items()}
        return MixValues((raw[self.base] or "").strip(), rows, **req)


# ---- handlers (plain functions) ------------------------------------------------------------------------
def adapter_choices(state: AppState) -> list[tuple[str, str]]:
    """(label, path) pairs, labelled by run folder and file name, so `-step` files sit under their run."""
    return [(f"{Path(p).parent.name}/{Path(p).name}", p) for p in state.adapters()]


def _busy_note(state: AppState) -> str:
    job = state.jobs.current()
    return " A training job is running: previews share the machine with it and take longer." \
        if job and job.status == "running" else ""


def blended(state: AppState, v: MixValues):
    """The mixer for the base, holding exactly the rows' adapters (paths confined), and their names."""
    rows = [(state.adapter_path(f"Adapter {i + 1}", f), w, on, blocks) for i, (f, w, on, blocks) in enumerate(v.rows)]
    mixer = state.mixer(v.base)
    return mixer, mixer.set_blend(rows)


def describe(mixer, names) -> str:
    """What a preview drew: each enabled adapter's weight, and its block weights when it has them."""
    def one(slot):
        return f"{slot.name} {slot.weight:+.2f}" + (f" (blocks {slot.blocks.text})" if slot.blocks else "")
    return ", ".join(one(mixer.slots[n]) for n in names if mixer.slots[n].enabled) or "base only"


@contextmanager
def all_off(mixer):
    """Inside this block every adapter of `mixer` is off (the base model draws)."""
    saved = {name: slot.enabled for name, slot in mixer.slots.items()}
    for slot in mixer.slots.values():
        slot.enabled = False
    try:
        yield
    finally:
        for name, on in saved.items():
            mixer.slots[name].enabled = on


class Previewer:
    """Draws previews for one app: caches the base image per request, drops previews made stale."""

    def __init__(self, state: AppState):
        self.state = state
        self._tickets = itertools.count(1)
        self._latest = 0
        self._lock = threading.Lock()
        self._base_cache: dict[tuple, object] = {}

    def ticket(self) -> int:
        with self._lock:
            self._latest = next(self._tickets)
            return self._latest

    def base_image(self, mixer, v: MixValues, req: PreviewRequest):
        key = (self.state._mixer_base, req.prompt, req.negative_prompt, req.seed, req.steps, req.cfg_scale,
               req.sampler, req.width, req.height)
        if key not in self._base_cache:
            if len(self._base_cache) > 32:
                self._base_cache.clear()
            with all_off(mixer):
                self._base_cache[key] = mixer.generate(req)
        return self._base_cache[key]

    def preview(self, v: MixValues, steps: int | None = None, ticket: int | None = None):
        """((base, blend), status); (None, None) if a newer request superseded this one before it drew."""
        with self.state.mixer_lock:
            if ticket is not None and ticket != self._latest:
                return None, None
            mixer, names = blended(self.state, v)
            req = v.request(steps)
            picture = mixer.generate(req)
            before = self.base_image(mixer, v, req)
        return (before, picture), f"Seed {req.seed} · {req.steps} steps · {describe(mixer, names)}." \
                                  f"{_busy_note(self.state)}"


def blocks_to_sliders(text: str, layout: int) -> list[float]:
    """A row's block text as one value per block of `BLOCK_IDS` (empty text: all 1)."""
    if not (text or "").strip():
        return [1.0] * len(BLOCK_IDS)
    return list(parse_block_weights(text).values)


def sliders_to_blocks(values: list[float], layout: int) -> str:
    """The sliders of the blocks in `layout`, as the comma list a row's Blocks box takes."""
    by_id = dict(zip(BLOCK_IDS, values))
    return format_block_weights([by_id[b] for b in LAYOUTS[layout]])


def axis_choices() -> list[str]:
    return [*(f"weight of Adapter {i + 1}" for i in range(MAX_ROWS)),
            *(f"blocks of Adapter {i + 1}" for i in range(MAX_ROWS)), "seed", "cfg", "sampler"]


def grid_axis(v: MixValues, names: list[str], choice: str, text: str) -> Axis:
    """An X/Y axis from the grid form: an adapter's weight or block preset, the seed, the CFG or the sampler."""
    separator = ";" if choice.startswith("blocks") else ","
    values = [t.strip() for t in (text or "").split(separator) if t.strip()]
    try:
        if choice.startswith(("weight of", "blocks of")):
            row = int(choice.split()[-1]) - 1
            if row >= len(names):
                raise LoramixError(f"X/Y grid: {choice.split(' of ')[1]} has no adapter selected.")
            kind = "weight" if choice.startswith("weight") else "lbw"
            return Axis(kind, [float(x) for x in values] if kind == "weight" else values, names[row])
        if choice == "seed":
            return Axis("seed", [int(x) for x in values])
        if choice == "cfg":
            return Axis("cfg", [float(x) for x in values])
        return Axis("sampler", values)
    except ValueError:
        raise LoramixError(f"X/Y grid: {choice} takes comma-separated numbers; got {text!r}.") from None


def make_grid(state: AppState, v: MixValues, x_choice: str, x_text: str, y_choice: str, y_text: str):
    """A compare grid over two axes; block presets are separated by `;` (a preset can be a comma list)."""
    with state.mixer_lock:
        mixer, names = blended(state, v)
        x, y = grid_axis(v, names, x_choice, x_text), grid_axis(v, names, y_choice, y_text)
        image = xy_grid(mixer, v.request(), x, y)
    return image, f"Grid done: {len(x.values)} × {len(y.values)} images."


def save_mix(state: AppState, v: MixValues, name: str, replace: bool = False) -> str:
    """Save the whole Mix tab as a small TOML mix preset in outputs/mixes: the rows in order (files, weights,
    block weights, on/off) and the prompt, negative prompt, seed, steps, CFG, sampler and size."""
    name = unique_name("Mix name", plain_name("Mix name", (name or "").strip()), mix_names(state))
    mixes = make_folder(state.outputs / "mixes", within=state.outputs)
    target = check_target(mixes / f"{name}.toml", replace=bool(replace), within=mixes, field="Mix name")
    with state.mixer_lock:
        mixer, names = blended(state, v)
        preset = preset_from_mixer(mixer, names, request=v.mix_request())
        save_mix_preset(target, preset, replace=bool(replace), within=mixes, field="Mix name")
    return f"Saved mix {name} ({len(v.rows)} adapters) to {target}."


def mix_names(state: AppState) -> list[str]:
    return sorted(p.stem for p in (state.outputs / "mixes").glob("*.toml"))


def load_mix(state: AppState, name: str) -> tuple[int, list[tuple[str | None, float, bool, str]], dict]:
    """A saved mix by name as (count, rows of (file, weight, on, blocks) in the saved order, the picture settings
    by `MixValues` name; empty for a mix saved before they were kept)."""
    name = plain_name("Mix", (name or "").strip())
    preset = load_mix_preset(state.confinement.readable("Mix", state.outputs / "mixes" / f"{name}.toml"))
    if len(preset.adapters) > MAX_ROWS:
        raise LoramixError(f"Mix {name}: {len(preset.adapters)} adapters; the Mix tab shows at most {MAX_ROWS}.")
    rows = [(e.path, e.weight, e.enabled, e.blocks.text if e.blocks else "") for e in preset.adapters]
    rows += [(None, 1.0, True, "")] * (MAX_ROWS - len(rows))
    request = preset.request
    settings = {ours: getattr(request, theirs) for ours, theirs in REQUEST_FIELDS.items()} if request else {}
    return max(len(preset.adapters), 1), rows, settings


def export_blend(state: AppState, v: MixValues, name: str, rank: int, precision: str, replace: bool):
    """Write the enabled adapters as one LoRA file in the LoRA folder; an existing file needs `replace`."""
    name = plain_name("Export name", (name or "").strip())
    rules = dict(replace=bool(replace), within=state.lora_dir, field="Export name")
    path = check_target(state.lora_dir / f"{name}.safetensors", **rules)  # before the merge's work
    with state.mixer_lock:
        mixer, names = blended(state, v)
        order = {n: i for i, n in enumerate(names)}
        sources = sorted(mixer.sources(), key=lambda src: order.get(src.name, len(order)))  # the rows' order
        recorded = mix_preset_metadata(preset_from_mixer(mixer, names))  # the rows in order, no prompt
    rank = int(rank or 0)
    adapter, report = save_blend(sources, path, rank=rank, precision=precision, recipe=recorded, **rules)
    note = f" Relative error {report.relative_error:.4f}." if rank else " Exact."
    return str(path), f"Saved {path.name}: {len(adapter.layers)} layers.{note}"


def bake_blend(state: AppState, v: MixValues, name: str, replace: bool):
    """Fuse the blend into the base model as a folder under outputs/baked (replace only a loramix bake)."""
    name = plain_name("Bake name", (name or "").strip())
    baked = make_folder(state.outputs / "baked", within=state.outputs)
    folder, archive = baked / name, baked / f"{name}.zip"
    check_bake_target(folder, replace=bool(replace), within=baked)
    check_target(archive, replace=bool(replace), within=baked, field="Bake name")  # before the bake's work
    with state.mixer_lock:
        mixer, _ = blended(state, v)
        folder = mixer.bake(folder, replace=bool(replace), within=baked)
    archive = write_zip(archive, folder, replace=bool(replace), within=baked, field="Bake name")
    return str(archive), f"Baked into {folder} (download the zip, or load the folder as a base model)."


def empty_hint(state: AppState) -> str:
    """The line above the adapter rows when there is no LoRA file to pick yet."""
    if state.adapters():
        return ""
    return ("No LoRA files yet. Train one in the Train tab (then *Send to Mix*), or drop a `.safetensors` file "
            "on *Add LoRA files*; then pick it under Adapter 1.")


def shown(image, box: int = SHOWN_PX):
    """A picture for the before/after frame: a small one enlarged by the largest whole factor that fits `box`
    (nearest neighbour, so each pixel stays square and sharp); a larger one as it is (the frame fits it whole)."""
    factor = box // max(image.size)
    if factor <= 1:
        return image
    from PIL import Image

    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def shown_pair(pair):
    return tuple(shown(image) for image in pair)


def card_text(state: AppState, path: str | None) -> str:
    if not path:
        return ""
    try:
        return adapter_info(state.adapter_path("Adapter", path)).markdown()
    except LoramixError as e:
        return f"⚠ {e}"


def place_in_rows(files: list[str | None], count: int, path: str) -> tuple[int, list[str | None]]:
    """Put `path` into the first empty shown row (or a new row, or the last one); returns (count, files)."""
    files = list(files)
    slot = next((i for i, f in enumerate(files[:count]) if not f), count if count < MAX_ROWS else MAX_ROWS - 1)
    files[slot] = path
    return max(count, slot + 1), files


def remove_row(rows: list[tuple], count: int, i: int) -> tuple[int, list[tuple]]:
    """Drop row i, shift the rows below up, and append an empty row."""
    rows = list(rows)
    del rows[i]
    rows.append((None, 1.0, True, ""))
    return max(count - 1, 1), rows


def build(state: AppState) -> MixTab:
    with gr.Row():
        base = gr.Textbox(value="", label="Base model", placeholder="empty = the embedded tiny model",
                          info="A diffusers folder, a single .safetensors checkpoint (SD 1.x, 2.x, SDXL) or a hub id.",
                          scale=3, elem_id="mix-base")
        refresh = gr.Button("Refresh adapter list", scale=1)
        upload = gr.File(label="Add LoRA files", file_count="multiple", file_types=[".safetensors"], scale=2,
                         elem_id="mix-upload")
    adapters_note = gr.Markdown(empty_hint(state), elem_id="mix-adapters-note")
    files, weights, enabled, blocks, cards, rows, removes = adapter_rows(adapter_choices(state))
    count = gr.State(1)
    add = gr.Button("+ Add adapter", elem_id="mix-add")
    with gr.Row():
        with gr.Column(scale=2):
            request, draft = request_panel()
            generate = gr.Button("Generate", variant="primary", elem_id="mix-generate")
            status = gr.Markdown(elem_id="mix-status")
        with gr.Column(scale=2):
            image = gr.ImageSlider(label="Before (all adapters off) / after", type="pil", format="png",
                                   elem_id="mix-image", height=SHOWN_PX + 40)
    lbw_row, lbw_layout, lbw_read, lbw_write, lbw_sliders, lbw_message = block_editor_panel()
    mix_name, mix_replace, mix_save, mix_saved, mix_load, mix_message = mix_preset_panel(mix_names(state))
    grid_x, grid_x_values, grid_y, grid_y_values, grid_button, grid_image, grid_message = grid_panel(axis_choices())
    export_name, export_rank, export_precision, replace, export_button, bake_button, download, export_message = \
        export_panel()
    tab = MixTab(base, files, weights, enabled, blocks, cards, count, rows, request)
    tab.adapters_note = adapters_note
    _wire(state, tab, locals())
    return tab


def _wire(state: AppState, tab: MixTab, w: dict) -> None:
    """Connect the widgets to the handlers above. Each action answers beside its own button; every user change
    that a slider release redraws for (a weight typed or slid, On, Blocks, a file picked, Apply) redraws alike."""
    private = dict(api_visibility="private")
    previewer = Previewer(state)

    def guarded(fn, failed):
        def run(*args):
            try:
                return fn(*args)
            except LoramixError as e:
                return (*failed, f"⚠ {e}")
        return run

    def on_generate(raw):
        picture, text = previewer.preview(tab.values(raw), ticket=previewer.ticket())
        return (shown_pair(picture), text) if picture else (gr.skip(), gr.skip())

    def on_live(raw):
        ticket = previewer.ticket()
        picture, text = previewer.preview(tab.values(raw), steps=int(raw[w["draft"]]), ticket=ticket)
        return (shown_pair(picture), text) if picture else (gr.skip(), gr.skip())

    out = [w["image"], w["status"]]
    inputs = tab.inputs()
    w["generate"].click(guarded(on_generate, (gr.skip(),)), inputs, out, concurrency_limit=1,
                        concurrency_id="preview", **private)
    live_inputs = inputs | {w["draft"]}
    live = dict(fn=guarded(on_live, (gr.skip(),)), inputs=live_inputs, outputs=out, concurrency_limit=1,
                concurrency_id="preview", trigger_mode="always_last", **private)
    for block in tab.blocks:
        block.input(**live)
    for slider, box in zip(tab.weights, tab.enabled):
        slider.release(**live)  # the range let go, and the number box left (blur)
        slider.input(**live)  # a number typed (Enter): the range's drag sends release as well, always_last
        box.input(**live)
    w["grid_button"].click(
        guarded(lambda raw: make_grid(state, tab.values(raw), raw[w["grid_x"]], raw[w["grid_x_values"]],
                                      raw[w["grid_y"]], raw[w["grid_y_values"]]), (gr.skip(),)),
        inputs | {w["grid_x"], w["grid_x_values"], w["grid_y"], w["grid_y_values"]},
        [w["grid_image"], w["grid_message"]], concurrency_limit=1, concurrency_id="preview", **private)

    def on_save_mix(raw):
        message = save_mix(state, tab.values(raw), raw[w["mix_name"]], raw[w["mix_replace"]])
        return gr.update(choices=mix_names(state), value=raw[w["mix_name"]]), message

    def on_load_mix(name):
        count, rows, settings = load_mix(state, name)
        out = {tab.count: count, w["mix_message"]: f"Loaded mix {name}."}
        for j, (f, wt, on, b) in enumerate(rows):
            out[tab.files[j]] = gr.update(choices=adapter_choices(state), value=f)
            out[tab.weights[j]], out[tab.enabled[j]], out[tab.blocks[j]] = wt, on, b
            out[tab.rows[j]] = gr.update(visible=j < count)
        for key, value in settings.items():
            out[tab.request[key]] = value
        return out

    def load_or_say(name):
        try:
            return on_load_mix(name)
        except LoramixError as e:
            return {w["mix_message"]: f"⚠ {e}"}

    def on_layout(choice):
        keep = set(LAYOUTS[LAYOUT_CHOICES[choice]])
        return [gr.update(visible=b in keep) for b in BLOCK_IDS]

    def on_read(raw):
        i = int(raw[w["lbw_row"]].split()[-1]) - 1
        try:
            values = blocks_to_sliders(raw[tab.blocks[i]], LAYOUT_CHOICES[raw[w["lbw_layout"]]])
        except LoramixError as e:
            return {w["lbw_message"]: f"⚠ {e}"}
        return {**dict(zip(w["lbw_sliders"], values)), w["lbw_message"]: f"Block weights of Adapter {i + 1} loaded."}

    def on_write(raw):
        i = int(raw[w["lbw_row"]].split()[-1]) - 1
        text = sliders_to_blocks([raw[c] for c in w["lbw_sliders"]], LAYOUT_CHOICES[raw[w["lbw_layout"]]])
        return {tab.blocks[i]: text, w["lbw_message"]: f"Adapter {i + 1} blocks: {text}; the preview redraws."}

    w["lbw_layout"].change(on_layout, w["lbw_layout"], w["lbw_sliders"], **private)
    w["lbw_read"].click(on_read, {w["lbw_row"], w["lbw_layout"], *tab.blocks}, [*w["lbw_sliders"], w["lbw_message"]],
                        **private)
    w["lbw_write"].click(on_write, {w["lbw_row"], w["lbw_layout"], *w["lbw_sliders"]},
                         [*tab.blocks, w["lbw_message"]], **private).then(**live)
    w["mix_save"].click(guarded(on_save_mix, (gr.skip(),)), inputs | {w["mix_name"], w["mix_replace"]},
                        [w["mix_saved"], w["mix_message"]],
                        concurrency_limit=1, concurrency_id="preview", **private)
    w["mix_saved"].focus(lambda: gr.update(choices=mix_names(state)), None, w["mix_saved"], **private)
    w["mix_load"].click(load_or_say, w["mix_saved"],
                        [tab.count, w["mix_message"], *tab.files, *tab.weights, *tab.enabled, *tab.blocks, *tab.rows,
                         *tab.request.values()], **private).then(**live)
    w["export_button"].click(
        guarded(lambda raw: export_blend(state, tab.values(raw), raw[w["export_name"]], raw[w["export_rank"]],
                                         raw[w["export_precision"]], raw[w["replace"]]), (gr.skip(),)),
        inputs | {w["export_name"], w["export_rank"], w["export_precision"], w["replace"]},
        [w["download"], w["export_message"]], concurrency_limit=1, concurrency_id="preview", **private)
    w["bake_button"].click(
        guarded(lambda raw: bake_blend(state, tab.values(raw), raw[w["export_name"]], raw[w["replace"]]),
                (gr.skip(),)),
        inputs | {w["export_name"], w["replace"]}, [w["download"], w["export_message"]], concurrency_limit=1,
        concurrency_id="preview", **private)

    def on_add(n):
        n = min(n + 1, MAX_ROWS)
        return [n] + [gr.update(visible=i < n) for i in range(MAX_ROWS)]

    def on_remove(i):
        def handler(raw):
            old = [(raw[f], raw[wt], raw[e], raw[b]) for f, wt, e, b in zip(tab.files, tab.weights, tab.enabled,
                                                                               tab.blocks)]
            n, new = remove_row(old, raw[tab.count], i)
            result = {tab.count: n}
            for j in range(MAX_ROWS):
                result[tab.files[j]], result[tab.weights[j]], result[tab.enabled[j]], result[tab.blocks[j]] = new[j]
                result[tab.rows[j]] = gr.update(visible=j < n)
                result[tab.cards[j]] = card_text(state, new[j][0])
            return result
        return handler

    def on_refresh():
        listed = adapter_choices(state)
        return [*(gr.update(choices=listed) for _ in tab.files), empty_hint(state)]

    def on_upload(uploaded):
        try:
            state.import_files([getattr(f, "name", f) for f in uploaded or []], (".safetensors",), state.lora_dir)
        except LoramixError as e:
            return [*on_refresh()[:-1], f"⚠ {e}"]
        return on_refresh()


    w["add"].click(on_add, tab.count, [tab.count, *tab.rows], **private)
    for i, button in enumerate(w["removes"]):
        button.click(on_remove(i), {tab.count, *tab.files, *tab.weights, *tab.enabled, *tab.blocks},
                     [tab.count, *tab.files, *tab.weights, *tab.enabled, *tab.blocks, *tab.rows, *tab.cards],
                     **private).then(**live)
    for f, card in zip(tab.files, tab.cards):
        f.change(lambda path: (card_text(state, path), empty_hint(state)), f, [card, tab.adapters_note], **private)
        # a file picked: an earlier file's error beside the adapters goes, and the preview redraws
        f.input(lambda: empty_hint(state), None, tab.adapters_note, **private).then(**live)
    w["refresh"].click(on_refresh, None, [*tab.files, tab.adapters_note], **private)
    w["upload"].upload(on_upload, w["upload"], [*tab.files, tab.adapters_note], **private)
    tab.first_view = (on_refresh, None, [*tab.files, tab.adapters_note])


def send_to_mix(tab: MixTab, state: AppState, selected, message, tabs):
    """Handler for the Train tab's button: the LoRA of the job that tab shows goes into the first empty row, and
    the Mix tab opens; a job without a LoRA file says so beside the button and the Train tab stays."""
    from webui.train_tab import finished_lora, shown_job

    def handler(raw):
        job = shown_job(state, raw[selected])
        path = finished_lora(job)
        if path is None:
            why = "no job yet" if job is None else f"job {job.id} is {job.status} and has no LoRA file yet"
            return {message: f"⚠ Send to Mix: {why}.", tabs: gr.skip()}
        count, files = place_in_rows([raw[f] for f in tab.files], raw[tab.count], str(Path(path).resolve()))
        listed = adapter_choices(state)
        out = {tab.count: count, message: f"Sent {Path(path).name} (job {job.id}) to the Mix tab.",
               tabs: gr.Tabs(selected="mix")}
        for f, value in zip(tab.files, files):
            out[f] = gr.update(choices=listed, value=value)
        for i, row in enumerate(tab.rows):
            out[row] = gr.update(visible=i < count)
        return out
    return handler
