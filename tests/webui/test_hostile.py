"""A hostile client against the real server: every handler, through gradio's queue protocol, with escape
payloads. Nothing outside the app's folders may be written, deleted or read, and each refusal is a sentence.

Handlers are enumerated from `/config`, so a handler added later is probed too.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_folder, random_lora, tiny_config
from tests.webui.conftest import config_of, dependency, inputs_for, message_of, queue_call, refused, serve
from webui.state import AppState


def tree_digest(root: Path) -> dict[str, str]:
    """Every path under `root` with the hash of its bytes (or 'dir' / the link target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("hostile")
    sentinel = root / "sentinel"
    make_folder(sentinel / "images", n=2)
    (sentinel / "victim").mkdir()
    (sentinel / "victim" / "keep.txt").write_text("do not touch\n")
    (sentinel / "secret.toml").write_text("[model]\nbase_model = 'secret'\n")
    state = AppState.create(root / "outputs")
    (state.outputs / "escape").symlink_to(sentinel / "victim")  # a symlink inside the outputs pointing out
    random_lora(tiny_model, state.lora_dir / "inside.safetensors", 3)
    demo, url = serve(state)
    state.test_base = str(tiny_model)
    yield url, state, sentinel
    demo.close()


def call(url: str, fn_index: int, data: list, timeout: float = 120) -> dict:
    """Run handler `fn_index` through the queue protocol, as any web page could; returns the final message."""
    with httpx.Client(base_url=url, timeout=timeout) as client:
        return queue_call(client, fn_index, data)


def payloads(sentinel: Path, state: AppState) -> list[str]:
    """Absolute paths out, `..`, a symlink inside pointing out, separators, empty and `.`, code extensions."""
    return [str(sentinel / "victim"), "..", "../../evil", ".", "", "a/b",
            str(state.outputs / "escape" / "evil"), ".pth"]


def component_value(comp: dict, text: str):
    kind = comp["type"]
    props = comp.get("props", {})
    if kind in ("textbox", "markdown", "html", "dropdown"):
        return text
    if kind == "dataframe":
        return {"headers": ["image", "caption"], "data": [[text, "pwned"]], "metadata": None}
    if kind == "checkbox":
        return True
    if kind == "slider":  # the minimum: 1 step, no guidance, the model's own size (keeps any preview cheap)
        return props.get("minimum", 0)
    if kind == "number":
        return props.get("value", 0) or 0
    if kind == "state":
        return props.get("value")
    return props.get("value")


def test_every_handler_refuses_escapes_and_leaves_outside_untouched(hostile):
    url, state, sentinel = hostile
    before = tree_digest(sentinel)
    config = config_of(url)
    components = {c["id"]: c for c in config["components"]}
    probed = 0
    for dep in config["dependencies"]:
        if not dep["inputs"] or dep.get("api_name") in ("train", "generate"):
            continue  # the named endpoints have their own tests below
        for text in payloads(sentinel, state):
            data = [component_value(components[i], text) for i in dep["inputs"]]
            call(url, dep["id"], data)
            probed += 1
    assert probed > 50, probed
    assert tree_digest(sentinel) == before
    assert not (state.outputs.parent / "evil").exists() and not Path("/evil").exists()
    assert (state.outputs / "loras" / "inside.safetensors").is_file()  # nothing of ours was deleted either


def test_caption_save_refuses_other_files_and_code_extensions(hostile):
    url, state, sentinel = hostile
    config = config_of(url)
    dep = dependency(config, "Save captions")
    images = sentinel / "images"
    before = tree_digest(sentinel)
    cases = [  # (data dir, image column, caption extension): each must be refused with a sentence
        (str(images), "img0.png", ".pth"),
        (str(images), "img0.png", ".png"),
        (str(images), "../victim/keep", ".txt"),
        (str(images), str(sentinel / "victim" / "keep"), ".txt"),
        (str(images), "nothere.png", ".txt"),
    ]
    for folder, image, ext in cases:
        data = inputs_for(config, dep, **{"data dir": folder, "caption extension": ext})
        data = [{"headers": ["image", "caption"], "data": [[image, "pwned"]], "metadata": None}
                if isinstance(v, dict) else v for v in data]
        msg = call(url, dep["id"], data)
        assert refused(msg), (image, ext, msg)
    assert tree_digest(sentinel) == before


def test_export_and_bake_names_stay_inside_and_never_replace_unasked(hostile):
    url, state, sentinel = hostile
    config = config_of(url)
    export, bake = dependency(config, "Export merged LoRA"), dependency(config, "Bake into model")
    (state.outputs / "baked").mkdir(exist_ok=True)
    keep = state.outputs / "baked" / "mine"
    keep.mkdir()
    (keep / "precious.txt").write_text("mine\n")
    before = tree_digest(sentinel)
    outputs_before = {p for p in state.outputs.rglob("*")}
    (state.lora_dir / "link.safetensors").symlink_to(sentinel / "victim" / "link.safetensors")
    (state.outputs / "baked" / "link").symlink_to(sentinel / "victim")
    outputs_before = {p for p in state.outputs.rglob("*")}
    for name in [str(sentinel / "victim"), "..", ".", "", "a/b", "../loras", "/tmp/x", "link"]:
        for dep in (export, bake):
            data = inputs_for(config, dep, Name=name, **{"Adapter 1": str(state.lora_dir / "inside.safetensors"),
                                                    "Base model": state.test_base})
            msg = call(url, dep["id"], data)
            assert refused(msg), (name, msg)
            if name == "link":  # even with replace ticked, a symlink out is never followed
                tick = {"Replace an existing file / bake": True}
                data = inputs_for(config, dep, Name=name, **{"Adapter 1": str(state.lora_dir / "inside.safetensors"),
                                                        "Base model": state.test_base, **tick})
                assert refused(call(url, dep["id"], data))
    # a folder loramix did not bake is never replaced, even with "replace" ticked
    data = inputs_for(config, bake, Name="mine", **{"Adapter 1": str(state.lora_dir / "inside.safetensors"),
                                               "Base model": state.test_base,
                                               "Replace an existing file / bake": True})
    assert "was not baked by loramix" in message_of(call(url, bake["id"], data))
    assert (keep / "precious.txt").read_text() == "mine\n"
    assert tree_digest(sentinel) == before
    assert {p for p in state.outputs.rglob("*")} == outputs_before


def test_named_endpoints_confine_overrides_presets_and_paths(hostile):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, state, sentinel = hostile
    client = Client(url, verbose=False)
    before = tree_digest(sentinel)
    refused = [
        ("demo-cpu", str(sentinel / "images"), "x", [f"output.output_dir={sentinel / 'victim'}"], "output"),
        (str(sentinel / "secret.toml"), str(sentinel / "images"), "x", [], "not one of the presets"),
        ("demo-cpu", str(sentinel / "images"), "..", [], "plain file name"),
        ("demo-cpu", str(sentinel / "images"), "a/b", [], "plain file name"),
    ]
    for preset, data_dir, name, overrides, expected in refused:
        with pytest.raises(AppError, match=expected):
            client.predict(preset, data_dir, name, overrides, api_name="/train")
    with pytest.raises(AppError, match="not a .safetensors file"):
        client.predict(base="", loras=[f"{sentinel / 'secret.toml'}:1"], prompt="x", negative_prompt="", seed=1,
                       steps=2, cfg_scale=1.0, size=0, api_name="/generate")
    assert tree_digest(sentinel) == before


@pytest.mark.parametrize("host, origin", [
    ("rebind.example:{port}", "http://rebind.example:{port}"),  # DNS rebinding: the page's own name
    ("127.0.0.1:{port}", "http://evil.example"),  # a plain cross-origin request
    ("evil.example", None),
])
def test_foreign_host_or_origin_is_refused(hostile, host, origin):
    url, state, sentinel = hostile
    port = url.rstrip("/").rsplit(":", 1)[1]
    headers = {"Host": host.format(port=port)}
    if origin:
        headers["Origin"] = origin.format(port=port)
    body = {"data": [str(sentinel / "images"), ".txt"], "fn_index": 0, "session_hash": "x"}
    response = httpx.post(url + "gradio_api/queue/join", json=body, headers=headers, timeout=30)
    assert response.status_code == 403
    assert httpx.get(url + "config", headers=headers, timeout=30).status_code == 403


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}"])
def test_local_host_and_same_origin_work(hostile, host):
    url, _, _ = hostile
    port = url.rstrip("/").rsplit(":", 1)[1]
    headers = {"Host": host.format(port=port), "Origin": "http://" + host.format(port=port)}
    assert httpx.get(url + "config", headers=headers, timeout=30).status_code == 200


def test_listen_without_auth_refuses_to_start(capsys):
    from webui.app import main

    assert main(["--listen", "--outputs", "/nonexistent-never-created"]) == 2
    assert "--auth user:password" in capsys.readouterr().err
    assert not Path("/nonexistent-never-created").exists()


def test_with_listen_reading_is_limited_to_the_app_folders_and_data_roots(tmp_path):
    from loramix.core.errors import ConfigError

    data = make_folder(tmp_path / "mine", n=1)
    state = AppState.create(tmp_path / "out", listen=True, data_roots=[tmp_path / "mine"])
    assert state.confinement.readable("dataset.data_dir", data) == data.resolve()
    with pytest.raises(ConfigError, match="with --listen loramix reads only inside"):
        state.confinement.readable("dataset.data_dir", tmp_path / "elsewhere")
    local = AppState.create(tmp_path / "out2")  # 127.0.0.1: the local user's own files
    assert local.confinement.readable("dataset.data_dir", tmp_path / "elsewhere")


def test_export_refuses_an_existing_file_unless_replace_is_ticked(hostile):
    url, state, _ = hostile
    config = config_of(url)
    export = dependency(config, "Export merged LoRA")
    common = {"Adapter 1": str(state.lora_dir / "inside.safetensors"), "Base model": state.test_base, "Name": "kept"}
    first = call(url, export["id"], inputs_for(config, export, **common))
    assert "Saved kept.safetensors" in message_of(first), first
    target = state.lora_dir / "kept.safetensors"
    stamp = target.read_bytes()
    again = call(url, export["id"], inputs_for(config, export, **common))
    assert "already exists" in message_of(again) and target.read_bytes() == stamp
    replaced = call(url, export["id"], inputs_for(config, export, **common, **{"Replace an existing file / bake": True}))
    assert "Saved kept.safetensors" in message_of(replaced)


def test_with_listen_a_reg_folder_outside_the_data_roots_is_refused(tmp_path):
    from loramix.core.errors import ConfigError
    from loramix.core.runs import confine_config

    data = make_folder(tmp_path / "mine", n=1)
    make_folder(tmp_path / "elsewhere", n=1)
    state = AppState.create(tmp_path / "out", listen=True, data_roots=[tmp_path / "mine"])
    config = tiny_config("", data, state.outputs / "run", f"dataset.reg_data_dir={tmp_path / 'elsewhere'}")
    with pytest.raises(ConfigError, match="dataset.reg_data_dir.*with --listen loramix reads only inside"):
        confine_config(config, state.confinement)
