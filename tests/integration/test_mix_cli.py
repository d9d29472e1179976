"""`loramix mix`, `merge` and `bake` as a user runs them."""

from __future__ import annotations

import pytest
from PIL import Image

from loramix.cli import main
from loramix.formats.lora_io import read_lora
from loramix.mix.lora_spec import parse_adapter_spec
from tests.conftest import random_lora


def test_parse_adapter_spec():
    def plain(spec):
        s = parse_adapter_spec(spec)
        return s.path, s.weight, s.te_weight, s.blocks

    assert plain("a.safetensors") == ("a.safetensors", 1.0, None, None)
    assert plain("dir/a.safetensors:-0.3") == ("dir/a.safetensors", -0.3, None, None)
    assert plain("C:/x/a.safetensors:0.8:0.5") == ("C:/x/a.safetensors", 0.8, 0.5, None)


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


def test_mix_file_drives_the_same_blend_and_merge_records_it(tiny_model, two, tmp_path):
    import json

    from loramix.mix.mix_preset import METADATA_KEY

    a, b = two
    (tmp_path / "blend.toml").write_text(
        f'schema_version = 1\n[[adapter]]\npath = "{a}"\nweight = 0.8\nte_weight = 0.5\nblocks = "OUTD"\n'
        f'[[adapter]]\npath = "{b}"\nweight = -0.3\nenabled = false\n')
    common = ["mix", "--base", str(tiny_model), "--prompt", "red circle", "--seed", "2", "--steps", "3"]
    assert main([*common, "--mix", str(tmp_path / "blend.toml"), "--out", str(tmp_path / "file.png")]) == 0
    assert main([*common, "--lora", f"{a}:0.8:0.5:lbw=OUTD", "--out", str(tmp_path / "flags.png")]) == 0
    assert main([*common, "--lora", f"{a}:0.8:0.5", "--out", str(tmp_path / "no-blocks.png")]) == 0
    pixels = {k: Image.open(tmp_path / f"{k}.png").tobytes() for k in ("file", "flags", "no-blocks")}
    assert pixels["file"] == pixels["flags"] != pixels["no-blocks"]
    assert main(["merge", "--lora", f"{a}:0.8:lbw=OUTD", "--lora", f"{b}:-0.3",
                 "--out", str(tmp_path / "m.safetensors")]) == 0
    recorded = json.loads(read_lora(tmp_path / "m.safetensors").metadata[METADATA_KEY])
    assert [(r["weight"], r.get("blocks")) for r in recorded["adapter"]] == [(0.8, "OUTD"), (-0.3, None)]


def test_grid_adapter_is_checked_before_the_model_loads(two, tmp_path, capsys, monkeypatch):
    from loramix.core.errors import LoramixError
    from loramix.mix.mixer import Mixer

    def no_model(*a, **k):
        raise LoramixError("the model would load now")

    monkeypatch.setattr(Mixer, "from_base", classmethod(no_model))
    a, b = two
    args = ["mix", "--lora", f"{a}:0.5", "--lora", f"{b}:1", "--prompt", "p", "--out", str(tmp_path / "g.png")]
    assert main([*args, "--grid-x", "weight:nope:0,1"]) == 2
    err = capsys.readouterr().err
    assert "'nope' is not loaded" in err and "a (" in err and "the model would load" not in err
    assert main([*args, "--grid-x", "seed:1,2", "--grid-y", "lbw:zzz:ALL,OUTD"]) == 2
    assert "'zzz' is not loaded" in capsys.readouterr().err
    for name in ("a", str(a), "b"):  # a file's stem or its path
        assert main([*args, "--grid-x", f"weight:{name}:0,1"]) == 2
        assert "the model would load now" in capsys.readouterr().err


def test_grid_over_block_presets_and_cfg(tiny_model, two, tmp_path):
    a, _ = two
    out = tmp_path / "grid.png"
    assert main(["mix", "--base", str(tiny_model), "--lora", f"{a}:1.5", "--prompt", "red circle", "--steps", "2",
                 "--grid-x", f"lbw:{a}:NONE,OUTD,ALL", "--grid-y", "cfg:1,9", "--out", str(out)]) == 0
    grid = Image.open(out).convert("RGB")
    size, top = 128, 36
    left = grid.size[0] - 3 * size
    cells = [[grid.crop((left + c * size, top + r * size, left + (c + 1) * size, top + (r + 1) * size)).tobytes()
              for c in range(3)] for r in range(2)]
    assert len({cell for row in cells for cell in row}) == 6
    margin = grid.crop((0, 0, grid.size[0], top)).convert("L")
    assert min(margin.getdata()) < 100  # labels are drawn, in the margin above the cells


def test_mix_computes_in_the_precision_asked_and_bake_loads_the_base_in_fp32_once(tiny_model, two, tmp_path,
                                                                                 monkeypatch):
    import torch

    from loramix.mix.mixer import Mixer

    made, real = [], Mixer.from_base.__func__
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(Mixer, "from_base", classmethod(lambda cls, *a, **kw: made.append(real(cls, *a, **kw))
                                                         or made[-1]))
    a, _ = two
    assert main(["mix", "--base", str(tiny_model), "--lora", f"{a}:0.8", "--prompt", "red circle", "--steps", "2",
                 "--precision", "bf16", "--out", str(tmp_path / "p.png")]) == 0
    assert [m.dtype for m in made] == [torch.bfloat16]
    made.clear()
    monkeypatch.setattr("loramix.core.cpu_features.native_bf16", lambda: True)  # auto would pick bf16 here
    monkeypatch.setattr("loramix.formats.base_model.is_toy_sized", lambda config: False)
    assert main(["bake", "--base", str(tiny_model), "--lora", f"{a}:1", "--out", str(tmp_path / "baked")]) == 0
    assert [m.dtype for m in made] == [torch.float32]  # no bf16 load followed by an fp32 twin
