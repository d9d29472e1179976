"""Preview requests are checked in the engine, so any client (UI, API, CLI) gets one sentence per bad field."""

import pytest

from loramix.core.errors import LoramixError
from loramix.mix.mixer import SAMPLERS, PreviewRequest


@pytest.mark.parametrize("field, value, words", [
    ("steps", 0, "preview steps: 0 is not allowed; use a whole number from 1 to 150"),
    ("steps", 151, "preview steps: 151"),
    ("steps", 2.5, "preview steps: 2.5"),
    ("width", 7, "preview width: 7 is not allowed; use 0 .* or a multiple of 8 from 64 to 2048"),
    ("height", 7, "preview height: 7"),
    ("width", 60, "preview width: 60"),
    ("width", 2056, "preview width: 2056"),
    ("height", 100, "preview height: 100"),
    ("cfg_scale", -1.0, "preview cfg_scale: -1.0 is not allowed; use a number from 0 to 30"),
    ("cfg_scale", 31, "preview cfg_scale: 31"),
    ("cfg_scale", float("nan"), "preview cfg_scale: nan"),
    ("seed", -1, "preview seed: -1 is not allowed; use a whole number from 0 up"),
    ("sampler", "heun", "preview sampler: 'heun' is not allowed; choose one of ddim"),
    ("prompt", None, "preview prompt: None"),
])
def test_bad_fields_are_named(field, value, words):
    req = PreviewRequest("red", **({} if field == "prompt" else {field: value}))
    if field == "prompt":
        req.prompt = value
    with pytest.raises(LoramixError, match=words):
        req.validate()


@pytest.mark.parametrize("kw", [dict(steps=1), dict(steps=150), dict(width=64, height=2048), dict(width=0, height=0),
                                dict(width=72, height=136), dict(cfg_scale=0), dict(cfg_scale=30.0), dict(seed=0),
                                *[dict(sampler=s) for s in SAMPLERS]])
def test_edges_are_accepted(kw):
    assert PreviewRequest("red", **kw).validate().prompt == "red"
