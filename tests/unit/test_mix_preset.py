"""Mix presets: a blend as a small TOML file, read back exactly; unknown keys and bad values named."""

from __future__ import annotations

import json

import pytest

from loramix.core.errors import LoramixError
from loramix.mix.mix_preset import (
    METADATA_KEY,
    MixEntry,
    MixPreset,
    adapter_names,
    build_blend,
    load_mix_preset,
    mix_preset_from_metadata,
    mix_preset_metadata,
    save_mix_preset,
)


def sample(tmp_path) -> MixPreset:
    from loramix.mix.block_weights import parse_block_weights

    return MixPreset([
        MixEntry(str(tmp_path / "ink.safetensors"), 0.8, 0.5, parse_block_weights("OUTD")),
        MixEntry(str(tmp_path / "sub" / "ink.safetensors"), -0.3, None, parse_block_weights("1," * 16 + "0.5"), False),
        MixEntry(str(tmp_path / "plain.safetensors")),
    ])


def test_round_trip(tmp_path):
    preset = sample(tmp_path)
    path = save_mix_preset(tmp_path / "blend.toml", preset)
    text = path.read_text()
    assert "schema_version = 2" in text and 'blocks = "OUTD"' in text and "[[adapter]]" in text
    assert load_mix_preset(path) == preset
    # an exported file names each adapter by its file name only; a folder given reads them from there
    recorded = mix_preset_from_metadata(mix_preset_metadata(preset))
    assert [e.path for e in recorded.adapters] == ["ink.safetensors", "ink.safetensors", "plain.safetensors"]
    assert str(tmp_path) not in mix_preset_metadata(preset)[METADATA_KEY]
    recorded = mix_preset_from_metadata(mix_preset_metadata(preset), base_dir=tmp_path / "loras")
    assert recorded.adapters[2].path == str(tmp_path / "loras" / "plain.safetensors")
    assert [(e.weight, e.te_weight, e.blocks, e.enabled) for e in recorded.adapters] == \
        [(e.weight, e.te_weight, e.blocks, e.enabled) for e in preset.adapters]
    assert json.loads(mix_preset_metadata(preset)[METADATA_KEY])["adapter"][0]["weight"] == 0.8
    assert list(adapter_names(preset)) == ["ink", "ink#2", "plain"]  # as Mixer.set_blend names them


def test_relative_paths_are_read_from_the_presets_folder(tmp_path):
    (tmp_path / "mixes").mkdir()
    (tmp_path / "mixes" / "m.toml").write_text('[[adapter]]\npath = "../loras/a.safetensors"\nweight = 0.5\n')
    entry = load_mix_preset(tmp_path / "mixes" / "m.toml").adapters[0]
    assert entry.path == str(tmp_path / "mixes" / "../loras/a.safetensors") and entry.weight == 0.5
    assert entry.enabled and entry.blocks is None and entry.te_weight is None


@pytest.mark.parametrize("toml, words", [
    ('schema_version = 1\ncolour = "red"\n', ["unknown key 'colour'"]),
    ('[[adapter]]\npath = "a.safetensors"\nwieght = 0.5\n', ["adapter[1]", "unknown key 'wieght'"]),
    ('[[adapter]]\npath = "a.safetensors"\nweight = "high"\n', ["adapter[1].weight", "'high'"]),
    ('[[adapter]]\npath = "a.safetensors"\nblocks = "OUTX"\n', ["adapter[1].blocks", "'OUTX'"]),
    ('[[adapter]]\npath = "a.safetensors"\nenabled = "yes"\n', ["adapter[1].enabled"]),
    ('[[adapter]]\nweight = 1.0\n', ["adapter[1].path"]),
    ("schema_version = 7\n", ["schema_version 7"]),
    ("[[adapter]\n", ["not valid TOML"]),
])
def test_bad_presets_name_the_key(tmp_path, toml, words):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(LoramixError) as e:
        load_mix_preset(path)
    for word in words:
        assert word in str(e.value)
    assert "bad.toml" in str(e.value)


def test_build_blend_puts_the_file_first_then_the_lora_flags(tmp_path):
    save_mix_preset(tmp_path / "m.toml", sample(tmp_path))
    blend = build_blend(tmp_path / "m.toml", [f"{tmp_path / 'x.safetensors'}:0.25:lbw=INS"])
    assert [e.weight for e in blend.adapters] == [0.8, -0.3, 1.0, 0.25] and blend.adapters[3].blocks.text == "INS"
