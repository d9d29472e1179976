"""What a LoRA file says about itself, read from its safetensors header only (no tensor is loaded).

The Mix tab shows this as a card per adapter row: base model version, rank and alpha, trigger word (a
merged blend: every source's, with its position), top training tags, steps and resolution, as kohya's `ss_*` metadata (and loramix's config) record them.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from loramix.core.errors import AdapterFormatError


@dataclass
class AdapterInfo:
    name: str
    base: str = "unknown"
    network: str = "LoRA"
    rank: str = "?"
    alpha: str = "?"
    trigger: str = ""
    trigger_position: str = "start"  # dataset.trigger_position it was trained with: start or end
    tags: list[str] = field(default_factory=list)
    steps: str = "?"
    resolution: str = "?"
    best_step: str = ""  # the step with the lowest validation loss, when the run validated
    triggers: list[tuple[str, str, str]] = field(default_factory=list)  # a blend's (word, position, source)

    def markdown(self) -> str:
        tags = ", ".join(self.tags) or "none recorded"
        where = ", last in the prompt" if self.trigger_position == "end" else ""
        trigger = f" · trigger **{self.trigger}**{where}" if self.trigger else ""
        best = f" · best validation at step {self.best_step}" if self.best_step else ""
        if self.triggers:
            trigger = " · triggers " + ", ".join(
                f"**{word}** (from {source}{', last in the prompt' if position == 'end' else ''})"
                for word, position, source in self.triggers)
        return (f"**{self.name}** · {self.network} for {self.base} · rank {self.rank}, alpha {self.alpha}"
                f"{trigger} · {self.steps} steps at {self.resolution}{best} · tags: {tags}")


def _rank_from_keys(f) -> str:
    for key in f.keys():
        if key.endswith(("lora_down.weight", "lora_A.weight")):
            return str(f.get_slice(key).get_shape()[0])
    return "?"


def adapter_info(path: str | Path, top_tags: int = 5) -> AdapterInfo:
    """Read the card of a LoRA file; a file that is not safetensors is refused with a sentence."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            rank = meta.get("ss_network_dim") or _rank_from_keys(f)
    except Exception as e:
        raise AdapterFormatError(f"{path.name}: not a readable safetensors file ({e}).") from e
    info = AdapterInfo(path.stem, rank=rank)
    info.base = meta.get("ss_base_model_version", "unknown")
    module = meta.get("ss_network_module", "")
    info.network = {"networks.lora": "LoRA", "lycoris.kohya": "LyCORIS"}.get(module, module or "LoRA")
    if module == "lycoris.kohya":
        try:
            algo = json.loads(meta.get("ss_network_args", "{}")).get("algo", "")
        except (json.JSONDecodeError, AttributeError):
            algo = ""
        info.network = {"loha": "LoHa", "lokr": "LoKr", "locon": "LoCon", "full": "full"}.get(algo, "LyCORIS")
    info.alpha = meta.get("ss_network_alpha", "?")
    info.steps = meta.get("ss_steps", "?")
    info.best_step = meta.get("loramix_best_validation_step", "")
    res = meta.get("ss_resolution", "")
    info.resolution = res.strip("()").split(",")[0].strip() + " px" if res else "?"
    try:
        config = json.loads(meta.get("loramix_config", "{}"))
        info.trigger = config.get("dataset", {}).get("trigger_word", "")
        info.trigger_position = config.get("dataset", {}).get("trigger_position", "start")
    except (json.JSONDecodeError, AttributeError):
        pass
    try:
        info.triggers = [(str(t["word"]), str(t.get("position", "start")), str(t.get("from", "?")))
                         for t in json.loads(meta.get("loramix_trigger_words", "[]")) if t.get("word")]
    except (json.JSONDecodeError, AttributeError, TypeError, KeyError):
        pass
    try:
        counts: Counter = Counter()
        for folder in json.loads(meta.get("ss_tag_frequency", "{}")).values():
            counts.update({tag: int(n) for tag, n in folder.items()})
        info.tags = [tag for tag, _ in counts.most_common(top_tags)]
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        pass
    return info
