"""kill -9 of a real training run, between steps and in the middle of saving the state: every file left is
readable, and a resume from the state ends bit-identical to an uninterrupted run (slow: a child process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from loramix.formats.lora_io import read_lora
from tests.conftest import tiny_config
from trainers.checkpoint import load_state
from trainers.lora_trainer import train

CHILD = """
import pathlib, sys, time
from loramix.core.config import load_config
from trainers import checkpoint
from trainers.lora_trainer import train

moment, marker, overrides = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]
real_save = checkpoint.save_file

def hang():
    marker.touch()
    time.sleep(120)

def save_then_hang(tensors, filename, metadata=None):  # the 2nd state (step 4) is half on disk when killed
    if "step" in (metadata or {}) and metadata["step"] == "4":
        with open(filename, "wb") as f:
            f.write(b"partial" * 1000)
        hang()
    return real_save(tensors, filename, metadata=metadata)

def on_event(event):
    if moment == "between-steps" and event.kind == "step" and event.step == 5:
        hang()

if moment == "mid-save":
    checkpoint.save_file = save_then_hang
train(load_config(overrides=overrides), on_event)
"""


@pytest.mark.slow
@pytest.mark.parametrize("moment, resumes_at", [("between-steps", 4), ("mid-save", 2)])
def test_kill_9_then_resume_is_bit_identical(moment, resumes_at, tiny_model, image_folder, tmp_path):
    extra = ("output.save_every_n_steps=2",)
    full = train(tiny_config(tiny_model, image_folder, tmp_path / "full", *extra))
    out = tmp_path / "killed"
    overrides = [f"model.base_model={tiny_model}", f"dataset.data_dir={image_folder}", f"output.output_dir={out}",
                 "dataset.resolution=64", "network.rank=4", "network.alpha=4", "optim.learning_rate=1e-3",
                 "train.max_steps=8", "train.batch_size=2", "output.save_precision=fp32", *extra]
    marker = tmp_path / "hanging"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, moment, str(marker), *overrides],
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the child run ended before the kill"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)

    state = out / "my-lora-state.safetensors"
    assert load_state(state)["step"] == resumes_at  # the state on disk is whole: the last one fully written
    for lora in out.glob("*.safetensors"):
        if lora != state:
            read_lora(lora)  # every LoRA file left is readable
    resumed = train(tiny_config(tiny_model, image_folder, out, *extra, f"train.resume_from={state}"))
    assert resumed.steps == 8
    assert not list(out.glob(".*.tmp"))  # the killed run's temp file is gone
    a, b = read_lora(full.lora_path), read_lora(resumed.lora_path)
    assert a.layers.keys() == b.layers.keys()
    for name in a.layers:
        assert torch.equal(a.layers[name].up, b.layers[name].up), name
        assert torch.equal(a.layers[name].down, b.layers[name].down), name
