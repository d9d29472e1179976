"""The `loramix` command as a user runs it, and a 2-process `accelerate launch` run on CPU (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys

from loramix.core.config import field_specs
from loramix.formats.lora_io import read_lora
from tests.conftest import make_folder

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def run(*args, timeout=300):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=ENV)


def common(model, data, out):
    return ["--base", str(model), "--data", str(data), "--output", str(out), "--set", "dataset.resolution=64",
            "--set", "network.rank=4", "--set", "optim.learning_rate=1e-3", "--set", "output.save_precision=fp32",
            "--quiet"]


def test_help_lists_every_field_with_default():
    out = run(sys.executable, "-m", "loramix.cli", "train", "--help").stdout
    for spec in field_specs():
        assert f"{spec.name} = {spec.default!r}" in out, spec.name


def test_cli_trains_eight_images(tiny_model, tmp_path):
    data = make_folder(tmp_path / "data", n=8, sizes=[(64, 64), (96, 64)])
    proc = run(sys.executable, "-m", "loramix.cli", "train", *common(tiny_model, data, tmp_path / "out"),
               "--name", "eight", "--set", "train.max_steps=4")
    assert proc.returncode == 0, proc.stderr
    assert "Saved" in proc.stdout
    adapter = read_lora(tmp_path / "out" / "eight.safetensors")
    assert adapter.metadata["ss_num_train_images"] == "8"


def test_cli_errors_are_one_sentence(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run(sys.executable, "-m", "loramix.cli", "train", "--data", str(tmp_path / "empty"))
    assert proc.returncode == 2
    assert "error: dataset.data_dir:" in proc.stderr and "has no image files" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run(sys.executable, "-m", "loramix.cli", "train", "--set", "network.rank=-1")
    assert proc.returncode == 2 and "network.rank: -1 is below the minimum 1" in proc.stderr


def test_two_process_run_matches_one_process_same_global_batch(tiny_model, tmp_path):
    """accelerate launch --multi_gpu with no GPU: the trainer asks accelerate for a CPU (gloo) group."""
    data = make_folder(tmp_path / "data", n=6)
    two = run(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              "29517", "-m", "loramix.cli", "train", *common(tiny_model, data, tmp_path / "two"),
              "--set", "train.batch_size=1", "--set", "train.max_steps=5", "--set", "output.save_every_n_steps=2")
    assert two.returncode == 0, two.stderr[-3000:]
    one = run(sys.executable, "-m", "loramix.cli", "train", *common(tiny_model, data, tmp_path / "one"),
              "--set", "train.batch_size=2", "--set", "train.max_steps=5")
    assert one.returncode == 0, one.stderr[-3000:]
    # only the main process writes: one set of files, one log line per step
    names = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert names == ["log.jsonl", "my-lora-state.safetensors", "my-lora-step000002.safetensors",
                     "my-lora-step000004.safetensors", "my-lora.safetensors", "my-lora.toml"]
    assert len((tmp_path / "two" / "log.jsonl").read_text().splitlines()) == 5
    a, b = read_lora(tmp_path / "one" / "my-lora.safetensors"), read_lora(tmp_path / "two" / "my-lora.safetensors")
    assert a.metadata["ss_batch_size_per_device"] == "2" and b.metadata["ss_batch_size_per_device"] == "1"
    worst = max((a.layers[k].delta() - b.layers[k].delta()).abs().max().item() for k in a.layers)
    scale = max(a.layers[k].delta().abs().max().item() for k in a.layers)
    # Same samples and noise; only the order of float sums differs (gradient all-reduce vs one batch).
    assert worst <= 1e-5 * max(scale, 1.0), (worst, scale)
    assert scale > 1e-3
