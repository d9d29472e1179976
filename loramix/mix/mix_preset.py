"""A blend as a file: the "mix preset" TOML (adapters by path, weights, block weights, on/off).

    schema_version = 1

    [[adapter]]
    path = "loras/ink.safetensors"   # relative paths are read from the preset's folder
    weight = 0.8
    te_weight = 0.5                  # optional: text encoder weight (default: same as weight)
    blocks = "OUTD"                  # optional: block weights, a preset name or 17 (SDXL: 12) numbers
    enabled = true                   # optional

    [request]                        # optional (schema 2): what the Mix tab draws with
    prompt = "a large red circle in the center, blue background"
    negative_prompt = ""
    seed = 1
    steps = 20
    cfg_scale = 6.0
    sampler = "ddim"
    size = 0                         # 0 = the model's own

The adapters are kept in the order written (the Mix tab's rows, top to bottom). Schema 1 files (no
`[request]`) still load. An unknown key is an error naming it. Exported files carry the preset as JSON under the metadata key
`loramix_mix_preset` (`mix_preset_metadata`), so a merged file says how it was blended; there each adapter
is named by its file name only (a published file holds no local path), and `mix_preset_from_metadata`
reads those names from a folder the caller gives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from loramix.core.errors import LoramixError
from loramix.mix.block_weights import BlockWeights, parse_block_weights

SCHEMA_VERSION = 2  # 2 added [request]
METADATA_KEY = "loramix_mix_preset"
_TOP_KEYS = {"schema_version", "adapter", "request"}
_ADAPTER_KEYS = {"path", "weight", "te_weight", "blocks", "enabled"}
_REQUEST_TYPES = {"prompt": str, "negative_prompt": str, "seed": int, "steps": int, "cfg_scale": float,
                  "sampler": str, "size": int}


@dataclass
class MixEntry:
    path: str
    weight: float = 1.0
    te_weight: float | None = None
    blocks: BlockWeights | None = None
    enabled: bool = True

    def row(self) -> tuple:
        """The row `Mixer.set_blend` takes: (path, weight, enabled, blocks)."""
        return self.path, self.weight, self.enabled, self.blocks


@dataclass
class MixRequest:
    """The picture settings of a blend: what the Mix tab's prompt, seed, steps, CFG, sampler and size hold."""

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 1
    steps: int = 20
    cfg_scale: float = 6.0
    sampler: str = "ddim"
    size: int = 0


@dataclass
class MixPreset:
    adapters: list[MixEntry] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    request: MixRequest | None = None

    def to_dict(self) -> dict:
        rows = []
        for e in self.adapters:
            row = {"path": str(e.path), "weight": float(e.weight)}
            if e.te_weight is not None:
                row["te_weight"] = float(e.te_weight)
            if e.blocks is not None:
                row["blocks"] = e.blocks.text
            row["enabled"] = bool(e.enabled)
            rows.append(row)
        data = {"schema_version": self.schema_version, "adapter": rows}
        if self.request is not None:
            data["request"] = {k: getattr(self.request, k) for k in _REQUEST_TYPES}
        return data

    def rows(self) -> list[tuple]:
        return [e.row() for e in self.adapters]


def from_dict(data: dict, where: str = "mix preset", base_dir: Path | None = None) -> MixPreset:
    """Validate a parsed preset; every error names the key (`adapter[2].blocks`) and the file."""
    if not isinstance(data, dict):
        raise LoramixError(f"{where}: expected a table of keys, got {type(data).__name__}.")
    for key in data:
        if key not in _TOP_KEYS:
            raise LoramixError(f"{where}: unknown key {key!r}; a mix preset has schema_version, [[adapter]] "
                               "tables and a [request] table.")
    version = data.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEMA_VERSION:
        raise LoramixError(f"{where}: schema_version {version!r} is not one this loramix reads (1..{SCHEMA_VERSION}); "
                           "update loramix.")
    rows = data.get("adapter", [])
    if not isinstance(rows, list):
        raise LoramixError(f"{where}: adapter must be a list of [[adapter]] tables.")
    entries = []
    for i, row in enumerate(rows, 1):
        at = f"{where}: adapter[{i}]"
        if not isinstance(row, dict):
            raise LoramixError(f"{at}: expected a table with path and weight.")
        for key in row:
            if key not in _ADAPTER_KEYS:
                raise LoramixError(f"{at}: unknown key {key!r}; use {', '.join(sorted(_ADAPTER_KEYS))}.")
        path = row.get("path")
        if not isinstance(path, str) or not path.strip():
            raise LoramixError(f"{at}.path: give the adapter file as a string.")
        if base_dir is not None and not Path(path).expanduser().is_absolute():
            path = str(base_dir / path)
        weight, te_weight = _number(at, "weight", row.get("weight", 1.0)), row.get("te_weight")
        te_weight = None if te_weight is None else _number(at, "te_weight", te_weight)
        blocks = row.get("blocks")
        if blocks is not None:
            if not isinstance(blocks, str):
                blocks = ",".join(str(v) for v in blocks) if isinstance(blocks, list) else str(blocks)
            try:
                blocks = parse_block_weights(blocks)
            except LoramixError as e:
                raise LoramixError(f"{at}.blocks: {e}") from None
        enabled = row.get("enabled", True)
        if not isinstance(enabled, bool):
            raise LoramixError(f"{at}.enabled: write true or false, not {enabled!r}.")
        entries.append(MixEntry(path, weight, te_weight, blocks, enabled))
    request = data.get("request")
    return MixPreset(entries, SCHEMA_VERSION, None if request is None else _request(where, request))


def _request(where: str, data) -> MixRequest:
    if not isinstance(data, dict):
        raise LoramixError(f"{where}: request must be a table ([request]).")
    values = {}
    for key, value in data.items():
        kind = _REQUEST_TYPES.get(key)
        if kind is None:
            raise LoramixError(f"{where}: request: unknown key {key!r}; use {', '.join(_REQUEST_TYPES)}.")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise LoramixError(f"{where}: request.{key}: {value!r} is not a {kind.__name__}.")
        values[key] = value
    return MixRequest(**values)


def _number(at: str, key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LoramixError(f"{at}.{key}: {value!r} is not a number.")
    return float(value)


def load_mix_preset(path: str | Path) -> MixPreset:
    """Read a mix preset TOML; relative adapter paths are taken from the preset's folder."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LoramixError(f"mix preset {path}: no such file.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LoramixError(f"mix preset {path}: cannot read it ({e.__class__.__name__}).") from None
    except tomllib.TOMLDecodeError as e:
        raise LoramixError(f"mix preset {path}: not valid TOML ({e}).") from None
    return from_dict(data, f"mix preset {path.name}", path.parent.resolve())


def save_mix_preset(path: str | Path, preset: MixPreset, **rules) -> Path:
    """Write `preset` as TOML through the writer (`rules`: replace, within); adapter paths are written as given."""
    import tomli_w

    from loramix.core.writer import write_text

    return write_text(path, tomli_w.dumps(preset.to_dict()), **rules)


def preset_from_mixer(mixer, names: list[str] | None = None, request: MixRequest | None = None) -> MixPreset:
    """The mixer's current blend as a preset: the adapters `names` in that order (as `set_blend` returned them,
    one per row), or every loaded adapter, on or off; `request`: the picture settings to keep with it."""
    slots = [mixer.slots[n] for n in names] if names is not None else list(mixer.slots.values())
    return MixPreset([MixEntry(str(Path(s.path).resolve()), s.weight, s.te_weight, s.blocks, s.enabled)
                      for s in slots], request=request)


def preset_from_specs(specs) -> MixPreset:
    """A preset from parsed `--lora` specs (`loramix.mix.lora_spec.AdapterSpec`)."""
    return MixPreset([MixEntry(str(Path(s.path).resolve()), s.weight, s.te_weight, s.blocks) for s in specs])


def mix_preset_metadata(preset: MixPreset) -> dict[str, str]:
    """The metadata entry an exported (merged) file carries: {"loramix_mix_preset": JSON}, each adapter by its
    file name, not its local path."""
    from loramix.formats.published import base_name

    data = preset.to_dict()
    for row in data["adapter"]:
        row["path"] = base_name(row["path"])
    return {METADATA_KEY: json.dumps(data, sort_keys=True)}


def mix_preset_from_metadata(metadata: dict, base_dir: str | Path | None = None) -> MixPreset | None:
    """The preset an exported file recorded, or None; its adapter file names are taken from `base_dir` (e.g.
    the LoRA folder) when given."""
    text = metadata.get(METADATA_KEY)
    where = Path(base_dir) if base_dir is not None else None
    return from_dict(json.loads(text), METADATA_KEY, where) if text else None


def build_blend(mix_file: str | Path | None, lora_specs: list[str] = ()) -> MixPreset:
    """The blend a command asks for: the adapters of `mix_file` (if any), then each `--lora` spec."""
    from loramix.mix.lora_spec import parse_adapter_spec

    preset = load_mix_preset(mix_file) if mix_file else MixPreset()
    preset.adapters += preset_from_specs([parse_adapter_spec(s) for s in lora_specs]).adapters
    return preset


def adapter_names(preset: MixPreset) -> dict[str, str]:
    """The names `apply_mix_preset` gives the adapters in a fresh mixer (file stem, then stem#2, …) -> path."""
    names: dict[str, str] = {}
    for entry in preset.adapters:
        stem, n = Path(entry.path).stem, 2
        name = stem
        while name in names:
            name, n = f"{stem}#{n}", n + 1
        names[name] = entry.path
    return names


def apply_mix_preset(mixer, preset: MixPreset, allow_unsafe: bool = False) -> list[str]:
    """Make the mixer's blend exactly `preset` (files already loaded are not read again); returns the
    adapter names, one per entry."""
    names = mixer.set_blend(preset.rows(), allow_unsafe=allow_unsafe)
    for name, entry in zip(names, preset.adapters):
        mixer.set_weight(name, entry.weight, entry.te_weight, entry.enabled, blocks=entry.blocks)
    return names
