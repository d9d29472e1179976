"""X/Y compare grids: previews across two axes (an adapter's weight or block preset, seed, CFG, sampler),
composed into one image with the labels in margins outside the cells."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from loramix.core.errors import LoramixError
from loramix.mix.mixer import Mixer, PreviewRequest

AXIS_KINDS = ("weight", "lbw", "seed", "cfg", "sampler")
_TITLES = {"weight": "weight of {}", "lbw": "block weights of {}", "seed": "seed", "cfg": "CFG", "sampler": "sampler"}


@dataclass
class Axis:
    kind: str  # one of AXIS_KINDS; "weight" and "lbw" act on `adapter`
    values: list  # numbers (weight, seed, cfg), block-weight texts (lbw) or sampler names
    adapter: str = ""  # an adapter's name or its file's path

    def label(self, value) -> str:
        if self.kind == "weight":
            return f"{float(value):+.2f}"
        if self.kind == "seed":
            return f"seed {int(value)}"
        if self.kind == "cfg":
            return f"cfg {float(value):g}"
        return str(value)

    @property
    def title(self) -> str:
        return _TITLES.get(self.kind, self.kind).format(self.adapter)

    def check(self) -> None:
        if self.kind not in AXIS_KINDS:
            raise LoramixError(f"grid axis {self.kind!r}: choose one of {', '.join(AXIS_KINDS)}.")
        if not self.values:
            raise LoramixError(f"grid axis {self.kind}: give at least one value.")
        if self.kind in ("weight", "lbw") and not self.adapter:
            raise LoramixError(f"grid axis {self.kind}: name the adapter it changes.")


def adapter_name(wanted: str, adapters: dict[str, str | Path]) -> str:
    """The loaded adapter that `wanted` names, by its name (the file stem) or its file's path;
    `adapters` maps names to paths. Raises a sentence listing what is loaded."""
    if wanted in adapters:
        return wanted
    try:
        wanted_path = Path(wanted).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        wanted_path = None
    for name, path in adapters.items():
        if wanted_path is not None and Path(path).expanduser().resolve() == wanted_path:
            return name
    stems = [name for name, path in adapters.items() if Path(path).stem == wanted]
    if len(stems) == 1:
        return stems[0]
    loaded = ", ".join(f"{n} ({p})" for n, p in adapters.items()) or "none"
    raise LoramixError(f"grid axis adapter {wanted!r} is not loaded; name one of: {loaded}.")


def xy_grid(mixer: Mixer, req: PreviewRequest, x: Axis, y: Axis,
            on_cell: Callable[[int, int], None] | None = None) -> Image.Image:
    """Generate every (x, y) cell, then restore the sliders as they were. `on_cell(done, total)` is
    called after each cell (for a progress bar); the grid is finished when this returns."""
    loaded = {name: slot.path for name, slot in mixer.slots.items()}
    for axis in (x, y):
        axis.check()
    names = {id(axis): adapter_name(axis.adapter, loaded) if axis.adapter else "" for axis in (x, y)}
    saved = {name: (s.weight, s.te_weight, s.enabled, s.blocks) for name, s in mixer.slots.items()}
    cells, total = [], len(x.values) * len(y.values)
    try:
        for yv in y.values:
            row = []
            for xv in x.values:
                cell_req = req
                for axis, value in ((x, xv), (y, yv)):
                    cell_req = _apply(mixer, cell_req, axis, names[id(axis)], value)
                row.append(mixer.generate(cell_req))
                if on_cell is not None:
                    on_cell(len(cells) * len(x.values) + len(row), total)
            cells.append(row)
    finally:
        for name, (w, tw, en, blocks) in saved.items():
            mixer.set_weight(name, w, tw, en, blocks=blocks)
    return compose(cells, [x.label(v) for v in x.values], [y.label(v) for v in y.values],
                   f"x: {x.title}   y: {y.title}")


def _apply(mixer: Mixer, req: PreviewRequest, axis: Axis, name: str, value) -> PreviewRequest:
    if axis.kind == "seed":
        return replace(req, seed=int(value))
    if axis.kind == "cfg":
        return replace(req, cfg_scale=float(value))
    if axis.kind == "sampler":
        return replace(req, sampler=str(value))
    slot = mixer.slots[name]
    if axis.kind == "weight":
        mixer.set_weight(name, float(value), slot.te_weight, enabled=True)
    else:
        mixer.set_weight(name, slot.weight, slot.te_weight, enabled=True, blocks=str(value))
    return req


MIN_CELL = 128  # small previews (the embedded model draws 64 px) are enlarged (nearest) to this side
FONT_SIZE = 13  # readable beside a 64 px preview; labels never cover a cell
LINE = 16
PAD = 6


def _font(size: int = FONT_SIZE):
    return ImageFont.load_default(size=size)


def _wrap(text: str, font, width: int) -> list[str]:
    """Split `text` into lines no wider than `width` pixels (at commas and spaces, else anywhere)."""
    lines, line = [], ""
    for ch in text:
        if font.getlength(line + ch) > width and line:
            cut = max(line.rfind(","), line.rfind(" "))
            if 0 < cut < len(line) - 1:
                lines.append(line[:cut + 1].rstrip())
                line = line[cut + 1:].lstrip()
            else:
                lines.append(line)
                line = ""
        line += ch
    return lines + [line] if line else lines


def compose(cells: list[list[Image.Image]], col_labels: list[str], row_labels: list[str],
            title: str = "") -> Image.Image:
    """Cells in a grid, column labels in a top margin, row labels in a left margin, the title above."""
    font = _font()
    line_h = LINE
    factor = max(1, -(-MIN_CELL // cells[0][0].size[0]))
    w, h = cells[0][0].size[0] * factor, cells[0][0].size[1] * factor
    cols = [_wrap(label, font, w - 2 * PAD) for label in col_labels]
    row_width = min(max(font.getlength(label) for label in row_labels), 3 * w) + 2 * PAD
    rows = [_wrap(label, font, int(row_width) - 2 * PAD) for label in row_labels]
    left = int(row_width)
    titles = _wrap(title, font, max(left + w * len(col_labels) - 2 * PAD, 8 * FONT_SIZE))
    title_h = line_h * len(titles) + 2
    top = title_h + line_h * max(len(lines) for lines in cols) + 2
    width = max(left + w * len(col_labels), int(max(font.getlength(t) for t in titles)) + 2 * PAD)
    grid = Image.new("RGB", (width, top + h * len(row_labels)), "white")
    draw = ImageDraw.Draw(grid)
    for i, line in enumerate(titles):
        draw.text((PAD, 1 + i * line_h), line, fill="black", font=font)
    for c, lines in enumerate(cols):
        for i, line in enumerate(lines):
            x = left + c * w + (w - font.getlength(line)) / 2
            draw.text((x, title_h + i * line_h), line, fill="black", font=font)
    for r, lines in enumerate(rows):
        y0 = top + r * h + (h - line_h * len(lines)) // 2
        for i, line in enumerate(lines):
            draw.text((PAD, y0 + i * line_h), line, fill="black", font=font)
        for c, image in enumerate(cells[r]):
            grid.paste(image.resize((w, h), Image.Resampling.NEAREST), (left + c * w, top + r * h))
    return grid
