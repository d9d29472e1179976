"""One run folder per job: a second run never overwrites the first, a lock refuses a second writer,
a killed run's temp files are cleared, and a bad output folder is refused before any model loads."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loramix.cli import main
from loramix.core.errors import ConfigError, LoramixError
from loramix.core.runs import RunLock, new_run_folder
from tests.conftest import tiny_config
from trainers.lora_trainer import train


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_run_into_the_same_folder_is_refused_and_the_first_is_untouched(tiny_model, image_folder, tmp_path):
    out = tmp_path / "out"
    train(tiny_config(tiny_model, image_folder, out, "train.max_steps=2"))
    before = digest(out)
    with pytest.raises(ConfigError, match="already holds another run"):
        train(tiny_config(tiny_model, image_folder, out, "train.max_steps=2", "output.output_name=other"))
    assert digest(out) == before


def test_a_locked_folder_refuses_a_second_process_naming_it(tiny_model, image_folder, tmp_path, capsys):
    out = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from loramix.core.runs import RunLock; "
                               f"lock = RunLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code = main(["train", "--data", str(image_folder), "--output", str(out), "--base", str(tiny_model),
                     "--set", "train.max_steps=1", "--set", "dataset.resolution=64", "--quiet"])
        assert code == 2
        err = capsys.readouterr().err
        assert "in use by a running loramix training" in err and f"pid {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    with RunLock(out):  # the kernel dropped the dead holder's lock: nothing to clean by hand
        pass


def test_stale_temp_files_of_a_killed_run_are_removed_when_a_run_starts(tiny_model, image_folder, tmp_path):
    out = tmp_path / "stale"
    (out / "samples").mkdir(parents=True)
    # the names loramix.core.writer makes (tempfile's 8 random characters); only those are ever removed
    leftovers = [out / ".my-lora.safetensors.abc123de.tmp", out / "samples" / ".x.png.def456gh.tmp"]
    for p in leftovers:
        p.write_bytes(b"half")
    (out / ".baked.xyz789ab.tmp").mkdir()
    (out / "notes.tmp").write_text("the user's")
    train(tiny_config(tiny_model, image_folder, out, "train.max_steps=1"))
    assert not any(p.exists() for p in leftovers) and not (out / ".baked.xyz789ab.tmp").exists()
    assert [p.name for p in out.rglob("*.tmp")] == ["notes.tmp"]


def test_an_output_that_is_a_file_is_refused_before_the_model_loads(image_folder, tmp_path, monkeypatch):
    import trainers.lora_trainer as lt

    monkeypatch.setattr(lt, "load_base_model", lambda *a, **k: pytest.fail("the model was loaded"))
    target = tmp_path / "a-file"
    target.write_text("mine")
    start = time.time()
    with pytest.raises(ConfigError, match="is a file"):
        train(tiny_config("unused", image_folder, target))
    assert target.read_text() == "mine" and time.time() - start < 30


def test_new_run_folder_counts_up_and_refuses_bad_names(tmp_path):
    assert new_run_folder(tmp_path, "style").name == "style"
    assert new_run_folder(tmp_path, "style").name == "style-2"
    assert new_run_folder(tmp_path, "style").name == "style-3"
    for bad in ("..", ".", "", "a/b", "/abs"):
        with pytest.raises(LoramixError):
            new_run_folder(tmp_path, bad)


def test_bake_refuses_an_existing_folder_that_loramix_did_not_bake(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious").write_text("x")
    lora = tmp_path / "a.safetensors"
    lora.write_bytes(b"")
    assert main(["bake", "--lora", str(lora), "--out", str(mine)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["bake", "--lora", str(lora), "--out", str(mine), "--replace"]) == 2
    assert "was not baked by loramix" in capsys.readouterr().err
    assert (mine / "precious").read_text() == "x"


def test_a_folder_holding_the_toml_a_run_would_write_is_refused(image_folder, tmp_path):
    """A run named keepme into a folder that holds someone's keepme.toml (a preset) would overwrite it."""
    from loramix.core.errors import ConfigError
    from loramix.core.runs import check_run_folder

    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "keepme.toml").write_text("mine")
    config = tiny_config("unused-model", image_folder, folder, "output.output_name=keepme")
    with pytest.raises(ConfigError, match=r"already holds another run \(keepme.toml\)"):
        check_run_folder(config)
    assert (folder / "keepme.toml").read_text() == "mine"
