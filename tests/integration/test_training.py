"""End-to-end training on a tiny random SD model: real files, real diffusers as the independent reader."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file

from loramix.core.errors import TrainingError
from loramix.core.events import CancelToken
from loramix.formats.lora_io import module_table, read_lora, save_lora
from tests.conftest import first_sample_inputs, make_folder, tiny_config
from trainers.checkpoint import load_state
from trainers.lora_trainer import LoraTrainer, train


def unet_inputs(unet, seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    x = torch.randn(batch, 4, size, size, generator=g)
    ctx = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    return x, torch.tensor([10, 500]), ctx


def apply_our_deltas(unet, adapter, prefix="lora_unet"):
    """Our own reading of the file: W += (alpha/r) up @ down for every layer, by name."""
    table = module_table(unet, prefix)
    modules = dict(unet.named_modules())
    for name, layer in adapter.layers.items():
        if name.startswith(prefix + "_"):
            modules[table[name]].weight.data += layer.delta().to(modules[table[name]].weight.dtype)
    return unet


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """One 60-step over-fit run shared by several tests."""
    root = tmp_path_factory.mktemp("run")
    data = make_folder(root / "data", n=4)
    events = []
    cfg = tiny_config(tiny_model, data, root / "out", "train.max_steps=60", "optim.learning_rate=5e-3",
                      "network.rank=8", "network.alpha=8", "output.save_every_n_steps=30",
                      "sample.prompts=red stripes|blue circle", "sample.sample_every_n_steps=30", "sample.steps=3")
    trainer = LoraTrainer(cfg, events.append)
    result = trainer.run()
    return trainer, result, events, root / "out"


def test_run_writes_every_output(trained):
    trainer, result, events, out = trained
    assert result.lora_path == out / "my-lora.safetensors" and result.steps == 60
    assert (out / "my-lora-step000030.safetensors").is_file()
    assert not (out / "my-lora-step000060.safetensors").exists()  # the final file is my-lora.safetensors
    assert load_state(out / "my-lora-state.safetensors")["step"] == 60
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 61))
    assert (out / "my-lora.toml").is_file()
    samples = sorted(p.name for p in (out / "samples").glob("*.png"))
    assert samples == [f"my-lora-step0000{s}-{i}.png" for s in (30, 60) for i in (0, 1)]
    kinds = [e.kind for e in events]
    assert kinds.count("step") == 60 and kinds[-1] == "done" and kinds.count("sample") == 2
    step_events = [e for e in events if e.kind == "step"]
    assert step_events[-1].total == 60 and step_events[-1].eta_s == 0 and step_events[-1].steps_per_s > 0
    assert not list(out.glob(".*.tmp"))


def test_loss_is_finite_and_falls(trained, tiny_model):
    trainer, result, _, out = trained
    assert all(math.isfinite(x) for x in result.losses)
    # The training loss is noisy (random timesteps); measure on fixed noise and timesteps instead.
    unet = trainer.m.unet.eval()
    x0 = torch.stack([trainer.latent_cache[(i, False)] for i in range(4)])
    captions = [trainer.items[i].caption for i in range(4)]
    cond = torch.stack([trainer.text_cache[c]["encoder_hidden_states"] for c in captions])
    g = torch.Generator().manual_seed(123)
    losses = {}
    for label, enabled in (("base", False), ("lora", True)):
        unet.enable_adapters() if enabled else unet.disable_adapters()
        total = 0.0
        for t in (100, 300, 600, 900):
            noise = torch.randn(x0.shape, generator=g)
            ts = torch.full((4,), t)
            noisy = trainer.m.noise_scheduler.add_noise(x0, noise, ts)
            with torch.no_grad():
                total += torch.nn.functional.mse_loss(unet(noisy, ts, cond).sample, noise).item()
        losses[label] = total / 4
        g.manual_seed(123)
    unet.enable_adapters()
    assert losses["lora"] < 0.8 * losses["base"], losses


def test_base_weights_unchanged_only_lora_trained(trained, tiny_model):
    trainer, _, _, _ = trained
    fresh = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet").state_dict()
    lora_names = []
    for name, tensor in trainer.m.unet.state_dict().items():
        if ".lora_" in name:
            lora_names.append(name)
            continue
        assert torch.equal(tensor, fresh[name.replace(".base_layer", "")]), name
    assert lora_names
    ups = [t for n, t in trainer.m.unet.state_dict().items() if ".lora_B." in n]
    assert all(t.abs().sum() > 0 for t in ups)  # B started at zero and was trained
    assert all(not p.requires_grad for n, p in trainer.m.unet.named_parameters() if ".lora_" not in n)
    assert all(not p.requires_grad for p in trainer.m.text_encoder.parameters())


def test_adapter_is_identity_at_step_zero(tiny_model, image_folder, tmp_path):
    trainer = LoraTrainer(tiny_config(tiny_model, image_folder, tmp_path / "out"))
    trainer.scan_data()
    trainer.setup_accelerator()
    trainer.load_model()
    base = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet").eval()
    trainer.inject_lora()
    assert any(".lora_B." in n for n in trainer.m.unet.state_dict())
    x, t, ctx = unet_inputs(base)
    with torch.no_grad():
        assert torch.equal(trainer.m.unet.eval()(x, t, ctx).sample, base(x, t, ctx).sample)


def test_file_loads_in_diffusers_and_matches_our_reader(trained, tiny_model):
    _, result, _, _ = trained
    adapter = read_lora(result.lora_path)
    meta = adapter.metadata
    assert meta["ss_network_dim"] == "8" and meta["ss_network_alpha"] == "8.0"
    assert meta["ss_base_model_version"] == "loramix_tiny" and meta["ss_steps"] == "60"
    assert meta["ss_resolution"] == "(64, 64)"
    assert json.loads(meta["ss_tag_frequency"])  # folder -> tag -> count
    per_epoch = int(meta["ss_num_batches_per_epoch"])  # kohya's run keys, ss_epoch 1-based (tests/unit/…run_metadata)
    assert meta["ss_epoch"] == meta["ss_num_epochs"] == str(math.ceil(60 / per_epoch)) and meta["ss_total_batch_size"] == "2"
    assert sum(b["count"] for b in json.loads(meta["ss_bucket_info"])["buckets"].values()) == 2 * per_epoch
    assert json.loads(meta["loramix_config"])["network"]["rank"] == 8
    assert all(k.startswith("lora_unet_") for k in adapter.layers)
    assert {k.rsplit("_", 2)[-1] for k in adapter.layers} >= {"q", "k", "v"}

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    x, t, ctx = unet_inputs(pipe.unet)
    with torch.no_grad():
        before = pipe.unet(x, t, ctx).sample
        pipe.load_lora_weights(str(result.lora_path.parent), weight_name=result.lora_path.name)
        theirs = pipe.unet(x, t, ctx).sample
        ours = apply_our_deltas(UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet"), adapter)(
            x, t, ctx).sample
    change = (theirs - before).abs().max().item()
    assert change > 1e-2, "the LoRA should change the UNet output"
    assert (theirs - ours).abs().max().item() < 1e-4 * max(1.0, change)


def test_resume_reproduces_the_uninterrupted_run(tiny_model, image_folder, tmp_path):
    full = train(tiny_config(tiny_model, image_folder, tmp_path / "full", "optim.lr_scheduler=cosine",
                             "optim.lr_warmup_steps=2"))
    cancel = CancelToken()

    def stop_at_4(event):
        if event.kind == "step" and event.step == 4:
            cancel.cancel()

    half = train(tiny_config(tiny_model, image_folder, tmp_path / "half", "optim.lr_scheduler=cosine",
                             "optim.lr_warmup_steps=2"), stop_at_4, cancel)
    assert half.cancelled and half.steps == 4
    assert read_lora(half.lora_path).metadata["ss_steps"] == "4"  # the cancel left a readable checkpoint
    resumed = train(tiny_config(tiny_model, image_folder, tmp_path / "half", "optim.lr_scheduler=cosine",
                                "optim.lr_warmup_steps=2", f"train.resume_from={half.state_path}"))
    assert resumed.steps == 8 and len(resumed.losses) == 4
    a, b = read_lora(full.lora_path), read_lora(resumed.lora_path)
    assert a.layers.keys() == b.layers.keys()
    for name in a.layers:
        assert torch.allclose(a.layers[name].up, b.layers[name].up, atol=1e-6), name
        assert torch.allclose(a.layers[name].down, b.layers[name].down, atol=1e-6), name
    assert full.losses[4:] == pytest.approx(resumed.losses, rel=1e-5)
    log = [json.loads(line)["step"] for line in (tmp_path / "half" / "log.jsonl").read_text().splitlines()]
    assert log == list(range(1, 9))


def test_nan_loss_stops_after_saving_last_good_state(tiny_model, image_folder, tmp_path, monkeypatch):
    real = LoraTrainer.compute_loss

    def poisoned(self, micro):
        loss = real(self, micro)
        return loss * float("nan") if micro == 5 else loss

    monkeypatch.setattr(LoraTrainer, "compute_loss", poisoned)
    events = []
    with pytest.raises(TrainingError, match=r"loss became nan at step 6.*last good state \(step 5\)"):
        train(tiny_config(tiny_model, image_folder, tmp_path / "out"), events.append)
    assert events[-1].kind == "error" and "done" not in [e.kind for e in events]
    assert load_state(tmp_path / "out" / "my-lora-state.safetensors")["step"] == 5
    assert read_lora(tmp_path / "out" / "my-lora-step000005.safetensors").metadata["ss_steps"] == "5"


def test_text_encoder_training_writes_te_keys_diffusers_reads(tiny_model, image_folder, tmp_path):
    result = train(tiny_config(tiny_model, image_folder, tmp_path / "out", "network.train_text_encoder=true",
                               "dataset.cache_text_embeddings=false", "train.max_steps=3",
                               "network.text_encoder_lr=1e-3"))
    adapter = read_lora(result.lora_path)
    te = [k for k in adapter.layers if k.startswith("lora_te_text_model_encoder_layers_")]
    assert te and any(k.endswith("_self_attn_q_proj") for k in te)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    ids = pipe.tokenizer(["red stripes"], return_tensors="pt", padding="max_length").input_ids
    with torch.no_grad():
        before = pipe.text_encoder(ids)[0]
        pipe.load_lora_weights(str(result.lora_path))
        after = pipe.text_encoder(ids)[0]
    assert not torch.equal(before, after)


def test_text_encoder_lora_keys_and_values_are_kohyas(tiny_model, image_folder, tmp_path):
    """The text encoder's LoRA goes on through PEFT itself (not transformers' version-gated add_adapter), and
    the file holds kohya's lora_te_* names with values that give diffusers' reader the trained encoder."""
    trainer = _ready_trainer(tiny_model, image_folder, tmp_path / "out", "network.train_text_encoder=true",
                             "dataset.cache_text_embeddings=false", "network.text_encoder_lr=1e-2")
    trainer.total_steps = 2
    trainer.start_log(0)
    trainer.train_steps(0)
    path = save_lora(tmp_path / "te.safetensors", trainer.adapter(2), "fp32")
    layers = read_lora(path).layers
    te = sorted(k for k in layers if k.startswith("lora_te_"))
    assert len(te) == 2 * 4 and "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in te, te
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    ids = pipe.tokenizer(["red stripes"], return_tensors="pt", padding="max_length").input_ids
    encoder = trainer.trained["lora_te"]
    with torch.no_grad():
        base = pipe.text_encoder(ids)[0]
        trained = encoder(ids)[0]
        pipe.load_lora_weights(str(path))
        read_back = pipe.text_encoder(ids)[0]
    assert not torch.allclose(base, trained, atol=1e-4)
    torch.testing.assert_close(read_back, trained, atol=1e-5, rtol=1e-4)


def test_uncached_flip_and_accumulation_paths_train(tiny_model, tmp_path):
    data = make_folder(tmp_path / "data", n=4, sizes=[(96, 64), (64, 96)])
    result = train(tiny_config(tiny_model, data, tmp_path / "out", "dataset.cache_latents=false",
                               "dataset.crop=random", "dataset.flip_aug=true", "dataset.resolution=64",
                               "dataset.min_bucket_reso=64", "dataset.max_bucket_reso=128",
                               "train.gradient_accumulation_steps=2", "train.max_steps=3",
                               "dataset.shuffle_captions=true", "dataset.cache_text_embeddings=false",
                               "dataset.caption_dropout_rate=0.5", "train.min_snr_gamma=5",
                               "train.noise_offset=0.05"))
    assert result.steps == 3 and all(math.isfinite(x) for x in result.losses)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_loss_target_follows_the_scheduler_prediction_type(prediction, tmp_path, image_folder):
    from loramix.embedded.tiny import build_tiny_model
    from tests.conftest import WORDS
    from trainers.lora_trainer import _seed_for

    model = build_tiny_model(tmp_path / "m", words=WORDS, prediction_type=prediction)
    trainer = LoraTrainer(tiny_config(model, image_folder, tmp_path / "out", "train.batch_size=1"))
    trainer.scan_data()
    trainer.setup_accelerator()
    trainer.load_model()
    trainer.inject_lora()
    trainer.build_caches()
    trainer.build_optimizer()
    with torch.no_grad():
        loss = trainer.compute_loss(0).item()
        sample = trainer.micro_batch(0)[0][0]
        latents = trainer.latent_cache[(sample.index, False)][None]
        cond = trainer.text_cache[trainer.items[sample.index].caption]["encoder_hidden_states"][None]
        g = torch.Generator().manual_seed(_seed_for(42, 0, 0))
        noise = torch.randn(latents.shape[1:], generator=g)[None]
        t = torch.randint(0, 1000, (1,), generator=g)
        sched = trainer.m.noise_scheduler
        noisy = sched.add_noise(latents, noise, t)
        target = noise if prediction == "epsilon" else sched.get_velocity(latents, noise, t)
        expected = torch.nn.functional.mse_loss(trainer.m.unet(noisy, t, cond).sample, target).item()
    assert loss == pytest.approx(expected, rel=1e-5)


def test_samples_at_the_end_only_when_every_is_zero(tiny_model, image_folder, tmp_path):
    events = []
    train(tiny_config(tiny_model, image_folder, tmp_path / "out", "train.max_steps=2", "sample.prompts=red",
                      "sample.steps=2", "sample.sample_every_n_steps=0"), events.append)
    assert [e.step for e in events if e.kind == "sample"] == [2]
    assert [p.name for p in (tmp_path / "out" / "samples").iterdir()] == ["my-lora-step000002-0.png"]


# ---- issue 12: non-finite stops, resume checks, warnings, options that must do what they say ------------
def _all_finite(path) -> bool:
    from safetensors.torch import load_file

    return all(bool(torch.isfinite(t).all()) for t in load_file(str(path)).values() if t.is_floating_point())


@pytest.mark.parametrize("poisoned", ["weight", "optimizer_state"])
def test_non_finite_weights_roll_back_to_the_last_good_step(tiny_model, image_folder, tmp_path, monkeypatch,
                                                            poisoned):
    """The 4th optimizer step leaves a NaN weight, or (as a huge gradient squared does in AdamW on some CPUs)
    an inf in exp_avg_sq while the weights stay finite; the loss was finite both times."""
    calls = []
    real_step = torch.optim.AdamW.step

    def poisoning_step(self, *a, **k):
        out = real_step(self, *a, **k)
        calls.append(1)
        if len(calls) == 4:
            first = self.param_groups[0]["params"][0]
            with torch.no_grad():
                if poisoned == "weight":
                    first.view(-1)[0] = float("nan")
                else:
                    self.state[first]["exp_avg_sq"].view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoning_step)
    events = []
    with pytest.raises(TrainingError, match=r"LoRA weights or the optimizer's state became NaN or infinite at "
                                            r"step 4.*last good state \(step 3\) is saved"):
        train(tiny_config(tiny_model, image_folder, tmp_path / "out"), events.append)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert events[-1].kind == "error"
    state_file = tmp_path / "out" / "my-lora-state.safetensors"
    assert _all_finite(state_file) and _all_finite(tmp_path / "out" / "my-lora-step000003.safetensors")
    saved = load_state(state_file)
    assert saved["step"] == 3
    # "last good" is exactly what an uninterrupted 3-step run ends with: weights and optimizer state
    clean = load_state(train(tiny_config(tiny_model, image_folder, tmp_path / "clean", "train.max_steps=3")).state_path)
    assert saved["lora"].keys() == clean["lora"].keys()
    for k in clean["lora"]:
        assert torch.equal(saved["lora"][k], clean["lora"][k]), k
    for idx, entries in clean["optimizer"]["state"].items():
        for name, value in entries.items():
            assert torch.equal(torch.as_tensor(saved["optimizer"]["state"][idx][name]), torch.as_tensor(value))
    resumed = train(tiny_config(tiny_model, image_folder, tmp_path / "out", f"train.resume_from={state_file}"))
    assert resumed.steps == 8 and _all_finite(resumed.lora_path)


def test_a_huge_learning_rate_never_writes_a_non_finite_file(tiny_model, image_folder, tmp_path):
    """The largest learning rate the config allows, no clipping: whatever happens, every file is finite."""
    out = tmp_path / "out"
    cfg = tiny_config(tiny_model, image_folder, out, "optim.learning_rate=10", "optim.max_grad_norm=0",
                      "output.save_precision=fp16", "train.max_steps=12", "output.save_every_n_steps=4")
    try:
        result = train(cfg)
        state = result.state_path
    except TrainingError as e:
        assert "last good state" in str(e)
        state = out / "my-lora-state.safetensors"
    files = sorted(out.glob("*.safetensors"))
    assert files and all(_all_finite(f) for f in files), files
    step = load_state(state)["step"]
    # Resumable: the state loads and the run goes on from its step with the lower rate the message advises.
    # (Weights a rate of 10 left behind may be past saving; then it stops again, again writing only finite files.)
    events = []
    try:
        train(tiny_config(tiny_model, image_folder, out, f"train.resume_from={state}", "optim.learning_rate=1e-4",
                          f"train.max_steps={step + 2}"), events.append)
    except TrainingError as e:
        assert "last good state" in str(e)
    assert [e.step for e in events if e.kind == "start"] == [step]
    assert all(e.lr == 1e-4 for e in events if e.kind == "step")
    assert all(_all_finite(f) for f in out.glob("*.safetensors"))


@pytest.mark.parametrize("make_bad, words", [
    (lambda p: p.write_bytes(b"\x00" * 7 + b"\xff" * 100), "is not a loramix training state (it is not a readable"),
    (lambda p: save_file({"lora_unet_a.lora_down.weight": torch.zeros(2, 2)}, str(p), metadata={"ss_network_dim": "2"}),
     "is a LoRA file, not a loramix training state"),
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: None, "does not exist"),
])
def test_resume_from_a_non_state_file_is_refused_before_the_model_loads(make_bad, words, tiny_model, image_folder,
                                                                        tmp_path, monkeypatch):
    bad = tmp_path / "not-a-state.safetensors"
    make_bad(bad)

    def must_not_load(self):
        raise AssertionError("the model was loaded before train.resume_from was checked")

    monkeypatch.setattr(LoraTrainer, "load_model", must_not_load)
    with pytest.raises(TrainingError, match=f"train.resume_from: .*{re.escape(words)}.*<name>-state.safetensors"):
        train(tiny_config(tiny_model, image_folder, tmp_path / "out", f"train.resume_from={bad}"))


def test_scan_and_caption_warnings_are_events_naming_the_file(tiny_model, tmp_path):
    from PIL import Image

    data = make_folder(tmp_path / "data", n=2)
    Image.new("RGB", (8, 8), (0, 0, 0)).save(data / "speck.png")
    long_caption = ", ".join(["red stripes", "blue circle"] * 30) + ", the very last words"
    (data / "img1.txt").write_text(long_caption)
    events = []
    train(tiny_config(tiny_model, data, tmp_path / "out", "train.max_steps=1"), events.append)
    warnings = [e.message for e in events if e.kind == "warning"]
    assert any(str(data / "speck.png") in w and "8x8 pixels" in w for w in warnings), warnings
    cut = [w for w in warnings if str(data / "img1.txt") in w]
    assert len(cut) == 1 and "the text encoder reads only the first 75" in cut[0] and "last words" in cut[0]
    assert not any("img0" in w for w in warnings)


def _ready_trainer(model, data, out, *overrides) -> LoraTrainer:
    trainer = LoraTrainer(tiny_config(model, data, out, *overrides))
    trainer.scan_data()
    trainer.setup_accelerator()
    trainer.load_model()
    trainer.inject_lora()
    trainer.build_caches()
    trainer.build_optimizer()
    return trainer


def test_min_snr_weight_is_applied(tiny_model, image_folder, tmp_path):
    from diffusers.training_utils import compute_snr

    trainer = _ready_trainer(tiny_model, image_folder, tmp_path / "out", "train.batch_size=1",
                             "train.min_snr_gamma=2")
    sched = trainer.m.noise_scheduler
    with torch.no_grad():
        for micro in range(3):
            loss = trainer.compute_loss(micro).item()
            sample, latents, cond, noise, t = first_sample_inputs(trainer, micro)
            mse = torch.nn.functional.mse_loss(trainer.m.unet(sched.add_noise(latents, noise, t), t, cond).sample,
                                               noise).item()
            snr = compute_snr(sched, t).item()
            weight = min(snr, 2.0) / snr  # epsilon prediction: min(SNR, gamma) / SNR
            assert weight < 0.999 or snr <= 2.0
            assert loss == pytest.approx(mse * weight, rel=1e-5), (micro, snr)


def test_text_encoder_lr_is_used(tiny_model, image_folder, tmp_path):
    trainer = _ready_trainer(tiny_model, image_folder, tmp_path / "out", "network.train_text_encoder=true",
                             "dataset.cache_text_embeddings=false", "optim.learning_rate=1e-4",
                             "network.text_encoder_lr=3e-3", "optim.weight_decay=0", "optim.max_grad_norm=0")
    unet_prefix = trainer.family.unet_prefix
    lrs = {prefix: group["lr"] for prefix, group in zip(trainer.trained, trainer.optimizer.param_groups)}
    assert lrs == {unet_prefix: 1e-4, "lora_te": 3e-3}
    ups = {prefix: {n: p.detach().clone() for n, p in m.named_parameters() if ".lora_B." in n}
           for prefix, m in trainer.trained.items()}
    trainer.total_steps = 1
    trainer.start_log(0)
    trainer.train_steps(0)
    for prefix, before in ups.items():
        module = trainer.trained[prefix]
        moved = max((p.detach() - before[n]).abs().max().item() for n, p in module.named_parameters() if n in before)
        # AdamW's first step moves each weight by about lr (B starts at zero, so only B moves)
        assert moved == pytest.approx(lrs[prefix], rel=0.02), prefix


def test_gradient_accumulation_steps_the_optimizer_once_per_n_micro_batches(tiny_model, image_folder, tmp_path,
                                                                              monkeypatch):
    real_step, real_loss = torch.optim.AdamW.step, LoraTrainer.compute_loss
    counts = {"optimizer": 0, "micro": []}

    def counting_step(self, *a, **k):
        counts["optimizer"] += 1
        return real_step(self, *a, **k)

    def counting_loss(self, micro):
        counts["micro"].append(micro)
        return real_loss(self, micro)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    monkeypatch.setattr(LoraTrainer, "compute_loss", counting_loss)
    result = train(tiny_config(tiny_model, image_folder, tmp_path / "out", "train.gradient_accumulation_steps=3",
                               "train.max_steps=2"))
    assert result.steps == 2
    assert counts["micro"] == [0, 1, 2, 3, 4, 5]
    assert counts["optimizer"] == 2


def test_a_resume_uses_the_configs_learning_rate(tiny_model, image_folder, tmp_path):
    """The stop message says "lower optim.learning_rate": a resume must then train at the lower rate."""
    first = train(tiny_config(tiny_model, image_folder, tmp_path / "out", "train.max_steps=2"))
    events = []
    train(tiny_config(tiny_model, image_folder, tmp_path / "out", "train.max_steps=4", "optim.learning_rate=2e-4",
                      f"train.resume_from={first.state_path}"), events.append)
    assert [(e.step, e.lr) for e in events if e.kind == "step"] == [(3, 2e-4), (4, 2e-4)]


def test_reg_images_loss_is_weighted_by_prior_loss_weight(tiny_model, tmp_path):
    make_folder(tmp_path / "train", n=3)
    make_folder(tmp_path / "reg", n=3, prefix="reg", captions=False)
    trainer = _ready_trainer(tiny_model, tmp_path / "train", tmp_path / "out", "train.batch_size=1",
                             f"dataset.reg_data_dir={tmp_path / 'reg'}", "dataset.trigger_word=zzstyle")
    assert sorted(trainer.text_cache) == ["", *[f"zzstyle, red stripes, blue circle, picture {i}" for i in range(3)]]
    seen = set()
    with torch.no_grad():
        for micro in range(6):
            is_reg = trainer.items[trainer.micro_batch(micro)[0][0].index].is_reg
            seen.add(is_reg)
            losses = []
            for weight in (0.0, 1.0, 2.5):
                trainer.cfg.train.prior_loss_weight = weight
                losses.append(trainer.compute_loss(micro).item())
            if is_reg:
                assert losses[0] == 0.0 and losses[2] == pytest.approx(2.5 * losses[1], rel=1e-6) and losses[1] > 0
            else:
                assert losses[0] == losses[1] == losses[2]
    assert seen == {True, False}


def test_reg_run_writes_kohyas_reg_metadata(tiny_model, tmp_path):
    make_folder(tmp_path / "train", n=3)
    make_folder(tmp_path / "reg" / "1_shape", n=5, prefix="reg", captions=False)
    result = train(tiny_config(tiny_model, tmp_path / "train", tmp_path / "out", "train.max_steps=2",
                               f"dataset.reg_data_dir={tmp_path / 'reg'}", "train.prior_loss_weight=0.5"))
    meta = read_lora(result.lora_path).metadata
    # kohya counts every regularisation image found, though an epoch uses only 3 of the 5 here
    assert meta["ss_num_train_images"] == "3" and meta["ss_num_reg_images"] == "5"
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"1_shape": {"n_repeats": 1, "img_count": 5}}
    assert meta["ss_prior_loss_weight"] == "0.5"
    assert list(json.loads(meta["ss_tag_frequency"])) == ["1_train"]
