"""The VAE and text encoders leave memory between samples and come back bit for bit."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from loramix.formats.base_model import load_base_model
from tests.conftest import tiny_config
from trainers.encoder_parking import FILE_NAME, EncoderParking
from trainers.lora_trainer import train


def everything(module):
    return {name: t.detach().clone() for name, t in [*module.named_parameters(), *module.named_buffers()]}


def test_park_frees_and_unpark_restores_bit_for_bit(tiny_model, tmp_path):
    c = load_base_model(str(tiny_model))
    c.text_encoder.to(torch.bfloat16)  # each tensor keeps its own dtype
    modules = {"vae": c.vae, "te": c.text_encoder}
    before = {k: everything(m) for k, m in modules.items()}
    assert any(k.endswith("position_ids") for k in before["te"])  # a non-persistent buffer comes back too
    parking = EncoderParking(modules, tmp_path)
    parking.park()
    assert (tmp_path / FILE_NAME).is_file()
    assert all(t.is_meta for m in modules.values() for t in [*m.parameters(), *m.buffers()])
    with parking.unparked():
        for key, m in modules.items():
            now = everything(m)
            assert now.keys() == before[key].keys()
            for name, t in before[key].items():
                assert now[name].dtype == t.dtype and torch.equal(now[name], t), name
            assert all(not p.requires_grad for p in m.parameters())
    assert parking.parked and all(p.is_meta for p in c.vae.parameters())  # parked again after the block
    parking.discard()
    assert not (tmp_path / FILE_NAME).exists() and not any(p.is_meta for p in c.vae.parameters())


def test_samples_are_the_same_with_the_encoders_parked(tiny_model, image_folder, tmp_path):
    seen = {}

    def watch(out):
        def on_event(event):
            if event.kind == "step":
                seen.setdefault(out, (out / FILE_NAME).is_file())
        return on_event

    pictures = {}
    for free in (True, False):
        out = tmp_path / f"out-{free}"
        train(tiny_config(tiny_model, image_folder, out, "train.max_steps=2", "sample.prompts=red",
                          "sample.steps=2", "sample.sample_every_n_steps=1", f"train.free_encoders={free}"),
              watch(out))
        pictures[free] = sorted((out / "samples").iterdir())
        assert not (out / FILE_NAME).exists()
    assert seen == {tmp_path / "out-True": True, tmp_path / "out-False": False}
    assert [p.name for p in pictures[True]] == [p.name for p in pictures[False]] and len(pictures[True]) == 2
    for a, b in zip(pictures[True], pictures[False]):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))), a.name


def test_a_killed_runs_parked_file_is_removed_on_the_next_start(tmp_path):
    from loramix.core.runs import remove_stale_temps

    (tmp_path / FILE_NAME).write_bytes(b"left by a killed run")
    assert tmp_path / FILE_NAME in remove_stale_temps(tmp_path)
    assert not (tmp_path / FILE_NAME).exists()
