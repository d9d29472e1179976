"""What published files say about local files: base names (kohya's ss_dataset_dirs counting), hub ids kept."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from loramix.core.config import field_specs, load_config
from loramix.formats.families import ModelFamily
from loramix.formats.published import PATH_FIELDS, base_name, published_config, published_model_name
from tests.conftest import make_folder
from trainers.checkpoint import adapter_metadata
from trainers.dataset import scan_folder

# Free-text config fields that are not paths. A new text field must be put here or in PATH_FIELDS.
NOT_PATHS = {"model.revision", "dataset.trigger_word", "network.target_modules", "output.output_name",
             "sample.prompts", "sample.negative_prompt"}


def test_every_free_text_config_field_is_classified_as_path_or_not():
    free_text = {s.name for s in field_specs() if s.type in (str, list[str]) and "choices" not in s.metadata}
    assert free_text == set(PATH_FIELDS) | NOT_PATHS


@pytest.mark.parametrize("base_model, published", [
    ("runwayml/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5"),  # a hub id is not a local path
    ("/home/someone/models/sd15", "sd15"),
    ("~/models/sd15.safetensors", "sd15.safetensors"),
    ("models/sd15/", "sd15"),
    ("C:\\Users\\someone\\models\\sd15.safetensors", "sd15.safetensors"),
    ("", ""),
])
def test_base_model_is_published_as_a_hub_id_or_a_base_name(base_model, published):
    assert published_model_name(base_model) == published


def test_a_local_folder_that_looks_like_a_hub_id_is_a_local_path(tmp_path, monkeypatch):
    (tmp_path / "models" / "sd15").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert published_model_name("models/sd15") == "sd15"
    assert base_name(".") == tmp_path.name and base_name("") == ""


def test_published_config_keeps_everything_but_the_paths(tmp_path):
    cfg = load_config(overrides=[f"model.base_model={tmp_path / 'models' / 'sd15.safetensors'}",
                                 f"dataset.data_dir={tmp_path / 'me' / 'data'}",
                                 f"dataset.reg_data_dir={tmp_path / 'me' / 'reg'}",
                                 f"train.resume_from={tmp_path / 'runs' / 'a' / 'a-state.safetensors'}",
                                 f"output.output_dir={tmp_path / 'runs' / 'b'}", "dataset.trigger_word=inkz",
                                 "sample.prompts=a red square"])
    published = published_config(cfg)
    assert str(tmp_path) not in json.dumps(published)
    assert published["model"]["base_model"] == "sd15.safetensors"
    assert published["dataset"]["data_dir"] == "data" and published["dataset"]["reg_data_dir"] == "reg"
    assert published["train"]["resume_from"] == "a-state.safetensors" and published["output"]["output_dir"] == "b"
    full = cfg.to_dict()
    for dotted in PATH_FIELDS:
        section, name = dotted.split(".")
        del full[section][name], published[section][name]
    assert published == full  # the trigger word the Mix card shows, the prompts, … unchanged


def test_ss_dataset_dirs_counts_folders_as_kohya_does(tmp_path):
    """kohya's train_network.py: per N_name sub-folder, {"n_repeats": N, "img_count": images in it}; a folder
    without a repeat count, with 0 repeats or without images is not trained and not listed."""
    data = tmp_path / "someone" / "data"
    make_folder(data / "10_style", n=3)
    make_folder(data / "2_ink_wash", n=4, prefix="x", captions=False)
    (data / "2_ink_wash" / "notes.md").write_text("not an image")
    make_folder(data / "0_off", n=2)
    make_folder(data / "unrepeated", n=2)
    (data / "5_empty").mkdir()
    cfg = load_config(overrides=[f"dataset.data_dir={data}", "dataset.resolution=64"])
    items = scan_folder(cfg.dataset)
    meta = adapter_metadata(cfg, ModelFamily(), step=1, epoch=0, num_images=len(items), tag_frequency={},
                            started_at=0.0, train_items=items)
    dirs = json.loads(meta["ss_dataset_dirs"])
    assert dirs == {"10_style": {"n_repeats": 10, "img_count": 3}, "2_ink_wash": {"n_repeats": 2, "img_count": 4}}
    assert sum(d["img_count"] for d in dirs.values()) == 7  # A1111's "Dataset size"
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {}
    assert "someone" not in json.dumps(meta)


def test_images_directly_in_the_data_folder_are_listed_by_its_base_name(tmp_path):
    # kohya trains only N_name sub-folders; loramix also takes images beside them with dataset.repeats, keyed
    # as ss_tag_frequency keys them
    data = make_folder(tmp_path / "someone" / "shapes", n=2)
    cfg = load_config(overrides=[f"dataset.data_dir={data}", "dataset.repeats=3", "dataset.resolution=64"])
    items = scan_folder(cfg.dataset)
    meta = adapter_metadata(cfg, ModelFamily(), step=1, epoch=0, num_images=2, tag_frequency={}, started_at=0.0,
                            train_items=items)
    assert json.loads(meta["ss_dataset_dirs"]) == {"3_shapes": {"n_repeats": 3, "img_count": 2}}


def test_state_file_config_names_no_local_path(tmp_path):
    import torch

    from trainers.checkpoint import load_state, save_state

    cfg = load_config(overrides=[f"dataset.data_dir={tmp_path / 'someone' / 'data'}"])
    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([param])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    path = save_state(tmp_path / "s.safetensors", step=1, lora={"a": param}, optimizer=opt, scheduler=sched,
                      config=cfg)
    assert load_state(path)["config"]["dataset"]["data_dir"] == "data"
    with safe_open(str(path), framework="pt") as f:
        assert str(tmp_path) not in json.dumps(f.metadata())
