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
def test_each_set_shows_its_style_at_least_half_as_strongly_as_the_styles_drawing_of_the_prompts(style, sets):
    """The statistic tells the style from plain, and the set carries it: from plain pictures of the prompts, the
    set's value lies the same way as the style's own drawing of them, and at least half as far. (Not "the drawing
    is half-way to the set": the set's value also depends on its scenes, and pastel's set with every background
    colour has more coloured pixels than these prompts, 0.31 against the drawing's 0.20 and plain's 0.47.)"""
    draw = DRAW[style]
    target = style_target(style, sets[style])
    plain = np.mean([style_statistic(style, render(s)) for s in SCENES])
    styled = np.mean([style_statistic(style, draw(s)) for s in SCENES])
    assert np.sign(target - plain) == np.sign(styled - plain), (plain, styled, target)
    assert abs(target - plain) >= 0.5 * abs(styled - plain), (plain, styled, target)


@pytest.mark.parametrize("style", sorted(STYLE_STATISTICS))
def test_a_perfectly_styled_picture_keeps_its_content(style):
    draw = DRAW[style]
    assert all(content_kept(draw(s), s, style).ok for s in SCENES)


def test_a_style_that_paints_the_background_another_colour_has_lost_the_content():
    """The README's pastel screenshot: the Mix tab default's blue background drawn dusty pink, the circle still
    red in its place. The shape alone would pass; the background does not, plain or pastel. Blue drawn plain, or
    pastel blue, is kept."""
    scene = Scene((ShapeSpec("circle", "red", "center", "large"),), "blue")
    washed = {name: make_styles.styled_colour("pastel", rgb) for name, rgb in make_styles.COLOURS.items()}
    assert content_kept(render(scene, washed), scene, "pastel").ok
    assert content_kept(render(scene), scene, "pastel").ok  # the style left the background alone
    dusty_pink = (205, 160, 170)
    pink = render(scene, {**washed, "blue": dusty_pink})
    assert judge(pink, scene, min_saturation=0.15, min_fraction=0.10).ok  # the shape alone is kept
    verdict = content_kept(pink, scene, "pastel")
    assert not verdict.ok and verdict.found.startswith("red on ") and verdict.found != "red on blue", verdict
    assert not content_kept(render(scene, washed), scene).ok  # pastel blue is not blue without the style


def test_ink_draws_on_paper_whatever_the_background_asked():
    scene = Scene((ShapeSpec("circle", "red", "center", "large"),), "blue")
    assert content_kept(make_styles.ink(scene), scene, "ink").ok
    assert content_kept(render(scene), scene, "ink").ok
    assert not content_kept(make_styles.ink(scene), scene).ok  # paper is white to a plain reading


def test_the_quality_thresholds_alone_would_call_pastel_content_lost():
    """Why `content_kept` lowers the thresholds: at the quality test's, half of the ideal pastels fail."""
    assert sum(judge(make_styles.pastel(s), s).ok for s in SCENES) < 0.75 * len(SCENES)


def test_wrong_colour_or_background_colour_in_the_place_is_content_lost():
    scene = Scene((ShapeSpec("circle", "red", "left", "large"),), "blue")
    assert content_kept(render(scene), scene).ok
    green = Scene((ShapeSpec("circle", "green", "left", "large"),), "blue")
    assert content_kept(render(green), scene).found == "green on blue"
    moved = Scene((ShapeSpec("circle", "red", "right", "large"),), "blue")
    assert content_kept(render(moved), scene).found == "none on blue"  # only background where the caption says
    assert content_kept(Image.new("RGB", (64, 64), (150, 150, 150)), scene).found == "none on gray"


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


def test_a_background_part_way_to_the_styles_drawing_of_it_is_kept_and_one_past_it_is_not():
    """A LoRA early in training (or at a slider below 1) lightens a gray background part-way: (150, 150, 150),
    which pastel's drawing of black (149) is as near as the gray range. A person reads the gray that was asked
    (the LoRAs of 2026-12-06, looked at). Lightened past pastel's gray, to white, it is another colour."""
    scene = Scene((ShapeSpec("circle", "red", "center", "large"),), "gray")
    part_way = render(scene, {**make_styles.COLOURS, "gray": (150, 150, 150)})
    assert content_kept(part_way, scene, "pastel").found == "red on gray"
    white = render(scene, {**make_styles.COLOURS, "gray": (245, 245, 240)})
    assert content_kept(white, scene, "pastel").found == "red on white"
    black_scene = Scene(scene.shapes, "black")
    assert content_kept(render(scene), black_scene).found == "red on gray"  # plain gray for black, no style
    # plain gray as the base draws it (128, 125, 126) lies nearer pastel's black range than gray's: the caption wins
    assert content_kept(render(scene, {**make_styles.COLOURS, "gray": (128, 125, 126)}), scene, "pastel").ok

    blue = Scene(scene.shapes, "blue")
    half = tuple((a + b) // 2 for a, b in zip(make_styles.COLOURS["blue"],
                                              make_styles.styled_colour("pastel", make_styles.COLOURS["blue"])))
    half_blue = render(blue, {**make_styles.COLOURS, "blue": half})
    assert content_kept(half_blue, blue, "pastel").ok


@pytest.mark.parametrize("style", sorted(STYLE_STATISTICS))
def test_the_prompts_target_calls_the_styles_own_drawing_of_the_prompts_styled_whatever_the_set_holds(style, sets):
    """`prompts_target` is the statistic of the style's own drawing of the prompts, so that drawing is at ratio 0
    and a plain drawing at 1. The set's value also depends on the set's scenes (two shapes, coloured backgrounds),
    so for ink the same perfect drawing is not styled by it (0.46 through the VAE, docs/benchmarks.md); drawn
    here without the VAE, the two targets differ by a fifth of the plain-to-style distance or more."""
    from loramix.embedded.style_metrics import prompts_target

    draw = DRAW[style]
    plain = np.mean([style_statistic(style, render(s)) for s in SCENES])
    perfect = np.mean([style_statistic(style, draw(s)) for s in SCENES])
    target = prompts_target(style, SCENES)
    assert abs(perfect - target) / abs(plain - target) < 1e-6
    if style == "ink":
        from_set = style_target(style, sets[style])
        assert abs(from_set - target) >= 0.2 * abs(plain - target), (from_set, target, plain)
    assert prompts_target("my-own-style", SCENES) is None  # a set of the user's: no drawing, the set's value


def test_every_style_that_redraws_the_background_has_a_set_that_captions_every_background():
    """A style that draws some caption's background otherwise than plain (pastel and dusk recolour it, ink puts paper
    under it) must be in make_styles.COVERING, whose sets caption every background colour: ink's first set, all
    "white background", taught outlines on white only, and its LoRAs kept a blue background blue."""
    from loramix.embedded.quality import read_background
    from loramix.embedded.scenes import COLOURS

    shape = ShapeSpec("square", "red", "center", "small")
    redrawing = {name for name, draw in DRAW.items() for bg in COLOURS if bg != "red" and np.linalg.norm(
        read_background(np.asarray(draw(Scene([shape], bg)), np.float32))[0] - COLOURS[bg]) > 12}
    assert redrawing == {"pastel", "dusk", "ink"}  # the look decides, not a list: stripes keeps the background
    assert redrawing <= make_styles.COVERING, redrawing - make_styles.COVERING


def test_the_shipped_sets_are_what_make_styles_writes_and_colour_styles_show_every_background(tmp_path):
    """One definition: the shipped sets come out of tools/make_styles.py byte for byte. The styles that redraw
    the background (pastel, ink, and the held-out dusk) caption every background colour, so a LoRA has seen how the
    style draws the one a prompt asks, and hold no held-out (colour, shape, position), which the content check asks.
    (The stripes set, older, holds one: a small green diamond on the left.)"""
    from loramix.embedded import STYLE_SETS
    from loramix.embedded.scenes import COLOURS, held_out_triples

    held_out = held_out_triples()
    for name in make_styles.STYLES:
        written = make_styles.write_style(name, tmp_path)
        shipped = sorted(p.name for p in (STYLE_SETS / name).iterdir())
        assert shipped == sorted(p.name for p in written.iterdir())
        assert all((STYLE_SETS / name / f).read_bytes() == (written / f).read_bytes() for f in shipped), name
    for name in make_styles.COVERING:
        folder = make_styles.write_style(name, tmp_path / "covering")
        captions = [p.read_text() for p in sorted(folder.glob("*.txt"))]
        assert {c.split(", ")[-1].replace(" gradient", "").split()[0] for c in captions} == set(COLOURS), name
        scenes = make_styles.style_scenes(make_styles.random.Random(f"{name}-0"), 12, covering=True)
        assert not [s.caption for s in scenes if {(x.colour, x.shape, x.position) for x in s.shapes} & held_out]
