"""X/Y grids: previews across one adapter's weight x seeds, or two adapters' weights, in one labelled image."""

from __future__ import annotations

from dataclasses import dataclass, replace

from PIL import Image, ImageDraw, ImageFont

from loramix.errors import LoramixError
from loramix.mixer import Mixer, PreviewRequest


@dataclass
class Axis:
    kind: str  # "weight" (of `adapter`) or "seed"
    values: list[float]
    adapter: str = ""

    def label(self, value) -> str:
        return f"{value:+.2f}" if self.kind == "weight" else f"seed {int(value)}"

    @property
    def title(self) -> str:
        return f"weight of {self.adapter}" if self.kind == "weight" else "seed"


def xy_grid(mixer: Mixer, req: PreviewRequest, x: Axis, y: Axis) -> Image.Image:
    """Generate every (x, y) cell, then restore the sliders as they were."""
    for axis in (x, y):
        if axis.kind not in ("weight", "seed"):
            raise LoramixError(f"grid axis {axis.kind!r}: choose weight or seed.")
        if axis.kind == "weight":
            mixer._slot(axis.adapter)
        if not axis.values:
            raise LoramixError(f"grid axis {axis.kind}: give at least one value.")
    saved = {name: (s.weight, s.te_weight, s.enabled) for name, s in mixer.slots.items()}
    cells = []
    try:
        for yv in y.values:
            row = []
            for xv in x.values:
                cell_req = req
                for axis, value in ((x, xv), (y, yv)):
                    if axis.kind == "seed":
                        cell_req = replace(cell_req, seed=int(value))
                    else:
                        mixer.set_weight(axis.adapter, float(value), enabled=True)
                row.append(mixer.generate(cell_req))
            cells.append(row)
    finally:
        for name, (w, tw, en) in saved.items():
            mixer.set_weight(name, w, tw, en)
    return compose(cells, [x.label(v) for v in x.values], [y.label(v) for v in y.values],
                   f"x: {x.title}, y: {y.title}")


MIN_CELL = 128  # small previews (the embedded model draws 64 px) are enlarged so labels fit


def compose(cells: list[list[Image.Image]], col_labels: list[str], row_labels: list[str],
            title: str = "") -> Image.Image:
    font = ImageFont.load_default()
    factor = max(1, -(-MIN_CELL // cells[0][0].size[0]))
    w, h = cells[0][0].size[0] * factor, cells[0][0].size[1] * factor
    left, top = max(60, 7 * max(len(s) for s in row_labels)), 36
    grid = Image.new("RGB", (left + w * len(col_labels), top + h * len(row_labels)), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((2, 2), title, fill="black", font=font)
    for c, label in enumerate(col_labels):
        draw.text((left + c * w + 2, 20), label, fill="black", font=font)
    for r, label in enumerate(row_labels):
        draw.text((2, top + r * h + h // 2 - 6), label, fill="black", font=font)
        for c, image in enumerate(cells[r]):
            grid.paste(image.resize((w, h), Image.Resampling.NEAREST), (left + c * w, top + r * h))
    return grid
