"""The every-slot judge reads the corpus's own pictures back right, and catches each slot drawn wrong."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from loramix.embedded.quality import (
    MIX_DEFAULT,
    MIX_DEFAULT_CFG,
    MIX_DEFAULT_SEED,
    MIX_DEFAULT_STEPS,
    fidelity_scenes,
    judge_slots,
    slot_rates,
)
from loramix.embedded.scenes import COLOURS, POSITIONS, SHAPES, Scene, ShapeSpec, random_scene, render
from loramix.mix.request import PreviewRequest

DEFAULT = MIX_DEFAULT
ROOT = Path(__file__).parents[2]


def test_the_mix_default_is_the_mix_tabs_prompt_seed_steps_and_cfg():
    from webui.mix_panels import DEFAULT_PROMPT

    panel = (ROOT / "webui" / "mix_panels.py").read_text()
    assert "value=DEFAULT_PROMPT" in panel and DEFAULT_PROMPT == MIX_DEFAULT.caption
    request = PreviewRequest(MIX_DEFAULT.caption)  # the Mix tab's widgets start from its defaults
    assert (request.seed, request.steps, request.cfg_scale) == (MIX_DEFAULT_SEED, MIX_DEFAULT_STEPS, MIX_DEFAULT_CFG)


def test_ground_truth_renders_of_the_held_out_prompts_pass_every_slot():
    verdicts = [judge_slots(render(s), s) for s in fidelity_scenes()]
    assert slot_rates(verdicts)["every slot"] == 1.0, [(v.caption, v.found) for v in verdicts if not v.ok]


def test_ground_truth_renders_of_training_like_scenes_pass_every_slot():
    rng = random.Random(11)  # one or two shapes, offsets, every background; gradients are not judged
    scenes = [s for s in (random_scene(rng) for _ in range(40)) if not s.gradient][:24]
    assert sum(len(s.shapes) == 2 for s in scenes) >= 5
    bad = [(s.caption, v.found) for s in scenes if not (v := judge_slots(render(s), s)).ok]
    assert not bad


def _wrong_slots(drawn: Scene, asked: Scene) -> set[str]:
    return {slot for slot, ok in judge_slots(render(drawn), asked).right.items() if not ok}


@pytest.mark.parametrize("background", [c for c in COLOURS if c not in ("blue", "red")])
def test_a_wrong_background_fails_that_slot_only(background):
    assert _wrong_slots(replace(DEFAULT, background=background), DEFAULT) == {"background"}


@pytest.mark.parametrize("shape", [s for s in SHAPES if s != "circle"])
@pytest.mark.parametrize("size", ["small", "large"])
def test_a_wrong_shape_fails_that_slot_only(shape, size):
    asked = Scene((ShapeSpec("circle", "red", "center", size),), "blue")
    drawn = Scene((ShapeSpec(shape, "red", "center", size),), "blue")
    assert _wrong_slots(drawn, asked) == {"shape"}


@pytest.mark.parametrize("position", [p for p in POSITIONS if p != "center"])
def test_a_wrong_position_fails_that_slot_only(position):
    drawn = Scene((ShapeSpec("circle", "red", position, "large"),), "blue")
    assert _wrong_slots(drawn, DEFAULT) == {"position"}


def test_a_wrong_size_or_colour_fails_that_slot_only():
    assert _wrong_slots(Scene((ShapeSpec("circle", "red", "center", "small"),), "blue"), DEFAULT) == {"size"}
    assert _wrong_slots(Scene((ShapeSpec("circle", "yellow", "center", "large"),), "blue"), DEFAULT) == {"colour"}


def test_a_missing_shape_fails_every_shape_slot():
    empty = Image.new("RGB", (64, 64), COLOURS["blue"])
    verdict = judge_slots(empty, DEFAULT)
    assert verdict.right == {"background": True, "colour": False, "shape": False, "size": False, "position": False}


def test_a_second_shape_is_judged_too():
    asked = Scene((ShapeSpec("square", "red", "left", "large"), ShapeSpec("star", "yellow", "right", "small")), "gray")
    drawn = Scene((ShapeSpec("square", "red", "left", "large"), ShapeSpec("diamond", "yellow", "right", "small")),
                  "gray")
    assert _wrong_slots(drawn, asked) == {"shape 2"}
    assert _wrong_slots(Scene(asked.shapes[:1], "gray"), asked) == {"colour 2", "shape 2", "size 2", "position 2"}


def test_a_blob_one_pixel_thin_is_read_not_crashed_on():
    image = Image.new("RGB", (64, 64), COLOURS["blue"])
    image.paste(COLOURS["red"], (20, 32, 44, 33))  # a 24 x 1 line where a circle was asked
    verdict = judge_slots(image, DEFAULT)
    assert verdict.right["background"] and verdict.right["colour"] and not verdict.right["shape"]
