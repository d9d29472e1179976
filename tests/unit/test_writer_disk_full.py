"""The writer's atomic writes: a full disk (simulated: no real disk is filled) is one sentence, and the old file
stays; a kill -9 mid-write leaves the previous file whole."""

import errno
import shutil

import pytest
import torch
from safetensors import SafetensorError

from loramix.core.errors import LoramixError
from loramix.core.writer import DiskFullError, atomic_path, write_text


def test_disk_full_names_the_file_needed_and_free_space_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "my-lora.safetensors"
    target.write_bytes(b"previous")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 * 2**30, 10 * 2**30 - 4096, 4096))
    with pytest.raises(DiskFullError) as e:
        with atomic_path(target, expected_bytes=3 * 2**20, replace=True) as tmp:
            tmp.write_bytes(b"x" * 5000)
            raise OSError(errno.ENOSPC, "No space left on device")
    msg = str(e.value)
    assert isinstance(e.value, LoramixError)
    assert f"saving {target} needs about 3.0 MB" in msg
    assert f"{tmp_path} has 4.0 KB free" in msg
    assert "the previous my-lora.safetensors is unchanged" in msg
    assert target.read_bytes() == b"previous"
    assert not list(tmp_path.glob(".*.tmp"))


def test_safetensors_rust_error_for_enospc_is_recognised(tmp_path):
    target = tmp_path / "state.safetensors"
    with pytest.raises(DiskFullError, match=r"needs more than the 100 bytes written .* no state.safetensors was written"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"y" * 100)
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                  'message: "No space left on device" })')
    assert not target.exists() and not list(tmp_path.glob(".*.tmp"))


def test_write_text_on_a_full_disk(tmp_path, monkeypatch):
    from pathlib import Path

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(DiskFullError, match=r"log.toml needs about 6 bytes"):
        write_text(tmp_path / "log.toml", "a = 1\n")


def test_other_errors_pass_through_and_leave_no_temp_file(tmp_path):
    with pytest.raises(ValueError, match="boom"):
        with atomic_path(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"z")
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_save_state_on_a_full_disk_keeps_the_previous_state(tmp_path, monkeypatch):
    from trainers import checkpoint

    class Opt:
        def state_dict(self):
            return {"state": {}, "param_groups": []}

    class Sched:
        def state_dict(self):
            return {}

    from loramix.core.config import LoramixConfig

    path = tmp_path / "my-lora-state.safetensors"
    lora = {"lora_unet.x.lora_A.weight": torch.ones(4, 8)}
    checkpoint.save_state(path, step=1, lora=lora, optimizer=Opt(), scheduler=Sched(), config=LoramixConfig())
    before = path.read_bytes()
    real = checkpoint.save_file

    def half_then_full(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(checkpoint, "save_file", half_then_full)
    with pytest.raises(DiskFullError, match="my-lora-state.safetensors needs about .* the previous "
                                            "my-lora-state.safetensors is unchanged"):
        checkpoint.save_state(path, step=2, lora=lora, optimizer=Opt(), scheduler=Sched(), config=LoramixConfig(),
                              replace=True)
    assert path.read_bytes() == before


def test_kill_9_mid_write_leaves_the_previous_file(tmp_path):
    """A process killed with SIGKILL while it writes leaves the old file whole (and at most a .tmp beside it)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    target = tmp_path / "my-lora-state.safetensors"
    target.write_bytes(b"previous state")
    started = tmp_path / "started"
    code = (f"from loramix.core.writer import atomic_path\nimport pathlib, time\n"
            f"with atomic_path({str(target)!r}, replace=True) as tmp:\n"
            f"    with open(tmp, 'wb') as f:\n"
            f"        f.write(b'half' * 100000); f.flush()\n"
            f"        pathlib.Path({str(started)!r}).touch()\n"
            f"        time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 30
    while not started.exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the writer did not start"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert target.read_bytes() == b"previous state"
    assert [p.name.startswith(".my-lora-state.safetensors.") for p in tmp_path.glob(".*.tmp")] == [True]
