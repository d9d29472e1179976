"""tools/pretrain_tiny.py, stopped mid-run and started again with the same arguments, ends with the same weights
as a run never stopped; started with other arguments on the same state, it refuses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).parents[2]
# The embedded architecture at a toy scale: 120 pictures, batch 4, a few steps of each stage.
ARGS = ["--threads", "1", "--corpus", "covering", "--corpus-size", "120", "--vae-steps", "6", "--vae-batch", "2",
        "--unet-steps", "6", "--unet-batch", "4", "--save-every", "2", "--checkpoint-every", "0",
        "--text-dim", "32", "--text-layers", "1", "--decoder-steps", "4", "--decoder-batch", "2"]


def _pretrain(work: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "tools" / "pretrain_tiny.py"), *ARGS, "--work", str(work),
                           "--out", str(work / "out"), *extra], env=env, capture_output=True, text=True, timeout=600)


def _weights(folder: Path) -> dict:
    return {f"{sub}/{k}": v for sub in ("unet", "text_encoder", "vae")
            for k, v in load_file(next((folder / sub).glob("*.safetensors"))).items()}


@pytest.mark.slow
def test_a_stopped_run_resumes_to_the_same_weights(tmp_path):
    whole = _pretrain(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    stopped = _pretrain(tmp_path / "resumed", "--stop-after", "2")
    assert stopped.returncode == 0 and "stopping after step 2" in stopped.stderr, stopped.stderr[-2000:]
    assert not (tmp_path / "resumed" / "fp32").exists()
    resumed = _pretrain(tmp_path / "resumed")
    assert resumed.returncode == 0 and "unet: resumed after step 2" in resumed.stderr, resumed.stderr[-2000:]
    a, b = _weights(tmp_path / "whole" / "fp32"), _weights(tmp_path / "resumed" / "fp32")
    assert a.keys() == b.keys()
    assert [k for k in a if not (a[k] == b[k]).all()] == []

    # the decoder stage changed the decoder only: the encoder, whose latents the UNet learned, is the VAE stage's
    import torch

    first = torch.load(tmp_path / "whole" / "latents.pt", weights_only=True)["vae"]
    encoder = [k for k in first if k.startswith(("encoder.", "quant_conv."))]
    decoder = [k for k in first if k.startswith(("decoder.", "post_quant_conv."))]
    assert encoder and all(torch.equal(first[k], a[f"vae/{k}"]) for k in encoder)
    assert any(not torch.equal(first[k], a[f"vae/{k}"]) for k in decoder)
    assert "decoder step 4/4" in whole.stderr

    other = _pretrain(tmp_path / "resumed", "--unet-lr", "1e-3")
    assert other.returncode != 0 and "unet_lr" in other.stderr


@pytest.mark.slow
def test_the_colour_options_change_the_weights_and_the_fingerprint(tmp_path):
    """--vae-variants (detail and random-colour pictures for the VAE) and --decoder-colours train on other
    pictures, so the weights differ; a state written with them refuses a resume without them, naming them; a
    run without them keeps the fingerprint of the runs before the options existed (tested above: it resumes)."""
    plain = _pretrain(tmp_path / "plain")
    coloured = _pretrain(tmp_path / "coloured", "--vae-variants", "0.5", "--decoder-colours", "0.5")
    assert plain.returncode == 0 and coloured.returncode == 0, coloured.stderr[-2000:]
    a, b = _weights(tmp_path / "plain" / "fp32"), _weights(tmp_path / "coloured" / "fp32")
    assert any(not (a[k] == b[k]).all() for k in a if k.startswith("vae/encoder."))
    again = _pretrain(tmp_path / "coloured")
    assert again.returncode != 0 and "vae_variants" in again.stderr, again.stderr[-2000:]
