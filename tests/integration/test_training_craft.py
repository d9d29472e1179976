"""Training craft options (issue 24): epoch-based saving and sampling, LoRA+, zero-terminal SNR and
v-prediction, EMA, masked loss, validation and trackers; each pinned on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from loramix.formats.lora_io import read_lora
from tests.conftest import first_sample_inputs, make_folder, tiny_config
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
    from loramix.core.errors import ConfigError

    trainer = _ready(tiny_model, image_folder, tmp_path / "out")
    assert len(trainer.optimizer.param_groups) == 1
    assert trainer.adapter(0).metadata["ss_loraplus_lr_ratio"] == "None"
    with pytest.raises(ConfigError, match="optim.loraplus_lr_ratio"):
        tiny_config(tiny_model, image_folder, tmp_path / "x", "network.algo=loha", "optim.loraplus_lr_ratio=4")


# ---- 6. noise and prediction ---------------------------------------------------------------------------
def _expected_loss(trainer, micro, scheduler, velocity):
    sample, latents, cond, noise, t = first_sample_inputs(trainer, micro)
    target = scheduler.get_velocity(latents, noise, t) if velocity else noise
    pred = trainer.m.unet(scheduler.add_noise(latents, noise, t), t, cond).sample
    return torch.nn.functional.mse_loss(pred, target).item()


def test_zero_terminal_snr_rescales_the_schedule_trained_and_sampled_with(tiny_model, image_folder, tmp_path):
    from diffusers import DDPMScheduler
    from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr

    base = DDPMScheduler.from_pretrained(tiny_model, subfolder="scheduler")
    trainer = _ready(tiny_model, image_folder, tmp_path / "out", "train.batch_size=1", "train.zero_terminal_snr=true",
                     "model.prediction_type=v_prediction")
    sched = trainer.m.noise_scheduler
    expected = torch.cumprod(1 - rescale_zero_terminal_snr(base.betas), dim=0)
    assert base.alphas_cumprod[-1] > 1e-3 and sched.alphas_cumprod[-1] < 1e-7
    torch.testing.assert_close(sched.alphas_cumprod[:-1], expected[:-1])
    with torch.no_grad():
        for micro in range(2):
            assert trainer.compute_loss(micro).item() == pytest.approx(
                _expected_loss(trainer, micro, sched, velocity=True), rel=1e-5)
    sampler = trainer.family.pipeline(trainer.m).scheduler
    assert sampler.config.rescale_betas_zero_snr and sampler.config.timestep_spacing == "trailing"
    assert sampler.config.prediction_type == "v_prediction"
    meta = trainer.adapter(0).metadata
    assert meta["ss_zero_terminal_snr"] == "True" and meta["ss_v_parameterization"] == "True"


def test_prediction_type_override_sets_the_target_and_the_metadata(tiny_model, image_folder, tmp_path):
    trainer = _ready(tiny_model, image_folder, tmp_path / "out", "train.batch_size=1")
    assert trainer.m.prediction_type == "epsilon" and trainer.adapter(0).metadata["ss_v_parameterization"] == "False"
    trainer = _ready(tiny_model, image_folder, tmp_path / "out2", "train.batch_size=1",
                     "model.prediction_type=v_prediction")
    with torch.no_grad():
        loss = trainer.compute_loss(0).item()
        assert loss == pytest.approx(_expected_loss(trainer, 0, trainer.m.noise_scheduler, velocity=True), rel=1e-5)
        assert loss != pytest.approx(_expected_loss(trainer, 0, trainer.m.noise_scheduler, velocity=False), rel=1e-3)
    meta = trainer.adapter(0).metadata
    assert meta["ss_v_parameterization"] == "True" and meta["ss_zero_terminal_snr"] == "False"
    assert meta["modelspec.prediction_type"] == "v"


def test_sdxl_v_prediction_trains_and_samples_with_velocity(tmp_path):
    from loramix.embedded.tiny import build_tiny_sdxl
    from tests.conftest import WORDS

    xl = build_tiny_sdxl(tmp_path / "xl", words=WORDS)
    data = make_folder(tmp_path / "data", n=2)
    trainer = _ready(xl, data, tmp_path / "out", "model.prediction_type=v_prediction", "train.zero_terminal_snr=true")
    assert trainer.family.name == "sdxl" and trainer.m.prediction_type == "v_prediction"
    assert trainer.family.pipeline(trainer.m).scheduler.config.prediction_type == "v_prediction"
    meta = trainer.adapter(0).metadata
    assert meta["ss_v_parameterization"] == "True" and meta["ss_zero_terminal_snr"] == "True"
    # the other options run on SDXL's conditioning (two encoders, time ids) too
    result = train(tiny_config(xl, data, tmp_path / "run", "model.prediction_type=v_prediction", "train.max_steps=2",
                               "dataset.validation_split=0.5", "train.masked_loss=true", "train.ema_decay=0.9",
                               "optim.loraplus_lr_ratio=4", "dataset.min_bucket_reso=64"))
    assert result.steps == 2 and [s for s, _ in result.val_losses] == [2]


# ---- 3. EMA ------------------------------------------------------------------------------------------
def test_ema_follows_the_weights_with_warm_up_and_both_files_are_saved(tiny_model, image_folder, tmp_path):
    snapshots = []
    trainer = LoraTrainer(tiny_config(tiny_model, image_folder, tmp_path / "out", "train.max_steps=4",
                                      "train.ema_decay=0.5", "output.save_ema=both", "optim.learning_rate=1e-2"),
                          lambda e: snapshots.append([p.detach().clone() for p in trainer.params])
                          if e.kind in ("start", "step") else None)
    result = trainer.run()
    init, *steps = snapshots
    expected = [p.clone() for p in init]
    for k, params in enumerate(steps, start=1):
        d = min(0.5, k / (9 + k))  # 0.1, 0.18, 0.25, 0.31: the warm-up, then at most 0.5
        expected = [e + (1 - d) * (p - e) for e, p in zip(expected, params)]
    for shadow, e in zip(trainer.ema.shadow, expected):
        torch.testing.assert_close(shadow, e, rtol=1e-6, atol=1e-7)
    assert any(not torch.allclose(s, r) for s, r in zip(trainer.ema.shadow, steps[-1]))
    raw, ema = read_lora(result.lora_path), read_lora(tmp_path / "out" / "my-lora-ema.safetensors")
    assert "loramix_ema_decay" not in raw.metadata and ema.metadata["loramix_ema_decay"] == "0.5"
    with trainer.ema.applied(trainer.params):  # the EMA file holds the average, the main file the trained weights
        averaged = {n: (layer.up.clone(), layer.down.clone()) for n, layer in trainer.adapter(4).layers.items()}
    trained = trainer.adapter(4).layers
    assert averaged.keys() == ema.layers.keys() == raw.layers.keys()
    for n in averaged:
        assert torch.equal(ema.layers[n].up, averaged[n][0]) and torch.equal(ema.layers[n].down, averaged[n][1])
        assert torch.equal(raw.layers[n].up, trained[n].up) and torch.equal(raw.layers[n].down, trained[n].down)
    assert any(not torch.equal(raw.layers[n].up, ema.layers[n].up) for n in raw.layers)


def test_resume_with_ema_loraplus_and_validation_is_bit_exact(tiny_model, image_folder, tmp_path):
    from loramix.core.events import CancelToken

    opts = ("train.ema_decay=0.9", "output.save_ema=both", "optim.loraplus_lr_ratio=4", "optim.lr_scheduler=cosine",
            "dataset.validation_split=0.25", "train.validate_every_n_steps=2")
    full = train(tiny_config(tiny_model, image_folder, tmp_path / "full", *opts))
    cancel = CancelToken()
    half = train(tiny_config(tiny_model, image_folder, tmp_path / "half", *opts),
                 lambda e: cancel.cancel() if e.kind == "step" and e.step == 4 else None, cancel)
    assert half.steps == 4
    resumed = train(tiny_config(tiny_model, image_folder, tmp_path / "half", *opts,
                                f"train.resume_from={half.state_path}"))
    assert resumed.steps == 8
    assert resumed.val_losses == full.val_losses and resumed.best_step == full.best_step  # the history is in the log
    for name in ("my-lora.safetensors", "my-lora-ema.safetensors"):
        a, b = read_lora(tmp_path / "full" / name), read_lora(tmp_path / "half" / name)
        for layer in a.layers:
            assert torch.equal(a.layers[layer].up, b.layers[layer].up), (name, layer)
            assert torch.equal(a.layers[layer].down, b.layers[layer].down), (name, layer)


def test_samples_with_ema_use_the_average_and_leave_the_weights_as_they_were(tiny_model, image_folder, tmp_path):
    from PIL import Image

    trainer = _ready(tiny_model, image_folder, tmp_path / "out", "train.ema_decay=0.9", "optim.learning_rate=3e-2",
                     "sample.prompts=red stripes", "sample.steps=2")
    trainer.total_steps = 3
    trainer.start_log(0)
    trainer.train_steps(0)  # draws the end's samples with the raw weights
    raw_weights = [p.detach().clone() for p in trainer.params]
    path = tmp_path / "out" / "samples" / "my-lora-step000003-0.png"
    pixels = {}
    for label, use_ema in (("raw", False), ("ema", True)):
        trainer.cfg.sample.use_ema = use_ema
        trainer.make_samples(3)
        pixels[label] = torch.tensor(list(Image.open(path).getdata()))
    trainer.cfg.sample.use_ema = False
    with trainer.ema.applied(trainer.params):
        trainer.make_samples(3)
    assert torch.equal(pixels["ema"], torch.tensor(list(Image.open(path).getdata())))
    assert not torch.equal(pixels["ema"], pixels["raw"])
    assert all(torch.equal(p, r) for p, r in zip(trainer.params, raw_weights))


# ---- 1. masked loss ----------------------------------------------------------------------------------
def _masked_folder(root, sizes=((96, 64), (64, 96), (64, 64)), alpha_index=1):
    """Images whose left third is drawn dark and the rest white, with that dark region as the mask: as a
    <stem>.mask.png file, or (for `alpha_index`) as the image's alpha channel (transparent reads as white)."""
    from PIL import Image, ImageDraw

    root.mkdir(parents=True)
    for i, (w, h) in enumerate(sizes):
        mask = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask).rectangle([0, 0, w // 3, h], fill=255)
        image = Image.merge("RGB", [mask.point(lambda v: 255 - v * 0.8)] * 3)
        if i == alpha_index:
            image.putalpha(mask.point(lambda v: v))
        else:
            mask.save(root / f"img{i}.mask.png")
        image.save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(f"red stripes, picture {i}\n")
    return root


def test_masks_follow_bucket_crop_and_flip_and_mask_files_are_not_images(tmp_path):
    import random

    from loramix.core.config import DatasetConfig
    from trainers import dataset as ds
    from trainers.masks import mask_for

    data = _masked_folder(tmp_path / "data")
    cfg = DatasetConfig(data_dir=str(data), resolution=128, min_bucket_reso=64, max_bucket_reso=256, crop="random",
                        flip_aug=True, cache_latents=False)
    items = ds.scan_report(cfg).items
    assert sorted(i.path.name for i in items) == ["img0.png", "img1.png", "img2.png"]  # no *.mask.png
    rng = random.Random(0)
    for idx, item in enumerate(items):
        for flip in (False, True):
            sample = ds.Sample(idx, flip, False, rng.getrandbits(32))
            pixels = ds.pixels_for(item, sample, cfg)  # dark where the mask is white
            h, w = pixels.shape[-2] // 8, pixels.shape[-1] // 8
            expected = torch.nn.functional.interpolate((pixels[:1] < 0).float()[None], size=(h, w), mode="area")[0]
            mask = mask_for(item, sample, cfg, (h, w))
            assert mask.shape == (1, h, w) and 0 < mask.mean() < 1
            assert (mask - expected).abs().max() < 0.15, (item.path.name, flip)
            assert not torch.allclose(mask, mask.flip(-1))  # so that a flip left out would show


def test_masked_loss_weights_the_pixels_and_is_cached_at_latent_resolution(tiny_model, tmp_path):
    data = _masked_folder(tmp_path / "data", sizes=((64, 64),) * 3)
    trainer = _ready(tiny_model, data, tmp_path / "out", "train.batch_size=1", "train.masked_loss=true",
                     "train.unmasked_weight=0.25")
    cache = trainer.masks.cache
    assert cache.keys() == trainer.latent_cache.keys()
    assert all(cache[k].shape[-2:] == trainer.latent_cache[k].shape[-2:] for k in cache)
    sched = trainer.m.noise_scheduler
    with torch.no_grad():
        for micro in range(3):
            loss = trainer.compute_loss(micro).item()
            sample, latents, cond, noise, t = first_sample_inputs(trainer, micro)
            se = (trainer.m.unet(sched.add_noise(latents, noise, t), t, cond).sample - noise) ** 2
            w = (0.25 + 0.75 * cache[(sample.index, False)]).expand_as(se[0])[None]
            assert loss == pytest.approx(((se * w).sum() / w.sum()).item(), rel=1e-5)
            assert loss != pytest.approx(se.mean().item(), rel=1e-3)


def test_masked_loss_trains_on_the_uncached_path_and_warns_about_unmasked_images(tiny_model, tmp_path):
    data = _masked_folder(tmp_path / "data")
    make_folder(data, n=1, prefix="plain")
    events = []
    result = train(tiny_config(tiny_model, data, tmp_path / "out", "train.masked_loss=true", "train.max_steps=2",
                               "dataset.cache_latents=false", "dataset.crop=random", "dataset.flip_aug=true",
                               "dataset.min_bucket_reso=64", "dataset.max_bucket_reso=128"), events.append)
    assert result.steps == 2
    warnings = [e.message for e in events if e.kind == "warning"]
    assert any("1 of 4 images (plain0.png) have no <stem>.mask.png" in w for w in warnings), warnings


# ---- 2. validation -----------------------------------------------------------------------------------
def test_held_out_images_are_never_trained_on_and_the_same_every_run(tiny_model, image_folder, tmp_path,
                                                                     monkeypatch):
    seen = []
    real = LoraTrainer.micro_batch

    def recording(self, micro):
        samples, positions = real(self, micro)
        seen.extend(self.items[s.index].path for s in samples)
        return samples, positions

    monkeypatch.setattr(LoraTrainer, "micro_batch", recording)
    events = []
    result = train(tiny_config(tiny_model, image_folder, tmp_path / "out", "dataset.validation_split=0.25",
                               "train.max_steps=12", "train.validate_every_n_steps=4"), events.append)
    from trainers import dataset as ds
    cfg = tiny_config(tiny_model, image_folder, tmp_path / "x", "dataset.validation_split=0.25", "train.seed=7")
    held = {i.path for i in ds.scan_report(cfg.dataset).validation}
    assert len(held) == 2 and len(set(seen)) == 6  # 8 images: 2 held out, the other 6 all trained on
    assert not held & set(seen)
    assert [e.step for e in events if e.kind == "validation"] == [4, 8, 12] == [s for s, _ in result.val_losses]


def test_validation_loss_is_fixed_and_the_best_step_is_named(tiny_model, image_folder, tmp_path):
    import json

    a = _ready(tiny_model, image_folder, tmp_path / "a", "dataset.validation_split=0.25", "train.seed=1")
    b = _ready(tiny_model, image_folder, tmp_path / "b", "dataset.validation_split=0.25", "train.seed=2")
    from trainers.validation import validation_loss
    first = validation_loss(a, a.vset)
    assert first == validation_loss(a, a.vset) == validation_loss(b, b.vset)  # same weights (B = 0): same number
    result = train(tiny_config(tiny_model, image_folder, tmp_path / "run", "dataset.validation_split=0.25",
                               "train.max_steps=6", "train.validate_every_n_steps=2", "optim.learning_rate=5e-2"))
    losses = dict(result.val_losses)
    assert sorted(losses) == [2, 4, 6] and len(set(losses.values())) == 3
    best = min(losses, key=losses.get)
    assert result.best_step == best
    meta = read_lora(result.lora_path).metadata
    assert meta["loramix_best_validation_step"] == str(best)
    assert float(meta["loramix_validation_loss"]) == pytest.approx(losses[6], rel=1e-5)
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["val_loss"]) for r in lines if "val_loss" in r] == result.val_losses


# ---- 4. trackers -------------------------------------------------------------------------------------
def test_tensorboard_gets_loss_lr_validation_and_samples_in_the_run_folder(tiny_model, image_folder, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny_config(tiny_model, image_folder, tmp_path / "out", "output.log_with=tensorboard", "train.max_steps=4",
                      "dataset.validation_split=0.25", "train.validate_every_n_steps=2", "sample.prompts=red|blue",
                      "sample.steps=1"))
    folder = tmp_path / "out" / "tensorboard"
    assert list(folder.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(folder), size_guidance={"images": 0}).Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [s for s, _ in scalars["loss"]] == [1, 2, 3, 4]
    assert [v for _, v in scalars["loss"]] == pytest.approx([r["loss"] for r in log if "loss" in r], rel=1e-6)
    assert [s for s, _ in scalars["lr"]] == [1, 2, 3, 4]
    assert [s for s, _ in scalars["val_loss"]] == [2, 4]
    assert sorted(events.Tags()["images"]) == ["sample/0", "sample/1"]
    assert [e.step for e in events.Images("sample/0")] == [4]


def test_a_tracker_whose_package_is_missing_is_refused_naming_the_field(tiny_model, image_folder, tmp_path,
                                                                       monkeypatch):
    import importlib.util

    from loramix.core.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    trainer = LoraTrainer(tiny_config(tiny_model, image_folder, tmp_path / "out", "output.log_with=wandb"))
    trainer.scan_data()
    with pytest.raises(ConfigError, match=r"output.log_with: wandb needs the wandb package"):
        trainer.setup_accelerator()


def test_validation_scores_the_weights_the_main_file_holds(tiny_model, image_folder, tmp_path):
    from trainers.validation import validation_loss

    for save_ema in ("ema", "both"):
        trainer = _ready(tiny_model, image_folder, tmp_path / save_ema, "dataset.validation_split=0.25",
                         "train.ema_decay=0.9", f"output.save_ema={save_ema}", "optim.learning_rate=3e-2")
        trainer.total_steps = 3
        trainer.start_log(0)
        trainer.train_steps(0)  # validates the end
        raw = validation_loss(trainer, trainer.vset)
        with trainer.ema.applied(trainer.params):
            averaged = validation_loss(trainer, trainer.vset)
        assert raw != pytest.approx(averaged, rel=1e-4)
        assert trainer.val_losses == [(3, averaged if save_ema == "ema" else raw)], save_ema
