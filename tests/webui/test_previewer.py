"""The Mix tab's live preview (`webui.mix_actions.Previewer`): stale previews are dropped before they draw, and the
cached base image ("before") is keyed by everything that changes it, the seed included."""

from __future__ import annotations

import numpy as np
import pytest

from loramix.mix.request import PreviewRequest
from webui.mix_actions import MixValues, Previewer
from webui.state import AppState


@pytest.fixture(scope="module")
def previewer(tmp_path_factory, tiny_model):
    state = AppState.create(tmp_path_factory.mktemp("preview") / "outputs")
    return Previewer(state), str(tiny_model)


def values(base: str, seed: int) -> MixValues:
    return MixValues(base=base, rows=[], request=PreviewRequest("a red circle", seed=seed, steps=2, cfg_scale=1.0))


def test_a_preview_made_stale_by_a_newer_request_is_dropped_before_it_draws(previewer, monkeypatch):
    p, base = previewer
    drawn = []
    monkeypatch.setattr("webui.mix_actions.blended", lambda *a: drawn.append(a) or pytest.fail("a stale preview drew"))
    older, newer = p.ticket(), p.ticket()
    assert newer > older
    assert p.preview(values(base, 1), ticket=older) == (None, None)
    assert not drawn
    monkeypatch.undo()
    (before, after), text = p.preview(values(base, 1), ticket=newer)
    assert before is not None and after is not None and "Seed 1" in text


def test_the_base_image_cache_is_keyed_by_the_seed(previewer):
    p, base = previewer
    (before1, after1), _ = p.preview(values(base, 1))
    (before2, after2), _ = p.preview(values(base, 2))
    # no adapter: "after" is the base model's own picture for that seed, so "before" must equal it
    assert np.array_equal(np.asarray(before1), np.asarray(after1))
    assert np.array_equal(np.asarray(before2), np.asarray(after2))
    assert not np.array_equal(np.asarray(before1), np.asarray(before2))
    (again, _), _ = p.preview(values(base, 1))
    assert again is before1  # the same request: the cached picture, not a second draw


def test_the_status_says_when_a_preview_was_not_computed_in_fp32(previewer, monkeypatch):
    import torch

    from loramix.mix.mixer import Mixer

    p, base = previewer
    _, text = p.preview(values(base, 3))
    assert "computed in" not in text  # the tiny model previews in fp32
    monkeypatch.setattr(Mixer, "dtype", property(lambda self: torch.bfloat16))
    _, text = p.preview(values(base, 3))
    assert "computed in bfloat16 (a bake is written in float32)." in text, text
