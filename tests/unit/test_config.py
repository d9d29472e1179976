from pathlib import Path

import pytest

from loramix.config import (
    DEFAULT_TARGET_MODULES,
    LoramixConfig,
    field_specs,
    from_dict,
    load_config,
    set_value,
    to_toml,
)
from loramix.errors import ConfigError

PRESETS = Path(__file__).resolve().parents[2] / "presets"


def test_defaults_are_valid_and_documented():
    cfg = LoramixConfig().validate()
    assert cfg.network.target_modules == DEFAULT_TARGET_MODULES
    specs = field_specs()
    assert len(specs) > 40
    assert all(s.help for s in specs), [s.name for s in specs if not s.help]


def test_layering_defaults_preset_user_set(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text("[network]\nrank = 8\nalpha = 4\n[optim]\nlearning_rate = 5e-4\n")
    user = tmp_path / "u.toml"
    user.write_text("[network]\nrank = 32\n")
    cfg = load_config(preset, user, overrides=["network.alpha=2", "sample.prompts=a cat|a dog, running"])
    assert cfg.network.rank == 32  # user file beats preset
    assert cfg.network.alpha == 2.0  # --set beats both
    assert cfg.optim.learning_rate == 5e-4  # preset beats default
    assert cfg.sample.prompts == ["a cat", "a dog, running"]
    assert cfg.train.seed == 42  # untouched default


@pytest.mark.parametrize("assignment, field, words", [
    ("network.rnak=4", "network.rnak", "Did you mean network.rank"),
    ("optim.optimizer=sgd", "optim.optimizer", "choose one of adamw, adamw8bit, prodigy"),
    ("network.rank=0", "network.rank", "below the minimum 1"),
    ("network.rank=four", "network.rank", "not a valid int"),
    ("dataset.caption_dropout_rate=1.5", "dataset.caption_dropout_rate", "above the maximum 1.0"),
    ("dataset.resolution=100", "dataset.resolution", "not a multiple of 64"),
    ("train.gradient_checkpointing=maybe", "train.gradient_checkpointing", "not a valid bool"),
    ("rank=4", "rank", "section.field"),
])
def test_bad_values_name_the_field(assignment, field, words):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[assignment])
    assert e.value.field == field
    assert str(e.value).startswith(field)
    assert words in str(e.value)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="dataset.cache_text_embeddings"):
        load_config(overrides=["network.train_text_encoder=true"])
    load_config(overrides=["network.train_text_encoder=true", "dataset.cache_text_embeddings=false"])
    with pytest.raises(ConfigError, match="dataset.crop: random crops cannot be cached"):
        load_config(overrides=["dataset.crop=random"])
    with pytest.raises(ConfigError, match="shuffled captions"):
        load_config(overrides=["dataset.shuffle_captions=true"])


def test_unknown_section_and_schema_version(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[netwrk]\nrank = 4\n")
    with pytest.raises(ConfigError, match="netwrk.rank: unknown config key"):
        load_config(bad)
    future = tmp_path / "future.toml"
    future.write_text("schema_version = 99\n")
    with pytest.raises(ConfigError, match="schema_version"):
        load_config(future)
    broken = tmp_path / "broken.toml"
    broken.write_text("[network\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_toml_round_trip(tmp_path):
    cfg = load_config(overrides=["network.rank=8", "network.target_modules=to_q,to_v,ff.net.2",
                                 "sample.prompts=a|b"])
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    again = load_config(path)
    assert again == cfg
    assert from_dict(cfg.to_dict()) == cfg
    changed = to_toml(cfg, only_changed=True)
    assert "rank = 8" in changed and "seed" not in changed


def test_every_shipped_preset_loads():
    presets = sorted(PRESETS.glob("*.toml"))
    assert presets, "presets/ is empty"
    for preset in presets:
        load_config(preset)


def test_set_value_parses_types():
    cfg = LoramixConfig()
    set_value(cfg, "train.gradient_checkpointing=yes")
    set_value(cfg, "optim.learning_rate=3e-4")
    set_value(cfg, "dataset.trigger_word=mystyle")
    assert cfg.train.gradient_checkpointing is True
    assert cfg.optim.learning_rate == 3e-4
    assert cfg.dataset.trigger_word == "mystyle"
