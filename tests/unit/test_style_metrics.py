"""The style statistics and the content check measure what they claim, on pictures whose truth is known:
the held-out scenes drawn plain and drawn in each shipped style by the same code that made the sets."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loramix.embedded.quality import judge
from loramix.embedded.scenes import Scene, ShapeSpec, render
from loramix.embedded.style_metrics import (
    STYLE_STATISTICS,
    content_kept,
    content_scenes,
    style_statistic,
    style_target,
)

_spec = importlib.util.spec_from_file_location("make_styles", Path(__file__).parents[2] / "tools" / "make_styles.py")
make_styles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_styles)
SCENES = content_scenes(24)
DRAW = {**make_styles.STYLES, **make_styles.HELD_OUT_STYLES}


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """style -> its folder: the shipped sets, and the held-out ones written by make_styles as the bench does."""
    from loramix.embedded import STYLE_SETS

    held_out = tmp_path_factory.mktemp("held-out-styles")
    return {**{name: STYLE_SETS / name for name in make_styles.STYLES},
            **{name: make_styles.write_style(name, held_out) for name in make_styles.HELD_OUT_STYLES}}


def test_every_statistic_has_a_style_that_draws_it():
    assert set(STYLE_STATISTICS) == set(DRAW)


@pytest.mark.parametrize("style", sorted(STYLE_STATISTICS))
def test_statistic_moves_a_plain_picture_at_least_halfway_to_the_set(style, sets):
    draw = DRAW[style]
    target = style_target(style, sets[style])
    plain = np.mean([style_statistic(style, render(s)) for s in SCENES])
    styled = np.mean([style_statistic(style, draw(s)) for s in SCENES])
    assert abs(styled - target) <= 0.5 * abs(plain - target), (plain, styled, target)


@pytest.mark.parametrize("style", sorted(STYLE_STATISTICS))
def test_a_perfectly_styled_picture_keeps_its_content(style):
    draw = DRAW[style]
    assert all(content_kept(draw(s), s).ok for s in SCENES)


def test_the_quality_thresholds_alone_would_call_pastel_content_lost():
    """Why `content_kept` lowers the thresholds: at the quality test's, half of the ideal pastels fail."""
    assert sum(judge(make_styles.pastel(s), s).ok for s in SCENES) < 0.75 * len(SCENES)


def test_wrong_colour_or_background_colour_in_the_place_is_content_lost():
    scene = Scene((ShapeSpec("circle", "red", "left", "large"),), "blue")
    assert content_kept(render(scene), scene).ok
    green = Scene((ShapeSpec("circle", "green", "left", "large"),), "blue")
    assert content_kept(render(green), scene).found == "green"
    moved = Scene((ShapeSpec("circle", "red", "right", "large"),), "blue")
    assert content_kept(render(moved), scene).found == "none"  # only background where the caption says
    assert content_kept(Image.new("RGB", (64, 64), (150, 150, 150)), scene).found == "none"


def test_the_embedded_vae_draws_the_styles_back(sets):
    """A LoRA on the UNet can draw at most what the base's VAE decodes: each set, held-out ones too, encoded and
    decoded, keeps at least a third of its statistic's lead over plain pictures (the first 3-px stripes kept
    none, so no LoRA could learn them)."""
    from diffusers import AutoencoderKL

    from loramix.embedded import EMBEDDED_MODEL

    vae = AutoencoderKL.from_pretrained(EMBEDDED_MODEL, subfolder="vae").eval()
    for style in sorted(STYLE_STATISTICS):
        plain = np.mean([style_statistic(style, render(s)) for s in SCENES])
        drawn, target = style_target(style, sets[style], vae=vae), style_target(style, sets[style])
        assert abs(drawn - plain) >= abs(target - plain) / 3, (style, plain, drawn, target)
