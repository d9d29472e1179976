"""Fusing into a base loaded from safetensors files with no host copies: the originals are read back from disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from loramix.core.errors import LoramixError
from loramix.mix.mixer import Mixer
from tests.conftest import random_lora, unet_out


@pytest.fixture(scope="module")
def files(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return [random_lora(tiny_model, root / "a.safetensors", 1, text=True),
            random_lora(tiny_model, root / "b.safetensors", 2, rank=8, alpha=8.0, conv=True)]


def snapshot(mixer):
    return {f"{part}.{k}": v.clone() for part in ("unet", "text_encoder")
            for k, v in getattr(mixer.components, part).state_dict().items()}


def mixers(tiny_model, files, kinds=("memory", "file")):
    out = {}
    for originals in kinds:
        mixer = Mixer.from_base(str(tiny_model), originals=originals)
        mixer.set_blend([(files[0], 0.5, True), (files[1], -0.7, True)])
        out[originals] = mixer
    return out


def fuse_as_held_and_restore(m: dict, files, blends) -> None:
    """For each (weight a, weight b) of `blends`, the "file" mixer's fused output equals the copy-holding
    "memory" mixer's; the file mixer holds no copy, and restoring gives its base back bit for bit."""
    before = snapshot(m["file"])
    for weights in blends:
        outs = {}
        for name, mixer in m.items():
            mixer.set_blend([(files[0], weights[0], True), (files[1], weights[1], True)])
            with mixer.applied("fused"):
                outs[name] = unet_out(mixer.components.unet)
        assert torch.equal(outs["file"], outs["memory"])
    assert m["memory"]._originals and not m["file"]._originals  # nothing held
    m["file"].restore()
    now = snapshot(m["file"])
    assert all(torch.equal(now[k], v) for k, v in before.items())


def test_file_originals_fuse_and_restore_exactly_as_held_ones(tiny_model, files):
    fuse_as_held_and_restore(mixers(tiny_model, files), files, ((0.5, -0.7), (1.5, 0.3), (-2.0, 2.0), (0.5, -0.7)))


def test_auto_fuses_whatever_the_budget_when_originals_cost_nothing(tiny_model, files):
    mixer = mixers(tiny_model, files, ("file",))["file"]
    mixer.fuse_budget = 0.0
    with mixer.applied() as how:
        assert how == "fused"
    assert not mixer._originals


def test_a_weight_that_differs_from_the_file_is_held_instead(tiny_model, files):
    mixer = mixers(tiny_model, files, ("file",))["file"]
    changed = mixer.slots["a"].layers[0].module
    with torch.no_grad():
        changed.weight.mul_(1.5)  # the model no longer matches its file here
    before = snapshot(mixer)
    with mixer.applied("fused"):
        pass
    assert list(mixer._originals) == [changed]
    mixer.restore()
    now = snapshot(mixer)
    assert all(torch.equal(now[k], v) for k, v in before.items())


def test_every_base_folder_reads_its_originals_back_by_default(tiny_model):
    """The app and the CLI call `from_base` without `originals`: a folder base, the embedded one included,
    holds no copies (the preview-speed default of docs/benchmarks.md, "Mix previews")."""
    assert Mixer.from_base(str(tiny_model)).file_originals is not None
    assert Mixer.from_base("").file_originals is not None  # "" = the embedded model
    assert Mixer.from_base(str(tiny_model), originals="memory").file_originals is None


def fake_hub_cache(model: Path, cache: Path, repo_id: str, branch: str = "main") -> Path:
    """`model` as the Hugging Face cache holds a downloaded repo: content-named blobs, a snapshot folder of links
    to them under a commit hash, and a ref naming that commit. Returns the snapshot folder."""
    import hashlib

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}@{branch}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for path in sorted(p for p in model.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(path.read_bytes())
        link = snapshot / path.relative_to(model)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / branch).write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline Hugging Face cache of our own in tmp_path (the hub is unreachable here, and tests download
    nothing)."""
    import huggingface_hub.constants as hub

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    return cache


def test_a_hub_base_reads_its_originals_back_from_its_cached_snapshot(tiny_model, files, hub_cache):
    """A hub id loads from the snapshot folder of the local Hugging Face cache, whose safetensors files are on
    disk like a folder's: the mixer reads the originals back from them, holds nothing, fuses as a copy-holding
    mixer does, and restores the base bit for bit. A revision other than the default branch reads its own."""
    cached = fake_hub_cache(tiny_model, hub_cache, "someone/tiny-sd")
    m = mixers("someone/tiny-sd", files)
    assert m["file"].file_originals is not None and m["memory"].file_originals is None
    path, _ = next(iter(m["file"].file_originals._keys.values()))
    assert cached in path.parents
    fuse_as_held_and_restore(m, files, ((0.5, -0.7), (1.5, 0.3)))

    other = fake_hub_cache(tiny_model, hub_cache, "someone/tiny-sd", branch="v2")
    path, _ = next(iter(Mixer.from_base("someone/tiny-sd", revision="v2").file_originals._keys.values()))
    assert other in path.parents and other != cached


def test_a_hub_id_not_in_the_cache_holds_copies_and_downloads_nothing(hub_cache):
    from loramix.mix.file_originals import FileOriginals

    assert FileOriginals.for_base(None, "someone/not-cached") is None
    assert not any(hub_cache.iterdir())


@pytest.fixture
def own_base(tiny_model, tmp_path):
    """A copy of the tiny model that the test may overwrite."""
    import shutil

    return Path(shutil.copytree(tiny_model, tmp_path / "base"))


def fused_once(base, files):
    mixer = Mixer.from_base(str(base))
    mixer.set_blend([(files[0], 0.5, True), (files[1], -0.7, True)])
    with mixer.applied("fused"):
        pass
    return mixer


def overwrite_in_place(path: Path) -> None:
    """Rewrite a file's bytes into the same inode, one tensor's values changed (what `cp` over it does)."""
    data = bytearray(path.read_bytes())
    data[-64:] = bytes(64)
    with open(path, "r+b") as f:
        f.write(data)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_a_base_file_overwritten_in_place_is_refused_with_a_sentence(own_base, files):
    mixer = fused_once(own_base, files)
    weights = own_base / "unet" / "diffusion_pytorch_model.safetensors"
    assert mixer.file_originals.changed() is None
    overwrite_in_place(weights)
    assert mixer.file_originals.changed() == weights
    with pytest.raises(LoramixError, match="overwritten while loaded.*load the base model again") as e:
        mixer.restore()
    assert str(weights) in str(e.value)


def test_a_base_file_replaced_by_rename_still_restores_exactly(own_base, files):
    """A save that writes a new file and renames it over the old one (atomic writers, a bake's replace) leaves
    the open map on the old file: the originals read back are still the ones loaded."""
    reference = snapshot(Mixer.from_base(str(own_base), originals="memory"))
    mixer = fused_once(own_base, files)
    weights = own_base / "unet" / "diffusion_pytorch_model.safetensors"
    other = weights.with_suffix(".new")
    other.write_bytes(weights.read_bytes())
    overwrite_in_place(other)
    os.replace(other, weights)
    assert mixer.file_originals.changed() is None
    mixer.restore()
    now = snapshot(mixer)
    assert all(torch.equal(now[k], v) for k, v in reference.items())


def test_the_app_loads_the_base_again_after_its_file_was_overwritten(own_base, files, tmp_path):
    from webui.state import AppState

    state = AppState.create(tmp_path / "outputs")
    first = state.mixer(str(own_base))
    first.set_blend([(files[0], 0.5, True)])
    with first.applied("fused"):
        pass
    seen = state.loaded_base
    assert state.mixer(str(own_base)) is first
    overwrite_in_place(own_base / "unet" / "diffusion_pytorch_model.safetensors")
    second = state.mixer(str(own_base))
    assert second is not first and state.loaded_base != seen  # the base picture cached for `seen` is not reused


def single_file_base(family, tmp_path):
    """A random tiny model of `family` saved as one checkpoint in the original layout, tokenizers beside it, and
    the same weights as a diffusers folder."""
    from loramix.embedded.tiny import write_clip_tokenizer
    from loramix.formats.single_file import save_single_file
    from tests.integration.test_single_file import build

    tokenizer = write_clip_tokenizer(tmp_path / "tokenizer", ["red", "circle"])
    if family == "sdxl":
        write_clip_tokenizer(tmp_path / "tokenizer_2", ["red", "circle"])
    parts, _ = build(family, tokenizer)
    path = save_single_file(parts, tmp_path / "model.safetensors", family)
    folder = tmp_path / "as-folder"
    for name in ("unet", "text_encoder"):
        parts[name].save_pretrained(folder / name)
    return path, folder


def test_a_single_file_base_reads_its_originals_back_too(tmp_path):
    """A base loaded from one .safetensors checkpoint (A1111 / ComfyUI layout) holds no copies either: each
    adapted layer is found in the file by its shape and first row, checked whole on its first fuse, and put back
    bit for bit; the previews equal those of a mixer that holds copies."""
    path, folder = single_file_base("sd1", tmp_path)
    lora = random_lora(folder, tmp_path / "a.safetensors", 1, rank=4, text=True, conv=True)
    mixer = Mixer.from_base(str(path), precision="fp32")
    assert mixer.file_originals is not None
    before = snapshot(mixer)
    mixer.set_blend([(lora, 0.8, True)])
    with mixer.applied("fused"):
        fused = unet_out(mixer.components.unet)
    assert mixer.slots and not mixer._originals  # every adapted module read back from the file, none held
    held = Mixer.from_base(str(path), precision="fp32", originals="memory")
    held.set_blend([(lora, 0.8, True)])
    with held.applied("fused"):
        assert torch.equal(unet_out(held.components.unet), fused)
    assert held._originals
    mixer.restore()
    now = snapshot(mixer)
    assert all(torch.equal(now[k], v) for k, v in before.items())


def test_an_sdxl_single_file_reads_back_every_layer_but_the_second_text_encoders_qkv(tmp_path):
    """SDXL's second text encoder (OpenCLIP) stores q, k and v as one tensor, which diffusers' loader splits, and
    its text projection transposed: those modules have no tensor of their shape and first row in the file and are
    held as copies when fused (no LoRA adapts the projection). Every other Linear and Conv2d of the UNet and both
    text encoders is read back, equal to the loaded weight."""
    path, _ = single_file_base("sdxl", tmp_path)
    mixer = Mixer.from_base(str(path), precision="fp32")
    originals = mixer.file_originals
    layers = {m for part in ("unet", "text_encoder", "text_encoder_2")
              for m in getattr(mixer.components, part).modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    qkv = {m for name, m in mixer.components.text_encoder_2.named_modules()
           if name.endswith(("q_proj", "k_proj", "v_proj", "text_projection"))}
    assert qkv and not any(originals.has(m) for m in qkv)
    rest = layers - qkv
    assert rest and all(originals.has(m) for m in rest)
    assert all(torch.equal(originals.read(m), m.weight) for m in rest)
