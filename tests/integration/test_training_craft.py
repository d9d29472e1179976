"""Training craft options (issue 24): epoch-based saving and sampling, LoRA+, zero-terminal SNR and
v-prediction, EMA, masked loss, validation and trackers; each pinned on the tiny model."""

from __future__ import annotations

import pytest

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


# ---- 7. LoRA+ ----------------------------------------------------------------------------------------
def test_loraplus_ratio_moves_the_up_matrices_at_that_multiple_of_the_rate(tiny_model, image_folder, tmp_path):
    trainer = _ready(tiny_model, image_folder, tmp_path / "out", "optim.loraplus_lr_ratio=4",
                     "optim.learning_rate=1e-4", "optim.weight_decay=0", "optim.max_grad_norm=0",
                     "network.train_text_encoder=true", "dataset.cache_text_embeddings=false",
                     "network.text_encoder_lr=2e-4")
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [1e-4, 4e-4, 2e-4, 8e-4]
    before = {(prefix, n): p.detach().clone() for prefix, m in trainer.trained.items()
              for n, p in m.named_parameters() if p.requires_grad}
    trainer.total_steps = 1
    trainer.start_log(0)
    trainer.train_steps(0)
    for prefix, rate in (("lora_unet", 1e-4), ("lora_te", 2e-4)):
        params = dict(trainer.trained[prefix].named_parameters())
        moved = max((params[n].detach() - b).abs().max().item() for (pre, n), b in before.items()
                    if pre == prefix and ".lora_B." in n)
        assert moved == pytest.approx(4 * rate, rel=0.02), prefix  # AdamW's first step moves B by about its rate
    meta = trainer.adapter(1).metadata
    assert meta["ss_loraplus_lr_ratio"] == "4.0"


def test_loraplus_off_keeps_one_group_per_module_and_is_refused_for_loha(tiny_model, image_folder, tmp_path):
    from loramix.errors import ConfigError

    trainer = _ready(tiny_model, image_folder, tmp_path / "out")
    assert len(trainer.optimizer.param_groups) == 1
    assert trainer.adapter(0).metadata["ss_loraplus_lr_ratio"] == "None"
    with pytest.raises(ConfigError, match="optim.loraplus_lr_ratio"):
        tiny_config(tiny_model, image_folder, tmp_path / "x", "network.algo=loha", "optim.loraplus_lr_ratio=4")
