"""runs.check_run_folder: a run resumes its own folder even when --output is relative (the CLI's usual form)."""

from __future__ import annotations

import pytest

from loramix.core.config import LoramixConfig
from loramix.core.errors import ConfigError
from loramix.core.runs import check_run_folder


def config_for(output_dir: str, resume_from: str = "") -> LoramixConfig:
    config = LoramixConfig()
    config.output.output_dir, config.output.output_name = output_dir, "style"
    config.train.resume_from = resume_from
    return config


@pytest.fixture
def run(tmp_path, monkeypatch):
    folder = tmp_path / "runs" / "style"
    folder.mkdir(parents=True)
    for name in ("style.safetensors", "style-state.safetensors", "log.jsonl"):
        (folder / name).write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    return folder


@pytest.mark.parametrize("output, state", [
    ("runs/style", "runs/style/style-state.safetensors"),  # both relative
    ("runs/style", "{abs}"),  # relative --output, absolute --resume
    ("./runs/../runs/style", "{abs}"),
    ("{folder}", "runs/style/style-state.safetensors"),
])
def test_resuming_a_folders_own_state_is_allowed_with_relative_paths(run, output, state):
    absolute = str(run / "style-state.safetensors")
    config = config_for(output.format(folder=run), state.format(abs=absolute))
    assert check_run_folder(config).resolve() == run


def test_another_runs_folder_is_still_refused(run, tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x-state.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="already holds another run"):
        check_run_folder(config_for("runs/style", str(tmp_path / "other" / "x-state.safetensors")))
    with pytest.raises(ConfigError, match="already holds another run"):
        check_run_folder(config_for("runs/style"))
