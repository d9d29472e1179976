from pathlib import Path

import pytest

from loramix.core.config import (
    DEFAULT_TARGET_MODULES,
    LoramixConfig,
    field_specs,
    from_dict,
    load_config,
    set_value,
    to_toml,
)
from loramix.core.errors import ConfigError

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


def test_a_list_override_may_be_written_as_in_a_preset():
    comma = load_config(overrides=["network.target_modules=attn1.to_q, attn1.to_k"])
    toml = load_config(overrides=['network.target_modules=["attn1.to_q", "attn1.to_k"]'])
    assert comma.network.target_modules == toml.network.target_modules == ["attn1.to_q", "attn1.to_k"]
    prompts = load_config(overrides=['sample.prompts=["a, b", "c"]'])  # commas inside a prompt stay
    assert prompts.sample.prompts == ["a, b", "c"]
    emphasis = load_config(overrides=["sample.prompts=[cat] on a mat|a [dog]"])  # not TOML: split as before
    assert emphasis.sample.prompts == ["[cat] on a mat", "a [dog]"]
    with pytest.raises(ConfigError, match="network.target_modules"):
        load_config(overrides=["network.target_modules=[1, 2]"])


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


@pytest.mark.parametrize("assignment, field, words", [
    ("netwrk.rank=4", "netwrk.rank", "Did you mean network.rank"),  # a wrong section, not only a wrong field
    ("to_dict.x=1", "to_dict.x", "unknown config key"),
    ("output.output_name=..", "output.output_name", "must be a plain file name"),
    ("output.output_name=.", "output.output_name", "must be a plain file name"),
    ("output.output_name=a/b", "output.output_name", "must be a plain file name"),
    ("dataset.caption_extension=.png", "dataset.caption_extension", "choose one of .txt, .caption"),
    ("dataset.caption_extension=.py", "dataset.caption_extension", "choose one of .txt, .caption"),
    ("optim.learning_rate=nan", "optim.learning_rate", "not a finite number"),
    ("optim.learning_rate=inf", "optim.learning_rate", "not a finite number"),
])
def test_escapes_and_bad_names_are_config_errors(assignment, field, words):
    with pytest.raises(ConfigError, match=words) as e:
        load_config(overrides=[assignment])
    assert e.value.field == field


def test_set_value_with_a_wrong_section_is_a_config_error():
    with pytest.raises(ConfigError, match="netwrk.rank: unknown config key. Did you mean network.rank"):
        set_value(LoramixConfig(), "netwrk.rank=4")


def test_caption_extension_allow_list_is_the_engine_rule():
    from loramix.core.paths import CAPTION_EXTENSIONS

    for ext in CAPTION_EXTENSIONS:
        assert load_config(overrides=[f"dataset.caption_extension={ext}"]).dataset.caption_extension == ext


def test_non_utf8_toml_is_one_sentence_naming_the_file(tmp_path):
    bad = tmp_path / "latin.toml"
    bad.write_bytes('[dataset]\ntrigger_word = "café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.toml is not UTF-8 text \(byte \d+ is 0xe9\); save it as UTF-8"):
        load_config(bad)


# The audit's values, and one past each documented bound; the bound itself is accepted.
UPPER_BOUNDS = {
    "network.rank": 1024, "network.alpha": 1024.0, "dataset.resolution": 4096, "train.batch_size": 256,
    "train.gradient_accumulation_steps": 1024, "optim.learning_rate": 10.0, "network.text_encoder_lr": 10.0,
    "train.max_steps": 1_000_000, "train.epochs": 10_000, "dataset.max_image_pixels": 150_000_000,
    "dataset.repeats": 10_000, "sample.steps": 150, "sample.guidance_scale": 30.0,
}


@pytest.mark.parametrize("name, bound", sorted(UPPER_BOUNDS.items()))
def test_numeric_fields_have_documented_upper_bounds(name, bound):
    spec = {s.name: s for s in field_specs()}[name]
    assert spec.metadata["max"] == bound
    assert "At most" in spec.help  # the CLI help and the UI tooltip say the bound
    load_config(overrides=[f"{name}={bound}"])
    over = bound + 64 if isinstance(bound, int) else bound * 1.5
    with pytest.raises(ConfigError, match=f"{name}: .* is above the maximum"):
        load_config(overrides=[f"{name}={over}"])


@pytest.mark.parametrize("assignment", ["network.rank=100000", "dataset.resolution=100032",
                                        "train.batch_size=100000", "optim.learning_rate=1e6"])
def test_the_audits_huge_values_are_refused(assignment):
    with pytest.raises(ConfigError, match="above the maximum"):
        load_config(overrides=[assignment])


def test_every_int_and_float_field_has_an_upper_bound_or_is_a_ratio():
    unbounded = [s.name for s in field_specs() if s.type in (int, float) and "max" not in s.metadata]
    assert unbounded == [], unbounded


def test_resume_from_help_asks_for_the_state_file():
    spec = {s.name: s for s in field_specs()}["train.resume_from"]
    assert "-state.safetensors" in spec.help and "Folder" not in spec.help


def test_a_tomls_relative_folders_are_relative_to_the_file(tmp_path, monkeypatch):
    from loramix.core.config import with_absolute_folders

    (tmp_path / "presets").mkdir()
    preset = tmp_path / "presets" / "p.toml"
    preset.write_text('[dataset]\ndata_dir = "imgs"\nreg_data_dir = "../shared/reg"\n')
    monkeypatch.chdir(tmp_path.parent)
    config = load_config(preset, validate=False)
    assert config.dataset.data_dir == str(tmp_path / "presets" / "imgs")
    assert config.dataset.reg_data_dir == str(tmp_path / "shared" / "reg")
    preset.write_text(f'[dataset]\ndata_dir = "{tmp_path / "abs"}"\nreg_data_dir = "~/reg"\n')
    config = load_config(preset, validate=False)
    assert config.dataset.data_dir == str(tmp_path / "abs") and config.dataset.reg_data_dir == "~/reg"
    # on the command line a relative folder stays relative to the working folder ...
    config = load_config(preset, overrides=["dataset.data_dir=mine"], validate=False)
    assert config.dataset.data_dir == "mine"
    # ... and a TOML written for later holds it absolute, so that reading it back finds the same folder
    assert with_absolute_folders(config).dataset.data_dir == str(tmp_path.parent / "mine")
    assert config.dataset.data_dir == "mine"  # a copy: the config itself is unchanged


def test_the_keep_content_preset_finds_its_regularisation_pictures_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    repo = Path(__file__).resolve().parents[2]
    config = load_config(repo / "presets" / "demo-cpu-keep-content.toml")
    reg = Path(config.dataset.reg_data_dir)
    assert reg == repo / "loramix" / "embedded" / "reg" and len(list(reg.glob("*.png"))) >= 12
