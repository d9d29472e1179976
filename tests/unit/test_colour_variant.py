"""tools/make_corpus.py::colour_variant, the decoder stage's pictures in random colours: the scene's layout kept,
each palette colour (background included) replaced by one random colour, drawn from the whole RGB cube."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from make_corpus import colour_variant  # noqa: E402

from loramix.embedded.scenes import COLOURS, Scene, ShapeSpec, render  # noqa: E402

SCENE = Scene((ShapeSpec("square", "red", "center", "large"),), background="blue")


def test_the_layout_stays_and_each_colour_is_replaced_by_one_random_colour():
    plain = np.asarray(render(SCENE), dtype=np.int16)
    got = colour_variant(SCENE, random.Random(3)).astype(np.int16)
    assert got.shape == (64, 64, 3)
    shape = (np.abs(plain - np.array(COLOURS["red"])).sum(-1) < 6)  # the square's inner pixels in the plain render
    ground = (np.abs(plain - np.array(COLOURS["blue"])).sum(-1) < 6)
    assert shape.sum() > 300 and ground.sum() > 1500
    inside, outside = got[shape], got[ground]
    assert np.ptp(inside, axis=0).max() <= 2 and np.ptp(outside, axis=0).max() <= 2  # one flat colour each
    assert np.abs(inside[0] - outside[0]).sum() > 0
    assert np.abs(inside[0] - np.array(COLOURS["red"])).sum() > 6  # not the corpus colour


def test_the_colours_cover_dull_pale_and_dark_tones():
    rng = random.Random(0)
    colours = np.array([colour_variant(SCENE, rng)[32, 32] for _ in range(200)], dtype=np.float32) / 255
    saturation = (colours.max(1) - colours.min(1)) / np.maximum(colours.max(1), 1e-6)
    assert (colours.max(1) < 0.45).mean() > 0.05  # dark
    assert ((colours.min(1) > 0.55) & (saturation < 0.45)).mean() > 0.05  # pale
    assert (saturation < 0.2).mean() > 0.03  # dull
