"""Training craft options (issue 24): epoch-based saving and sampling, LoRA+, zero-terminal SNR and
v-prediction, EMA, masked loss, validation and trackers; each pinned on the tiny model."""

from __future__ import annotations

from loramix.lora_io import read_lora
from tests.conftest import make_folder, tiny_config
from trainers.lora_trainer import LoraTrainer, train


def _ready(model, data, out, *overrides) -> LoraTrainer:
    trainer = LoraTrainer(tiny_config(model, data, out, *overrides))
    trainer.scan_data()
    trainer.setup_accelerator()
    trainer.load_model()
    trainer.inject_lora()
    trainer.build_caches()
    trainer.build_optimizer()
    return trainer


# ---- 5. epochs ---------------------------------------------------------------------------------------
def test_epoch_saving_and_sampling_fire_at_the_steps_counted_with_repeats_and_reg_balancing(tiny_model, tmp_path):
    # 2 images x 2 repeats = 4 training samples, balanced by 4 regularisation samples: 8 per epoch;
    # batch 2 -> 4 micro-batches; accumulation 2 -> 2 optimizer steps per epoch; 3 epochs = 6 steps.
    # (Without the repeats or the balancing an epoch would be 1 step.)
    make_folder(tmp_path / "train" / "2_shape", n=2)
    make_folder(tmp_path / "reg", n=5, prefix="reg", captions=False)
    events = []
    result = train(tiny_config(tiny_model, tmp_path / "train", tmp_path / "out", "train.max_steps=0",
                               "train.epochs=3", "train.gradient_accumulation_steps=2",
                               f"dataset.reg_data_dir={tmp_path / 'reg'}", "output.save_every_n_epochs=2",
                               "sample.sample_every_n_epochs=1", "sample.prompts=red", "sample.steps=1"),
                   events.append)
    assert result.steps == 6
    assert [e.step for e in events if e.kind == "checkpoint"] == [4, 6]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["my-lora-epoch000002.safetensors",
                                                                 "my-lora-state.safetensors", "my-lora.safetensors"]
    assert read_lora(out / "my-lora-epoch000002.safetensors").metadata["ss_epoch"] == "2"
    assert [e.step for e in events if e.kind == "sample"] == [2, 4, 6]  # the end's samples are not drawn twice


def test_epoch_ended_counts_micro_batches_across_accumulation(tiny_model, image_folder, tmp_path):
    trainer = LoraTrainer(tiny_config(tiny_model, image_folder, tmp_path / "out", "train.gradient_accumulation_steps=3"))
    trainer.scan_data()
    trainer.setup_accelerator()
    assert trainer.micro_per_epoch == 4  # 8 images, batch 2
    # step s covers micro-batches 3(s-1) .. 3s-1: epochs end during steps 2 (micro 3), 3 (7), 4 (11), 6 (15)
    assert [trainer.epoch_ended(s) for s in range(1, 7)] == [0, 1, 2, 3, 0, 4]
