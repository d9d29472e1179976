"""What a file that users publish may say about local files: base names, as kohya writes them, and hub ids.

A LoRA, a merge or a bake gets shared; a folder path in its metadata would show the user's name and
folder layout. kohya's train_network.py writes only `os.path.basename` of the image folders
(`ss_dataset_dirs`) and of a local base model (`ss_sd_model_name`, where a hub id stays as given). Every
path that loramix puts into a file's metadata goes through this module first:

- `loramix_config` (a LoRA and its training state): `published_config`, the config with its PATH_FIELDS
  reduced to base names (a hub id kept);
- `loramix_mix_preset` (merge, export): adapter file names (`base_name`);
- a baked diffusers folder: the `_name_or_path` that diffusers writes into each config.json
  (`publish_saved_configs`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path, PureWindowsPath

# The config fields that hold a local path (or, for base_model, a hub id). tests/unit/test_published.py
# classifies every text field of the config, so a new path field cannot slip into the metadata unnoticed.
PATH_FIELDS = ("model.base_model", "dataset.data_dir", "dataset.reg_data_dir", "dataset.validation_dir",
               "train.resume_from", "output.output_dir")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name, as the Hugging Face hub spells a repo id
_NAME_KEYS = ("_name_or_path", "name_or_path")  # what diffusers / transformers record of where a model came from


def base_name(path: str | os.PathLike) -> str:
    """The last part of a local path, cut at either slash; `~`, `.` and `..` are resolved first, so a folder
    given as "." is named, not emptied. An empty path stays empty."""
    text = os.fspath(path)
    if not text:
        return ""
    return PureWindowsPath(os.path.abspath(os.path.expanduser(text))).name


def published_model_name(source: str) -> str:
    """A base model as a published file names it: a hub id as given (kohya's `ss_sd_model_name` keeps it), a
    local folder or checkpoint file by its base name."""
    if _HUB_ID.match(source or "") and not Path(source).exists():
        return source
    return base_name(source)


def published_config(config) -> dict:
    """A `LoramixConfig` as a dict for a file's metadata: every PATH_FIELDS value reduced to a base name (the
    base model to `published_model_name`); everything else as it is."""
    data = config.to_dict()
    for dotted in PATH_FIELDS:
        section, name = dotted.split(".")
        value = data[section][name]
        data[section][name] = published_model_name(value) if dotted == "model.base_model" else base_name(value)
    return data


def published_config_json(config) -> str:
    """`published_config` as the JSON text of the `loramix_config` metadata key."""
    return json.dumps(published_config(config), sort_keys=True)


def publish_saved_configs(folder: str | Path) -> None:
    """Rewrite the JSON files that `save_pretrained` wrote under `folder` so that `_name_or_path` names the
    source model as `published_model_name` does, not by its local path."""
    from loramix.core.writer import write_text

    folder = Path(folder)
    for path in sorted(folder.rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict):
            continue
        changed = {k: published_model_name(v) for k, v in data.items() if k in _NAME_KEYS and isinstance(v, str)}
        if any(data[k] != v for k, v in changed.items()):
            write_text(path, json.dumps({**data, **changed}, indent=2, sort_keys=True) + "\n", replace=True,
                       within=folder)
