"""`loramix mix`, `merge` and `bake` as a user runs them."""

from __future__ import annotations

import pytest
from PIL import Image

from loramix.cli import main
from loramix.lora_spec import parse_lora_spec
from loramix.lora_io import read_lora
from tests.conftest import random_lora


def test_parse_lora_spec():
    assert parse_lora_spec("a.safetensors") == ("a.safetensors", 1.0, None)
    assert parse_lora_spec("dir/a.safetensors:-0.3") == ("dir/a.safetensors", -0.3, None)
    assert parse_lora_spec("C:/x/a.safetensors:0.8:0.5") == ("C:/x/a.safetensors", 0.8, 0.5)


@pytest.fixture(scope="module")
def two(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-loras")
    return random_lora(tiny_model, root / "a.safetensors", 1), random_lora(tiny_model, root / "b.safetensors", 2)


def test_mix_merge_bake_commands(tiny_model, two, tmp_path, capsys):
    a, b = two
    base = ["--base", str(tiny_model)]
    assert main(["mix", *base, "--lora", f"{a}:0.8", "--lora", f"{b}:-0.3", "--prompt", "red circle",
                 "--seed", "1", "--steps", "3", "--out", str(tmp_path / "p.png")]) == 0
    assert Image.open(tmp_path / "p.png").size == (64, 64)
    assert main(["mix", *base, "--lora", f"{a}:0.5", "--prompt", "red", "--steps", "2", "--grid-x",
                 "weight:a:-1,0,1", "--grid-y", "seed:1,2", "--out", str(tmp_path / "g.png")]) == 0
    assert Image.open(tmp_path / "g.png").size[1] == 36 + 2 * 128
    assert main(["merge", "--lora", f"{a}:0.8", "--lora", f"{b}:-0.3", "--rank", "2",
                 "--out", str(tmp_path / "m.safetensors")]) == 0
    assert "relative Frobenius error" in capsys.readouterr().out
    assert max(layer.rank for layer in read_lora(tmp_path / "m.safetensors").layers.values()) == 2
    assert main(["bake", *base, "--lora", f"{a}:1", "--out", str(tmp_path / "baked")]) == 0
    assert (tmp_path / "baked" / "unet" / "config.json").is_file()


def test_mix_refusal_is_one_line(tiny_model, tmp_path, capsys):
    bad = tmp_path / "x.ckpt"
    bad.write_bytes(b"\x80")
    assert main(["mix", "--base", str(tiny_model), "--lora", f"{bad}:1", "--prompt", "p",
                 "--out", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: x.ckpt: pickle files") and "Traceback" not in err
