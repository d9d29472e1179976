"""Merging a blend into one LoRA file: exact (ranks concatenated) or compact (SVD to a chosen rank).

Both follow PEFT's `add_weighted_adapter` semantics ("cat" and "svd"): the merged layer's
dW equals sum_i w_i * (alpha_i / r_i) * up_i @ down_i, exactly for cat and best-rank-k for svd.

LyCORIS LoHa, LoKr and full (`diff`) layers are not low-rank products, so they have no ranks to
concatenate: the exact merge refuses them with a sentence, and the SVD merge takes them through
their full dW (`layer.delta()`), like every other layer, reporting the true error. The output is
a plain kohya LoRA / LoCon file, which every reader loads, except a layer whose bias a source changes
(a LyCORIS full layer's `diff_b`): a LoRA cannot hold a bias, so that layer is written as a full layer
(`diff` + `diff_b`, the blend exactly), as A1111 and ComfyUI read it. A LoHa / LoKr conv stored without
Tucker does not record its kernel size; when no other source (or the mixer's binding) tells it, the
merged layer stays 2-D (out, in·k·k), which loramix reads but other tools may not.

The output carries the first source's `ss_base_model_version`, `ss_v2` and `modelspec.*` keys for that
base (title "merged: …", `merged_from` naming the sources), every source's trigger word with its position
(`loramix_trigger_words`, which the adapter card shows), and `save_lora` adds the `sshs_*` hashes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import torch

from loramix import __version__
from loramix.adapters.adapter_layers import FullLayer, bias_delta
from loramix.core.errors import LoramixError
from loramix.formats.lora_io import LoraAdapter, LoraLayer, modelspec
from loramix.mix.block_weights import BlockWeights, block_of


@dataclass
class Source:
    """One adapter in a blend."""

    name: str
    adapter: LoraAdapter
    weight: float
    te_weight: float | None = None
    blocks: BlockWeights | None = None  # per-block multipliers; None = 1 everywhere
    layers_per_block: int = 2  # of the base UNet, to place LDM-named layers in blocks (2 for SD and SDXL)

    def coef(self, layer_name: str) -> float:
        is_text = layer_name.startswith("lora_te")
        weight = self.te_weight if is_text and self.te_weight is not None else self.weight
        if self.blocks is None:
            return weight
        return weight * self.blocks.value(block_of(layer_name, layers_per_block=self.layers_per_block))


@dataclass
class MergeReport:
    method: str
    rank: int | None
    relative_error: float  # ||dW - merged||_F / ||dW||_F over all layers together
    worst_layer_error: float


def _layer_shapes(sources: list[Source]) -> dict[str, tuple]:
    """Layer name -> the base weight's shape, as far as the files tell it, sorted by name.

    Layers are compared by (out, flattened in); a conv kernel is taken from whichever source knows it
    (LoHa / LoKr store plain convs flattened, see `loramix.adapters.adapter_layers`).
    """
    shapes: dict[str, tuple] = {}
    for src in sources:
        for name, layer in src.adapter.layers.items():
            shape = tuple(layer.shape or (layer.out_features, layer.in_features))
            known = shapes.setdefault(name, shape)
            if (known[0], math.prod(known[1:])) != (shape[0], math.prod(shape[1:])) or \
                    (len(known) == len(shape) == 4 and known != shape):
                raise LoramixError(f"{src.name}: layer {name} has shape {shape}, another adapter has "
                                   f"{known}; these adapters were made for different base models.")
            if len(shape) > len(known):
                shapes[name] = shape
    return dict(sorted(shapes.items()))


def blend_delta(sources: list[Source], name: str, shape: tuple | None = None) -> torch.Tensor:
    """sum_i w_i * dW_i for one layer, in float32 (shaped `shape` when given)."""
    total = None
    for src in sources:
        layer = src.adapter.layers.get(name)
        if layer is not None and src.coef(name) != 0:
            d = layer.delta(shape) * src.coef(name)
            total = d if total is None else total + d
    return total


def blend_bias(sources: list[Source], name: str) -> torch.Tensor | None:
    """sum_i w_i * diff_b_i for one layer (float32), or None when no source changes its bias."""
    changes = [(bias, src.coef(name)) for src in sources if name in src.adapter.layers
               if (bias := bias_delta(src.adapter.layers[name])) is not None]
    return sum((bias * coef for bias, coef in changes), torch.zeros_like(changes[0][0])) if changes else None


def merge_concat(sources: list[Source]) -> tuple[LoraAdapter, MergeReport]:
    """Exact merge: ranks side by side, each source's weight and alpha/r folded into its up matrix."""
    layers = {}
    for name in _layer_shapes(sources):
        downs, ups = [], []
        for src in sources:
            layer = src.adapter.layers.get(name)
            if layer is None or src.coef(name) == 0:
                continue
            if not isinstance(layer, LoraLayer):
                raise LoramixError(f"{src.name}: layer {name} is a {layer.kind} layer, not a low-rank product, so an "
                                   "exact merge cannot place it beside the others; choose a rank (SVD merge).")
            downs.append(layer.down.float())
            ups.append(layer.up.float() * (src.coef(name) * layer.scale))
        if downs:
            down, up = torch.cat(downs, 0), torch.cat(ups, 1)
            layers[name] = LoraLayer(down, up, float(down.shape[0]))  # alpha = rank: scale 1
    adapter = LoraAdapter(layers, _metadata(sources, "concat", layers))
    return adapter, MergeReport("concat", None, 0.0, 0.0)


def merge_svd(sources: list[Source], rank: int) -> tuple[LoraAdapter, MergeReport]:
    """Compact merge: each layer's blended dW truncated to `rank` by SVD; reports the true error."""
    if rank < 1:
        raise LoramixError(f"rank: {rank} must be at least 1.")
    layers, err2, norm2, worst = {}, 0.0, 0.0, 0.0
    for name, shape in _layer_shapes(sources).items():
        delta, bias = blend_delta(sources, name, shape), blend_bias(sources, name)
        if bias is not None:  # a LoRA holds no bias: keep the layer whole, exactly
            layers[name] = FullLayer(delta if delta is not None else torch.zeros(shape), diff_b=bias)
            norm2 += float(layers[name].diff.pow(2).sum())
            continue
        if delta is None:
            continue
        out_shape = delta.shape
        mat = delta.flatten(1)
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)
        k = min(rank, s.shape[0])
        root = s[:k].sqrt()
        up, down = u[:, :k] * root, root[:, None] * vh[:k]
        approx = up @ down
        e2, n2 = float((mat - approx).pow(2).sum()), float(mat.pow(2).sum())
        err2, norm2 = err2 + e2, norm2 + n2
        worst = max(worst, math.sqrt(e2 / n2) if n2 else 0.0)
        if len(out_shape) == 4:
            down, up = down.reshape(k, *out_shape[1:]), up.reshape(out_shape[0], k, 1, 1)
        layers[name] = LoraLayer(down.contiguous(), up.contiguous(), float(k))
    report = MergeReport("svd", rank, math.sqrt(err2 / norm2) if norm2 else 0.0, worst)
    adapter = LoraAdapter(layers, _metadata(sources, "svd", layers, report.relative_error))
    return adapter, report


def _metadata(sources: list[Source], method: str, layers: dict[str, LoraLayer], error: float = 0.0) -> dict:
    first = sources[0].adapter.metadata if sources else {}
    merged_rank = max((layer.rank or 0 for layer in layers.values()), default=0)
    version = first.get("ss_base_model_version", "")
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(merged_rank),
        "ss_network_alpha": str(merged_rank),
        "ss_base_model_version": version,
        "ss_v2": str(version.startswith("sd_v2")) if version else first.get("ss_v2", "False"),
        **modelspec(version, "merged: " + ", ".join(s.name for s in sources), time.time(),
                    first.get("modelspec.resolution"),
                    merged_from=", ".join(s.adapter.metadata.get("modelspec.title", s.name) for s in sources)),
        "ss_training_comment": f"merged by loramix {__version__} ({method})",
        "loramix_merge_method": method,
        "loramix_merge_relative_error": f"{error:.6g}",
        "loramix_trigger_words": json.dumps(trigger_words(sources)),
        "loramix_merge_sources": json.dumps([
            {"name": s.name, "weight": s.weight, "te_weight": s.te_weight,
             "ss_output_name": s.adapter.metadata.get("ss_output_name", "")} for s in sources]),
    }


def trigger_words(sources: list[Source]) -> list[dict]:
    """The trigger words of the sources, each with where it was trained (dataset.trigger_position: start or
    end) and which source it came from; a source that is itself a merge passes on the words it recorded."""
    words, seen = [], set()
    for src in sources:
        meta = src.adapter.metadata
        try:
            found = json.loads(meta.get("loramix_trigger_words", "[]"))
            dataset = json.loads(meta.get("loramix_config", "{}")).get("dataset", {})
        except (json.JSONDecodeError, AttributeError):
            found, dataset = [], {}
        if dataset.get("trigger_word"):
            found = [{"word": dataset["trigger_word"], "position": dataset.get("trigger_position", "start")}]
        for item in found if isinstance(found, list) else []:
            if not isinstance(item, dict) or not str(item.get("word", "")).strip():
                continue
            word, position = str(item["word"]), str(item.get("position", "start"))
            if (word, position) not in seen:
                seen.add((word, position))
                words.append({"word": word, "position": position, "from": str(item.get("from", src.name))})
    return words


def save_blend(sources: list[Source], path, *, rank: int = 0, precision: str = "fp16",
               recipe: dict[str, str] | None = None, **rules) -> tuple[LoraAdapter, MergeReport]:
    """Merge `sources` (exact, or SVD to `rank`) and write the result with its `recipe` metadata through the
    writer (`rules`: replace, within, field): the one "merge a blend and save it" that the CLI's `merge` and the
    Mix tab's export share, so both follow the same overwrite rule."""
    from loramix.formats.lora_io import save_lora

    if not sources:
        raise LoramixError("Export: enable at least one adapter.")
    adapter, report = merge_svd(sources, rank) if rank else merge_concat(sources)
    adapter.metadata.update(recipe or {})
    save_lora(path, adapter, precision, **rules)
    return adapter, report
