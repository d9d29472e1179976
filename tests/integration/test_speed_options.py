"""The training-speed options reach the step: each test fails if the trainer ignores its option."""

from __future__ import annotations

import pytest
import torch

from loramix.core.config import load_config
from loramix.core.errors import ConfigError
from tests.conftest import tiny_config
from trainers.lora_trainer import LoraTrainer


def run_spied(cfg, monkeypatch, spy):
    """Train `cfg`, calling `spy(trainer)` inside every loss computation; returns the trainer."""
    compute_loss = LoraTrainer.compute_loss

    def spied(self, micro):
        spy(self)
        return compute_loss(self, micro)

    monkeypatch.setattr(LoraTrainer, "compute_loss", spied)
    trainer = LoraTrainer(cfg)
    result = trainer.run()
    assert result.steps == cfg.train.max_steps
    return trainer


@pytest.mark.parametrize("on", [False, True])
def test_channels_last_puts_the_unet_convs_in_channels_last_while_training(on, tiny_model, image_folder, tmp_path,
                                                                         monkeypatch):
    cfg = tiny_config(tiny_model, image_folder, tmp_path / "out", "train.max_steps=2", f"train.channels_last={on}")
    seen, conv_inputs = [], []

    def record(module, args):
        conv_inputs.append(args[0].is_contiguous(memory_format=torch.channels_last))

    def spy(trainer):
        convs = [m.weight for m in trainer.components.unet.modules() if isinstance(m, torch.nn.Conv2d)]
        seen.append(all(w.is_contiguous(memory_format=torch.channels_last) for w in convs))
        if len(seen) == 1:
            trainer.components.unet.conv_in.register_forward_pre_hook(record)

    run_spied(cfg, monkeypatch, spy)
    assert seen and all(s == on for s in seen)
    assert conv_inputs and all(c == on for c in conv_inputs)  # the noisy latents too


@pytest.mark.parametrize("backend, flash, math", [("auto", True, True), ("math", False, True), ("flash", True, False)])
def test_sdpa_backend_is_the_one_enabled_inside_the_unet(backend, flash, math, tiny_model, image_folder, tmp_path,
                                                         monkeypatch):
    cfg = tiny_config(tiny_model, image_folder, tmp_path / "out", "train.max_steps=2", f"train.sdpa_backend={backend}")
    enabled = []

    def record(module, args):  # what torch's SDPA dispatch may pick while the UNet's attention runs
        enabled.append((torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()))

    def spy(trainer):
        if not enabled:
            attention = next(m for n, m in trainer.components.unet.named_modules() if n.endswith("attn1"))
            attention.register_forward_pre_hook(record)

    run_spied(cfg, monkeypatch, spy)
    assert enabled and set(enabled) == {(flash, math)}
    assert (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()) == (True, True)  # restored


@pytest.mark.skipif(torch.cuda.is_available(), reason="refused only on a machine without CUDA")
@pytest.mark.parametrize("backend", ["efficient", "cudnn"])
def test_cuda_only_sdpa_backends_are_refused_on_cpu_before_the_model_loads(backend, image_folder, tmp_path):
    cfg = tiny_config("/nonexistent/model", image_folder, tmp_path / "out", f"train.sdpa_backend={backend}")
    with pytest.raises(ConfigError, match="train.sdpa_backend.*CUDA GPUs only"):
        LoraTrainer(cfg).run()


def test_unknown_sdpa_backend_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="train.sdpa_backend: 'xformers' is not allowed"):
        load_config(overrides=["train.sdpa_backend=xformers"])


@pytest.mark.parametrize("impl, flags", [("auto", {"foreach": None, "fused": None}),
                                         ("fused", {"fused": True}), ("foreach", {"foreach": True}),
                                         ("for_loop", {"foreach": False, "fused": None})])
def test_adamw_impl_reaches_the_optimizer(impl, flags, tiny_model, image_folder, tmp_path):
    cfg = tiny_config(tiny_model, image_folder, tmp_path / "out", "train.max_steps=1", f"optim.adamw_impl={impl}")
    trainer = LoraTrainer(cfg)
    trainer.run()
    for group in trainer.optimizer.param_groups:
        assert {k: group[k] for k in flags} == flags


def test_adamw_impl_is_refused_with_another_optimizer():
    with pytest.raises(ConfigError, match="optim.adamw_impl.*optimizer=adamw only"):
        load_config(overrides=["optim.optimizer=prodigy", "optim.adamw_impl=fused"])


class Compiled(torch.nn.Module):
    """What the recorder hands back instead of compiling: the UNet, counting the calls that go through it."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)


@pytest.mark.parametrize("on", [False, True])
def test_compile_unet_compiles_the_unet_the_step_calls(on, tiny_model, image_folder, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_model, image_folder, tmp_path / "out", "train.max_steps=2", f"train.compile_unet={on}")
    compiled = []

    def record(model, *args, **kwargs):  # no real compile in the default suite: minutes on a CPU
        compiled.append(Compiled(model))
        return compiled[-1]

    monkeypatch.setattr(torch, "compile", record)
    trainer = LoraTrainer(cfg)
    trainer.run()
    if not on:
        assert compiled == []
        return
    assert len(compiled) == 1 and compiled[0].model is trainer.components.unet
    assert compiled[0].calls == cfg.train.max_steps  # every training step goes through the compiled UNet


def test_jobs_one_after_another_in_one_process_each_take_their_own_precision(tiny_model, image_folder, tmp_path):
    """The web app runs job after job in one process: an fp32 job on the demo model, then a bf16 one (auto on a
    full-size base with a bf16 CPU), then fp32 again. accelerate keeps one state per process and refused the
    second precision ("AcceleratorState has already been initialized")."""
    from trainers.lora_trainer import train

    for i, precision in enumerate(("no", "bf16", "no")):
        cfg = tiny_config(str(tiny_model), image_folder, tmp_path / f"run{i}", "train.max_steps=1",
                          f"train.mixed_precision={precision}")
        assert train(cfg).lora_path.is_file(), precision
