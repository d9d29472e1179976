"""What the Mix tab does, as plain functions of the app state and the form's values (`MixValues`: the base, the
rows and the engine's own `PreviewRequest`): the live preview with its cached "before" picture, the X/Y grid, mix
presets, export and bake, the adapter cards and the rows' bookkeeping. Tests call them without a browser;
`webui.mix_tab` builds the page and wires its widgets to them.
"""

from __future__ import annotations

import itertools
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

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
    load_mix_preset,
    mix_preset_metadata,
    preset_from_mixer,
    save_mix_preset,
)
from loramix.mix.mixer import check_bake_target
from loramix.mix.request import PreviewRequest
from loramix.mix.xy_grid import Axis, xy_grid
from webui.mix_panels import MAX_ROWS
from webui.state import AppState

SHOWN_PX = 384  # the before/after frame: a smaller picture is shown at the largest whole scale that fits


@dataclass
class MixValues:
    """What the Mix form holds (built from `{component: value}` by `MixTab.values`): the base, the shown rows
    with a file, and the picture settings as the engine's own request (its defaults are the only defaults)."""

    base: str = ""
    rows: list[tuple[str, float, bool, str | None]] = field(default_factory=list)  # (file, weight, on, blocks)
    request: PreviewRequest = field(default_factory=lambda: PreviewRequest(""))


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


def precision_note(mixer) -> str:
    """Says when a preview was not computed in fp32 (`Mixer.from_base`'s `auto`: bf16 on a CPU that multiplies
    bf16 natively), so a person comparing it with another program's fp32 picture knows why it differs."""
    name = str(mixer.dtype).removeprefix("torch.")
    if name == "float32":
        return ""
    on_cpu = mixer.components.unet.device.type == "cpu"
    return f" · computed in {name}" + (" (a bake is written in float32)" if on_cpu else "")


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

    def base_image(self, mixer, req: PreviewRequest):
        key = (self.state.loaded_base, req.prompt, req.negative_prompt, req.seed, req.steps, req.cfg_scale,
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
            req = v.request if steps is None else replace(v.request, steps=int(steps))
            picture = mixer.generate(req)
            before = self.base_image(mixer, req)
        return (before, picture), f"Seed {req.seed} · {req.steps} steps · {describe(mixer, names)}" \
                                  f"{precision_note(mixer)}.{_busy_note(self.state)}"


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
        image = xy_grid(mixer, v.request, x, y)
    return image, f"Grid done: {len(x.values)} × {len(y.values)} images."


def save_mix(state: AppState, v: MixValues, name: str, replace: bool = False) -> str:
    """Save the whole Mix tab as a small TOML mix preset in outputs/mixes: the rows in order (files, weights,
    block weights, on/off) and the prompt, negative prompt, seed, steps, CFG, sampler and size."""
    name = unique_name("Mix name", plain_name("Mix name", (name or "").strip()), mix_names(state))
    mixes = make_folder(state.outputs / "mixes", within=state.outputs)
    target = check_target(mixes / f"{name}.toml", replace=bool(replace), within=mixes, field="Mix name")
    with state.mixer_lock:
        mixer, names = blended(state, v)
        preset = preset_from_mixer(mixer, names, request=v.request)
        save_mix_preset(target, preset, replace=bool(replace), within=mixes, field="Mix name")
    return f"Saved mix {name} ({len(v.rows)} adapters) to {target}."


def mix_names(state: AppState) -> list[str]:
    return sorted(p.stem for p in (state.outputs / "mixes").glob("*.toml"))


def load_mix(state: AppState, name: str) -> tuple[int, list[tuple[str | None, float, bool, str]], dict]:
    """A saved mix by name as (count, rows of (file, weight, on, blocks) in the saved order, the picture settings
    by `RequestPanel.fields()` name; empty for a mix saved before they were kept)."""
    name = plain_name("Mix", (name or "").strip())
    preset = load_mix_preset(state.confinement.readable("Mix", state.outputs / "mixes" / f"{name}.toml"))
    if len(preset.adapters) > MAX_ROWS:
        raise LoramixError(f"Mix {name}: {len(preset.adapters)} adapters; the Mix tab shows at most {MAX_ROWS}.")
    rows = [(e.path, e.weight, e.enabled, e.blocks.text if e.blocks else "") for e in preset.adapters]
    rows += [(None, 1.0, True, "")] * (MAX_ROWS - len(rows))
    settings = preset.request_table() if preset.request else {}
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
