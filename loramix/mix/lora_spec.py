"""The text forms a user types for a blend: `PATH:WEIGHT[:TE_WEIGHT][:lbw=BLOCKS]` adapter specs (and the
block-weight extension's forms of them) and grid axes.

Shared by the command line, the web app and the API, so that each reads them the same way.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from loramix.core.errors import LoramixError
from loramix.mix.block_weights import LAYOUTS, PRESET_NAMES, BlockWeights, parse_block_weights


class AdapterSpec(NamedTuple):
    path: str
    weight: float = 1.0
    te_weight: float | None = None
    blocks: BlockWeights | None = None  # from `:lbw=OUTD` or `:lbw=1,0,…`


# Options of the block-weight extension's prompt syntax (`<lora:name:1:lbw=OUTD:stop=10>`) that loramix does
# not have: a preview applies each adapter at every step, with whole-layer block weights only.
_UNSUPPORTED = {"start": "a per-step start", "stop": "a per-step stop", "step": "a per-step range",
                "lbwe": "per-element weights", "x": "inherited X weights", "dyn": "a dynamic rank"}
_OPTION = re.compile(r"^\s*([A-Za-z]+)\s*=(.*)$")
_OPTIONS = {"lbw", "w", "te", "unet", *_UNSUPPORTED}


def parse_adapter_spec(spec: str) -> AdapterSpec:
    """An adapter with its sliders, in the forms A1111's prompt and the block-weight extension take after the name:

    `a.safetensors` (weight 1), `a.safetensors:0.8`, `a.safetensors:0.8:0.5` (then the text-encoder weight),
    block weights as `:lbw=OUTD`, `:w=OUTD` or positionally `:0.8:OUTD` / `:0.8:1,0,0,…` (a preset name or
    12/17/20/26 numbers after the weights), and `te=0.5` / `unet=0.8` named (they win over positional ones).
    Named options come after the numbers, in any order. The extension's per-step and per-element options
    (start=, stop=, step=, lbwe=, x=, dyn=) are refused with a sentence, not taken into the file path."""
    parts = spec.split(":")
    named: dict[str, str] = {}
    while len(parts) > 1 and (m := _OPTION.match(parts[-1])) and m.group(1).lower() in _OPTIONS:
        key = "lbw" if m.group(1).lower() == "w" else m.group(1).lower()
        if key in named:
            raise LoramixError(f"--lora {spec!r}: give {key}= once.")
        named[key] = m.group(2).strip()
        parts.pop()
    for key, what in _UNSUPPORTED.items():
        if key in named:
            raise LoramixError(f"--lora {spec!r}: {key}= ({what}, from the block-weight extension) is not supported; "
                               "loramix applies an adapter at every step. Remove it.")
    misplaced = next((p for p in parts[1:] if (m := _OPTION.match(p)) and m.group(1).lower() in _OPTIONS), None)
    if misplaced is not None:
        raise LoramixError(f"--lora {spec!r}: put {misplaced.strip()} after the weights, as in PATH:WEIGHT:lbw=OUTD.")
    blocks = None
    if "lbw" in named:
        blocks = parse_block_weights(named["lbw"])
    elif len(parts) > 2 and _looks_like_blocks(parts[-1]) and _is_number(parts[-2]):
        blocks = parse_block_weights(parts.pop())
    numbers: list[float] = []
    while len(parts) > 1 and len(numbers) < 2 and _is_number(parts[-1]):
        numbers.insert(0, float(parts.pop()))
    path = ":".join(parts)
    if not path.strip():
        raise LoramixError(f"--lora {spec!r}: the adapter file is missing; write PATH:WEIGHT.")
    weight = numbers[0] if numbers else 1.0
    te_weight = numbers[1] if len(numbers) > 1 else None
    if "unet" in named:
        weight = _named_number(spec, "unet", named["unet"])
    if "te" in named:
        te_weight = _named_number(spec, "te", named["te"])
    return AdapterSpec(path, weight, te_weight, blocks)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _looks_like_blocks(text: str) -> bool:
    """A preset name, or 12/17/20/26 comma-separated values (the extension's positional block weights)."""
    return text.strip().upper() in PRESET_NAMES or len(text.split(",")) in LAYOUTS


def _named_number(spec: str, key: str, value: str) -> float:
    if not _is_number(value):
        raise LoramixError(f"--lora {spec!r}: {key}={value!r} is not a number.")
    return float(value)


AXIS_FORMS = "weight:NAME:-1,0,1, lbw:NAME:ALL,OUTD, seed:1,2,3, cfg:5,7 or sampler:ddim,euler"


def parse_axis(text: str):
    """An X/Y grid axis: `weight:NAME:v1,v2,…`, `lbw:NAME:PRESET,…`, `seed:…`, `cfg:…` or `sampler:…`.
    NAME is an adapter's name (its file stem) or its path; an lbw axis takes preset names separated by
    commas, or presets and comma lists separated by semicolons (`lbw:ink:ALL;1,0,0,…`)."""
    from loramix.mix.xy_grid import Axis

    kind, _, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind in ("weight", "lbw"):
        name, _, values = rest.rpartition(":")
        if not name or not values:
            raise LoramixError(f"--grid axis {text!r}: write {kind}:NAME:{'-1,0,1' if kind == 'weight' else 'ALL,OUTD'}.")
        if kind == "lbw":
            parts = values.split(";") if ";" in values else values.split(",")  # ; between vectors
            return Axis("lbw", [parse_block_weights(v).text for v in parts], name)
        return Axis("weight", [_number(text, v, float) for v in values.split(",")], name)
    if kind in ("seed", "cfg"):
        return Axis(kind, [_number(text, v, int if kind == "seed" else float) for v in rest.split(",")])
    if kind == "sampler":
        from loramix.mix.mixer import SAMPLERS

        values = [v.strip() for v in rest.split(",")]
        for v in values:
            if v not in SAMPLERS:
                raise LoramixError(f"--grid axis {text!r}: sampler {v!r}: choose from {', '.join(SAMPLERS)}.")
        return Axis("sampler", values)
    raise LoramixError(f"--grid axis {text!r}: write {AXIS_FORMS}.")


def _number(text: str, token: str, kind):
    try:
        return kind(token.strip())
    except ValueError:
        raise LoramixError(f"--grid axis {text!r}: {token.strip()!r} is not {'an integer' if kind is int else 'a number'}."
                           ) from None
