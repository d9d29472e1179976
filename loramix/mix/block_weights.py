"""Per-block weights in the syntax of A1111's lora-block-weight extension: presets, vectors, layer -> block.

A vector names UNet blocks by their place in the original (LDM) UNet: `BASE` (the text encoders),
`IN00`..`IN11` (`input_blocks.N`), `MID` (`middle_block`), `OUT00`..`OUT11` (`output_blocks.N`). As in the
extension, a vector of 12, 17, 20 or 26 values is read by the block names of that layout:

    17 (SD 1.x / 2.x LoRA)  BASE,IN01,IN02,IN04,IN05,IN07,IN08,MID,OUT03,…,OUT11
    26 (SD 1.x / 2.x, all)  BASE,IN00,…,IN11,MID,OUT00,…,OUT11
    12 (SDXL LoRA)          BASE,IN04,IN05,IN07,IN08,MID,OUT00,…,OUT05
    20 (SDXL, all)          BASE,IN00,…,IN08,MID,OUT00,…,OUT08

and a block the layout does not name gets 0 (the extension's rule). A layer outside every block (time
embedding, `conv_out`, SDXL's size embedding) keeps its weight (the extension's rule too).

Named presets are the extension's own 17-value vectors (`INS`, `IND`, `INALL`, `MIDD`, `OUTD`, `OUTS`,
`OUTALL`); `ALL`, `NONE` and `ALL0.5` are the same number in every block of every layout. That is a chosen
difference (`UNIFORM_NOTE`): the extension's ALL is 17 ones expanded like any 17-value vector, so it leaves
the 9 blocks the 17 layout does not name at 0 (IN00, IN03, IN06, IN09–IN11, OUT00–OUT02: a LoCon's convs,
and on SDXL the attention of output_blocks 0–2). On an SD 1.x LoRA without convs the two agree on every layer.
The depth presets describe SD 1.x blocks, so an SDXL model refuses them (write 12 values instead): the
extension accepts them on SDXL through the same expansion, where e.g. OUTD's OUT03–OUT06 land on SDXL's
middle and upper output levels rather than the deep ones its name promises.

Layer names are kohya's (`lora_unet_down_blocks_1_attentions_0_…` for SD 1.x, LDM names
`lora_unet_input_blocks_4_1_…` for SDXL) or diffusers module paths. A diffusers block
`down_blocks.i.{resnets|attentions}.j` is `IN{3i+j+1}`, `up_blocks.i.….j` is `OUT{3i+j}`: SD 1.x's numbering,
with 2 layers per block. A tiny model (1 layer per block, fewer levels) is numbered by the same rule, so
its blocks are the SD 1.x blocks at the same level and position: the test model (2 levels) has attention
in IN01, MID, OUT03 and OUT04, the embedded model (4 levels) in IN04, IN07, IN10, MID, OUT00, OUT03, OUT06.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from loramix.core.errors import LoramixError

BLOCK_IDS = ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["MID"] + [f"OUT{i:02d}" for i in range(12)]
MID = BLOCK_IDS.index("MID")
LAYOUTS = {
    17: ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "MID"] + [f"OUT{i:02d}" for i in range(3, 12)],
    26: BLOCK_IDS,
    12: ["BASE", "IN04", "IN05", "IN07", "IN08", "MID"] + [f"OUT{i:02d}" for i in range(6)],
    20: ["BASE"] + [f"IN{i:02d}" for i in range(9)] + ["MID"] + [f"OUT{i:02d}" for i in range(9)],
}
# The layouts each family accepts; the first is the one a UI shows as a row of sliders (tiny models: all
# 26, since their deepest level (IN10, OUT00) may hold attention, which the 17-value layout cannot reach).
FAMILY_LAYOUTS = {"sd1": (17, 26), "sd2": (17, 26), "sdxl": (12, 20), "tiny": (26, 17, 12, 20)}
UNIFORM_PRESETS = {"NONE": 0.0, "ALL": 1.0, "ALL0.5": 0.5}
DEPTH_PRESETS = {  # the extension's DEF_WEIGHT_PRESET, 17 values each
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
    "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
}
PRESET_NAMES = ["ALL", "NONE", "ALL0.5", *DEPTH_PRESETS]
UNIFORM_NOTE = ("ALL, NONE and ALL0.5 set every block, a LoCon's conv blocks and SDXL's included; the A1111 "
                "lora-block-weight extension's ALL leaves IN00, IN03, IN06, IN09-IN11 and OUT00-OUT02 at 0.")


@dataclass(frozen=True)
class BlockWeights:
    """One multiplier per block (26, in `BLOCK_IDS` order) and the text the user wrote."""

    text: str  # a preset name or the comma list as given, e.g. "OUTD" or "1,0,0,…"
    values: tuple[float, ...]
    layout: int = 0  # how many values the text gave (12/17/20/26); 0 for ALL / NONE / ALL0.5

    def value(self, block: int | None) -> float:
        """The multiplier of block `block` (an index into `BLOCK_IDS`); a layer in no block gets 1."""
        return 1.0 if block is None else self.values[block]

    def check_family(self, family) -> None:
        """Refuse a layout that names another family's blocks (e.g. SD 1.x's 17 values on SDXL)."""
        name = getattr(family, "name", family) or ""
        label = getattr(family, "label", name)
        allowed = FAMILY_LAYOUTS.get(name)
        if self.layout == 0 or allowed is None or self.layout in allowed:
            return
        counts = " or ".join(str(n) for n in allowed)
        what = f"{self.text} is an SD 1.x preset, whose blocks are not {label}'s" if self.text in DEPTH_PRESETS else \
            f"{self.layout} values name the blocks of another model family"
        raise LoramixError(f"block weights {self.text!r}: {what}; this {label} base model takes {counts} values "
                           f"({','.join(LAYOUTS[allowed[0]])}) or ALL, NONE, ALL0.5.")

    def in_layout(self, n: int) -> list[float]:
        """The values of the blocks of layout `n` (12, 17, 20 or 26), in that layout's order."""
        return [self.values[BLOCK_IDS.index(b)] for b in LAYOUTS[n]]


def parse_block_weights(text: str) -> BlockWeights:
    """A preset name (`OUTD`, `ALL`, …) or 12/17/20/26 comma-separated numbers."""
    raw = str(text).strip()
    name = raw.upper()
    if name in UNIFORM_PRESETS:
        return BlockWeights(name, (UNIFORM_PRESETS[name],) * len(BLOCK_IDS))
    if name in DEPTH_PRESETS:
        return _from_list(name, DEPTH_PRESETS[name])
    if "," not in raw:
        try:
            float(raw)
        except ValueError:
            raise LoramixError(f"block weights {raw!r}: not a preset name; choose one of {', '.join(PRESET_NAMES)} "
                               "or write 17 comma-separated numbers (12 for SDXL).") from None
    return _from_list(raw, raw)


def _from_list(label: str, text: str) -> BlockWeights:
    tokens = [t.strip() for t in text.split(",")]
    numbers = []
    for i, token in enumerate(tokens, 1):
        try:
            numbers.append(float(token))
        except ValueError:
            raise LoramixError(f"block weights {label!r}: value {i} ({token!r}) is not a number.") from None
    if len(numbers) not in LAYOUTS:
        raise LoramixError(f"block weights {label!r}: {len(numbers)} values; give 17 (SD 1.x: "
                           f"{','.join(LAYOUTS[17])}), 12 (SDXL: {','.join(LAYOUTS[12])}), 26 or 20.")
    values = [0.0] * len(BLOCK_IDS)
    for block, number in zip(LAYOUTS[len(numbers)], numbers):
        values[BLOCK_IDS.index(block)] = number
    return BlockWeights(label if label in DEPTH_PRESETS else ",".join(_short(v) for v in numbers),
                        tuple(values), len(numbers))


def _short(value: float) -> str:
    return f"{value:g}"


def format_block_weights(values: list[float]) -> str:
    """A vector as the comma list users type (`1,0,0.5,…`)."""
    return ",".join(_short(float(v)) for v in values)


_DIFFUSERS = re.compile(r"(down_blocks|up_blocks)_(\d+)_(resnets|attentions|downsamplers|upsamplers)_(\d+)_")
_LDM = re.compile(r"(input_blocks|output_blocks)_(\d+)_")


def block_of(layer_name: str, family=None, layers_per_block: int = 2) -> int | None:
    """The block (index into `BLOCK_IDS`) of a kohya layer name or diffusers module path; None outside
    every block. `family` is accepted for symmetry with the rest of the engine: names alone decide
    (SD 1.x, 2.x and SDXL all have 2 layers per block; a tiny model passes its own count)."""
    return _block_of(layer_name.replace(".", "_") + "_", int(layers_per_block))


@lru_cache(maxsize=65536)
def _block_of(name: str, per_block: int) -> int | None:
    if name.startswith("lora_te"):
        return 0
    if not name.startswith("lora_unet_"):
        name = "lora_unet_" + name
    body = name[len("lora_unet_"):]
    if body.startswith(("mid_block_", "middle_block_")):
        return MID
    if body.startswith(("conv_in_", "input_blocks_0_")):
        return 1  # IN00
    m = _DIFFUSERS.match(body)
    if m:
        side, i, kind, j = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
        if side == "down_blocks":
            return 1 + (3 * (i + 1) if kind == "downsamplers" else 3 * i + j + 1)
        return MID + 1 + 3 * i + (per_block if kind == "upsamplers" else j)
    m = _LDM.match(body)
    if m:
        n = int(m.group(2))
        if m.group(1) == "input_blocks":
            level, r = divmod(n - 1, per_block + 1)
            return 1 + (3 * (level + 1) if r == per_block else 3 * level + r + 1)
        level, j = divmod(n, per_block + 1)
        return MID + 1 + 3 * level + j
    return None


def module_blocks(components) -> dict:
    """Every module of a loaded base model (UNet and text encoders) -> its block index or None."""
    unet = components.unet
    per_block = _layers_per_block(unet.config)
    table = {module: block_of(path, layers_per_block=per_block) for path, module in unet.named_modules() if path}
    for encoder in (components.text_encoder, getattr(components, "text_encoder_2", None)):
        if encoder is not None:
            table.update({module: 0 for module in encoder.modules()})
    return table


def _layers_per_block(config) -> int:
    lpb = config.get("layers_per_block", 2) if isinstance(config, dict) else getattr(config, "layers_per_block", 2)
    return int(lpb[0] if isinstance(lpb, (list, tuple)) else lpb)
