"""Compare-grid axes: parsing, what each axis changes per cell, restored sliders, labels in the margins."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from loramix.core.errors import LoramixError
from loramix.mix.block_weights import parse_block_weights
from loramix.mix.lora_spec import parse_axis
from loramix.mix.mixer import PreviewRequest
from loramix.mix.xy_grid import MIN_CELL, adapter_name, xy_grid


def test_parse_axis_forms():
    assert (parse_axis("weight:ink:-1,0,1").adapter, parse_axis("weight:ink:-1,0,1").values) == ("ink", [-1, 0, 1])
    assert parse_axis("weight:C:/x/ink.safetensors:0.5").adapter == "C:/x/ink.safetensors"
    assert parse_axis("lbw:ink:outd,ALL").values == ["OUTD", "ALL"]
    assert parse_axis("cfg:5,7.5").values == [5.0, 7.5] and parse_axis("seed:1,2").values == [1, 2]
    assert parse_axis("sampler:ddim,euler").values == ["ddim", "euler"]


@pytest.mark.parametrize("text, words", [
    ("cfg:5,x", ["'x'", "not a number"]),
    ("seed:1.5", ["'1.5'", "integer"]),
    ("sampler:ddim,plms", ["'plms'", "euler"]),
    ("lbw:ink:OUTD,NOPE", ["'NOPE'", "not a preset"]),
    ("weight:0,1", ["weight:NAME"]),
    ("steps:1,2", ["cfg:5,7", "sampler:"]),
])
def test_bad_axes_name_the_token(text, words):
    with pytest.raises(LoramixError) as e:
        parse_axis(text)
    for word in words:
        assert word in str(e.value)


def test_adapter_name_by_name_stem_or_path(tmp_path):
    loaded = {"ink": tmp_path / "ink.safetensors", "ink#2": tmp_path / "b" / "ink.safetensors",
              "sun": tmp_path / "sun.safetensors"}
    assert adapter_name("ink#2", loaded) == "ink#2"
    assert adapter_name(str(tmp_path / "b" / "ink.safetensors"), loaded) == "ink#2"
    assert adapter_name("sun", loaded) == "sun"
    with pytest.raises(LoramixError, match="'moon' is not loaded; name one of: ink"):
        adapter_name("moon", loaded)


@dataclass
class FakeSlot:
    path: Path
    weight: float = 0.3
    te_weight: float | None = 0.2
    enabled: bool = False
    blocks: object = None


@dataclass
class FakeMixer:
    """Draws each cell as a colour that encodes what the cell was asked for."""

    slots: dict = field(default_factory=lambda: {"ink": FakeSlot(Path("ink.safetensors"))})
    seen: list = field(default_factory=list)

    def set_weight(self, name, weight, te_weight=None, enabled=None, blocks="keep"):
        slot = self.slots[name]
        slot.weight, slot.te_weight = weight, te_weight
        slot.enabled = slot.enabled if enabled is None else enabled
        if blocks != "keep":
            slot.blocks = parse_block_weights(blocks) if isinstance(blocks, str) else blocks

    def generate(self, req: PreviewRequest):
        s = self.slots["ink"]
        self.seen.append((req.sampler, req.cfg_scale, req.seed, s.weight, s.te_weight, s.enabled,
                          s.blocks.text if s.blocks else None))
        return Image.new("RGB", (64, 64), (len(self.seen) * 20, int(req.cfg_scale * 10), int(s.weight * 50) + 100))


def test_each_axis_changes_its_field_and_the_sliders_come_back():
    mixer = FakeMixer()
    original = parse_block_weights("INS")
    mixer.slots["ink"].blocks = original
    req = PreviewRequest("p", seed=5, steps=2, cfg_scale=7.0, sampler="ddim")
    grid = xy_grid(mixer, req, parse_axis("sampler:ddim,euler"), parse_axis("cfg:3,9"))
    assert [s[:2] for s in mixer.seen] == [("ddim", 3.0), ("euler", 3.0), ("ddim", 9.0), ("euler", 9.0)]
    assert grid.size[1] == 36 + 2 * MIN_CELL
    mixer.seen.clear()
    done = []
    xy_grid(mixer, req, parse_axis("lbw:ink:OUTD,ALL"), parse_axis("weight:ink.safetensors:0.5,1"),
            on_cell=lambda i, n: done.append((i, n)))
    assert [(s[3], s[4], s[5], s[6]) for s in mixer.seen] == [
        (0.5, 0.2, True, "OUTD"), (0.5, 0.2, True, "ALL"), (1.0, 0.2, True, "OUTD"), (1.0, 0.2, True, "ALL")]
    assert done == [(1, 4), (2, 4), (3, 4), (4, 4)]
    slot = mixer.slots["ink"]
    assert (slot.weight, slot.te_weight, slot.enabled, slot.blocks) == (0.3, 0.2, False, original)


def test_labels_sit_in_the_margins_and_long_ones_wrap():
    mixer = FakeMixer()
    vector = "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0"
    assert parse_axis(f"lbw:ink:ALL;{vector}").values == ["ALL", vector]  # ; between vectors
    grid = xy_grid(mixer, PreviewRequest("p"), parse_axis("lbw:ink:ALL,OUTD"), parse_axis("seed:1"))
    top = grid.size[1] - MIN_CELL
    left = grid.size[0] - 2 * MIN_CELL
    for c in range(2):  # every cell is its own flat colour: no text was drawn over it
        cell = grid.crop((left + c * MIN_CELL, top, left + (c + 1) * MIN_CELL, top + MIN_CELL))
        assert len(set(cell.getdata())) == 1
    assert min(grid.crop((0, 0, grid.size[0], top)).convert("L").getdata()) < 100  # column labels above
    assert min(grid.crop((0, top, left, grid.size[1])).convert("L").getdata()) < 100  # row label at the left
    from loramix.mix.xy_grid import compose

    cells = [[Image.new("RGB", (64, 64), "gray")] * 2]
    wide = compose(cells, ["ALL", vector], ["seed 1"], "x: block weights of ink")
    assert wide.size[0] - 2 * MIN_CELL < 100 and wide.size[1] > 36 + MIN_CELL  # the vector wrapped, not widened
