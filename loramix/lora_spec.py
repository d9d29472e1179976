"""The text forms a user types for a blend: `PATH:WEIGHT[:TE_WEIGHT]` adapter specs and grid axes.

Shared by the command line, the web app and the API, so that each reads them the same way.
"""

from __future__ import annotations

from loramix.errors import LoramixError


def parse_lora_spec(spec: str) -> tuple[str, float, float | None]:
    """`path.safetensors:0.8` or `path:0.8:0.5` (text-encoder weight); a bare path means weight 1."""
    parts = spec.split(":")
    numbers: list[float] = []
    while len(parts) > 1 and len(numbers) < 2:
        try:
            numbers.insert(0, float(parts[-1]))
        except ValueError:
            break
        parts.pop()
    path = ":".join(parts)
    weight = numbers[0] if numbers else 1.0
    return path, weight, numbers[1] if len(numbers) > 1 else None


def parse_axis(text: str):
    """An X/Y grid axis: `weight:NAME:v1,v2,…` or `seed:s1,s2,…`."""
    from loramix.xy_grid import Axis

    kind, _, rest = text.partition(":")
    try:
        if kind == "weight" and ":" in rest:
            name, _, values = rest.rpartition(":")
            return Axis("weight", [float(v) for v in values.split(",")], name)
        if kind == "seed":
            return Axis("seed", [int(v) for v in rest.split(",")])
    except ValueError:
        pass
    raise LoramixError(f"--grid axis {text!r}: write weight:NAME:-1,0,1 or seed:1,2,3.")
