"""The text forms a user types for a blend: `PATH:WEIGHT[:TE_WEIGHT][:lbw=BLOCKS]` adapter specs and grid axes.

Shared by the command line, the web app and the API, so that each reads them the same way.
"""

from __future__ import annotations

from typing import NamedTuple

from loramix.block_weights import BlockWeights, parse_block_weights
from loramix.errors import LoramixError


class AdapterSpec(NamedTuple):
    path: str
    weight: float = 1.0
    te_weight: float | None = None
    blocks: BlockWeights | None = None  # from `:lbw=OUTD` or `:lbw=1,0,…`


def parse_adapter_spec(spec: str) -> AdapterSpec:
    """`a.safetensors:0.8`, `a.safetensors:0.8:0.5` (text-encoder weight), `a.safetensors:0.8:lbw=OUTD`
    or `…:lbw=1,0,0,…` (block weights, see loramix.block_weights); a bare path means weight 1."""
    parts = spec.split(":")
    blocks = None
    options = [p for p in parts[1:] if p.strip().lower().startswith("lbw=")]
    if len(options) > 1:
        raise LoramixError(f"--lora {spec!r}: give lbw= once.")
    if options:
        if parts[-1] != options[0]:
            raise LoramixError(f"--lora {spec!r}: put lbw= last, as in PATH:WEIGHT:lbw=OUTD.")
        blocks = parse_block_weights(parts.pop().split("=", 1)[1])
    numbers: list[float] = []
    while len(parts) > 1 and len(numbers) < 2:
        try:
            numbers.insert(0, float(parts[-1]))
        except ValueError:
            break
        parts.pop()
    path = ":".join(parts)
    if not path.strip():
        raise LoramixError(f"--lora {spec!r}: the adapter file is missing; write PATH:WEIGHT.")
    weight = numbers[0] if numbers else 1.0
    return AdapterSpec(path, weight, numbers[1] if len(numbers) > 1 else None, blocks)


def parse_lora_spec(spec: str) -> tuple[str, float, float | None]:
    """`path.safetensors:0.8` or `path:0.8:0.5` (text-encoder weight) as (path, weight, te_weight).
    Callers that apply block weights use `parse_adapter_spec`; this one refuses `lbw=` rather than drop it."""
    path, weight, te_weight, blocks = parse_adapter_spec(spec)
    if blocks is not None:
        raise LoramixError(f"{spec!r}: block weights (lbw=) are not taken here; write PATH:WEIGHT[:TE_WEIGHT].")
    return path, weight, te_weight


AXIS_FORMS = "weight:NAME:-1,0,1, lbw:NAME:ALL,OUTD, seed:1,2,3, cfg:5,7 or sampler:ddim,euler"


def parse_axis(text: str):
    """An X/Y grid axis: `weight:NAME:v1,v2,…`, `lbw:NAME:PRESET,…`, `seed:…`, `cfg:…` or `sampler:…`.
    NAME is an adapter's name (its file stem) or its path; an lbw axis takes preset names separated by
    commas, or presets and comma lists separated by semicolons (`lbw:ink:ALL;1,0,0,…`)."""
    from loramix.xy_grid import Axis

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
        from loramix.mixer import SAMPLERS

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
