"""Files users publish carry no local paths: a LoRA, its resumable state, a merge, a web export and a bake
(diffusers folder and single file) name folders and files by their base names only, as kohya does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors import safe_open

from loramix.cli import main
from loramix.formats.adapter_info import adapter_info
from loramix.formats.lora_io import read_lora
from loramix.mix.mix_preset import mix_preset_from_metadata
from tests.conftest import make_folder, tiny_config
from trainers.lora_trainer import train

SECRET = "secret-user-name-xyz"


def _published_texts(root: Path) -> dict[str, str]:
    """Every metadata value of every safetensors file under `root`, and every JSON file (a baked folder's
    configs), keyed by where it was found."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                for key, value in (f.metadata() or {}).items():
                    found[f"{path.relative_to(root)}[{key}]"] = value
        elif path.suffix == ".json":
            found[str(path.relative_to(root))] = path.read_text(encoding="utf-8")
    return found


def _leaks(texts: dict[str, str], forbidden: list[str]) -> list[str]:
    return [f"{where} holds {word!r}: {text[:200]}" for where, text in texts.items() for word in forbidden
            if word in text]


def test_trained_merged_exported_and_baked_files_name_no_local_path(tiny_model, tmp_path, tmp_path_factory):
    from webui import mix_tab
    from webui.jobs import JobManager
    from webui.state import AppState

    home = tmp_path / SECRET
    data = home / "data"
    make_folder(data / "10_style", n=3)
    make_folder(data / "2_extra", n=2, prefix="x")
    make_folder(home / "reg" / "1_shape", n=2, prefix="r", captions=False)
    first = train(tiny_config(tiny_model, data, home / "run1", "train.max_steps=2", "output.save_every_n_steps=1",
                              f"dataset.reg_data_dir={home / 'reg'}", "output.output_name=style",
                              "dataset.trigger_word=inkz"))
    second = train(tiny_config(tiny_model, data, home / "run2", "train.max_steps=3", "output.output_name=resumed",
                               f"train.resume_from={first.state_path}"))
    assert second.steps == 3 and first.state_path.is_file()

    a, b = first.lora_path, second.lora_path
    assert main(["merge", "--lora", f"{a}:0.7", "--lora", f"{b}:-0.2:lbw=OUTD",
                 "--out", str(home / "merged.safetensors")]) == 0
    assert main(["bake", "--base", str(tiny_model), "--lora", f"{a}:0.8", "--lora", f"{b}:0.3",
                 "--out", str(home / "baked"), "--single-file", str(home / "baked.safetensors")]) == 0

    state = AppState.create(home / "outputs", jobs=JobManager(home / "jobs.db", lambda *_: None))
    rows = [(str(shutil.copy(p, state.lora_dir / p.name)), w, True, None) for p, w in ((a, 0.5), (b, 0.5))]
    v = mix_tab.MixValues(str(tiny_model), rows, "red stripes", "", 1, 2, 3.0, 0, "ddim")
    exported, _ = mix_tab.export_blend(state, v, "duo", 0, "fp32", False)
    bake_zip, _ = mix_tab.bake_blend(state, v, "web-bake", False)
    shutil.unpack_archive(bake_zip, home / "unzipped")

    texts = _published_texts(home)
    for name in ("run1/style.safetensors", "run1/style-state.safetensors", "run2/resumed.safetensors",
                 "merged.safetensors", "baked.safetensors", "outputs/loras/duo.safetensors",
                 "baked/model_index.json", "unzipped/unet/config.json"):
        assert any(where.startswith(name) for where in texts), f"{name} was not written or not scanned"
    forbidden = [SECRET, str(tmp_path), str(tmp_path_factory.getbasetemp()), str(Path.home())]
    assert not _leaks(texts, forbidden), "\n".join(_leaks(texts, forbidden))

    # what replaced the paths still says what it was: base names, counted as kohya counts them
    meta = read_lora(a).metadata
    assert json.loads(meta["ss_dataset_dirs"]) == {"10_style": {"n_repeats": 10, "img_count": 3},
                                                   "2_extra": {"n_repeats": 2, "img_count": 2}}
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"1_shape": {"n_repeats": 1, "img_count": 2}}
    assert meta["ss_sd_model_name"] == tiny_model.name
    config = json.loads(meta["loramix_config"])
    assert config["model"]["base_model"] == tiny_model.name
    assert config["dataset"]["data_dir"] == "data" and config["dataset"]["reg_data_dir"] == "reg"
    assert config["output"]["output_dir"] == "run1"
    assert json.loads(read_lora(b).metadata["loramix_config"])["train"]["resume_from"] == "style-state.safetensors"
    assert adapter_info(a).trigger == "inkz"  # the Mix tab's card still reads the published config
    recorded = mix_preset_from_metadata(read_lora(home / "merged.safetensors").metadata)
    assert [(e.path, e.weight) for e in recorded.adapters] == [("style.safetensors", 0.7), ("resumed.safetensors", -0.2)]
    recorded = mix_preset_from_metadata(read_lora(exported).metadata, base_dir=state.lora_dir)
    assert [e.path for e in recorded.adapters] == [str(state.lora_dir / "style.safetensors"),
                                                   str(state.lora_dir / "resumed.safetensors")]

