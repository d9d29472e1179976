"""At run time, every file the app's handlers and the CLI leave on disk came through the one writer.

Each flow runs for real (tiny model, real files); afterwards every file that appeared or changed under the
folders it writes to must be one the writer recorded (`loramix.core.writer.ledger()`), or sit inside a folder the
writer committed whole (a bake). A handler that writes around the writer — a zip made in place, a preset
written with `open` — fails here even where the static scan (tests/unit/test_write_sites.py) cannot see it,
for example inside a library call. The same flows pin the rules the issue named: no replacing unasked.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loramix import cli
from loramix.core import writer
from loramix.core.errors import LoramixError
from tests.conftest import make_folder, random_lora
from webui import mix_tab, train_tab
from webui.jobs import JobManager
from webui.state import AppState


def snapshot(*roots: Path) -> dict[Path, tuple]:
    files = {}
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file() and not path.is_symlink():
                st = path.stat()
                files[path.resolve()] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return files


def unrecorded(before: dict, *roots: Path) -> list[str]:
    """Files new or changed since `before` that the writer did not write."""
    ledger = writer.ledger()
    folders = [p for p in ledger if p.is_dir()]
    after = snapshot(*roots)
    changed = [p for p, sig in after.items() if before.get(p) != sig]
    return sorted(str(p) for p in changed
                  if p not in ledger and not any(p.is_relative_to(f) for f in folders)
                  and p.name not in ("loramix.db", "loramix.db-wal", "loramix.db-shm"))


@pytest.fixture
def app(tmp_path):
    class NoTraining:
        def __call__(self, *a):  # the handlers under audit here do not train
            raise AssertionError("no training expected")

    return AppState.create(tmp_path / "outputs", jobs=JobManager(tmp_path / "outputs" / "loramix.db", NoTraining()))


def test_the_mix_tab_writes_only_through_the_writer_and_replaces_only_when_asked(app, tmp_path, tiny_model):
    a = random_lora(tiny_model, app.lora_dir / "a.safetensors", 1)
    v = mix_tab.MixValues(str(tiny_model), [(str(a), 0.8, True, "")], "red stripes", "", 1, 2, 3.0, 0, "ddim")
    before = snapshot(app.outputs)
    mix_tab.save_mix(app, v, "duo")
    with pytest.raises(LoramixError, match="already exists"):
        mix_tab.save_mix(app, v, "duo")
    mix_tab.save_mix(app, v, "duo", replace=True)
    mix_tab.export_blend(app, v, "merged", 0, "fp32", False)
    with pytest.raises(LoramixError, match="already exists"):
        mix_tab.export_blend(app, v, "merged", 0, "fp32", False)
    archive, _ = mix_tab.bake_blend(app, v, "baked", False)
    with pytest.raises(LoramixError, match="already exists"):
        mix_tab.bake_blend(app, v, "baked", False)
    mix_tab.bake_blend(app, v, "baked", True)
    assert Path(archive).is_file() and unrecorded(before, app.outputs) == []


def test_a_bake_never_writes_its_zip_through_a_link(app, tmp_path, tiny_model):
    a = random_lora(tiny_model, app.lora_dir / "a.safetensors", 1)
    v = mix_tab.MixValues(str(tiny_model), [(str(a), 0.8, True, "")], "red stripes", "", 1, 2, 3.0, 0, "ddim")
    victim = tmp_path / "victim.zip"
    victim.write_bytes(b"outside file")
    (app.outputs / "baked" / "evil.zip").symlink_to(victim)
    for replace in (False, True):
        with pytest.raises(LoramixError, match="is a link"):
            mix_tab.bake_blend(app, v, "evil", replace)
    assert victim.read_bytes() == b"outside file" and not (app.outputs / "baked" / "evil").exists()


def test_the_train_tab_writes_only_through_the_writer(app, tmp_path):
    from tests.webui.test_handlers import form_and_values

    data = make_folder(tmp_path / "data", n=2)
    form, values = form_and_values({"dataset.data_dir": str(data)})
    before = snapshot(app.outputs, data)
    train_tab.save_as_preset(app, form, "mine", values)
    message, _ = train_tab.save_as_preset(app, form, "mine", values)
    assert "already exists" in message
    assert "ships with loramix" in train_tab.save_as_preset(app, form, "Demo-CPU", values)[0]
    train_tab.save_as_preset(app, form, "mine", values, replace=True)
    _, table, _ = train_tab.show_images(app, str(data), ".txt")
    table.iloc[0, 1] = "edited"
    assert train_tab.write_captions(app, table, str(data), ".txt") == "Saved 2 captions."
    upload = tmp_path / "gradio-temp" / "new0.png"
    make_folder(upload.parent, n=1, prefix="new")
    first = app.import_files([str(upload)], (".png",))
    second = app.import_files([str(upload)], (".png",))  # the same second: a folder of its own
    assert first[0].parent != second[0].parent
    assert unrecorded(before, app.outputs, data) == []


def test_the_cli_writes_only_through_the_writer_and_merge_needs_replace(tmp_path, tiny_model, image_folder):
    out = tmp_path / "run"
    before = snapshot(tmp_path)
    assert cli.main(["train", "--data", str(image_folder), "--output", str(out), "--base", str(tiny_model),
                     "--name", "style", "--quiet", "--set", "train.max_steps=2", "--set", "dataset.resolution=64",
                     "--set", "sample.sample_every_n_steps=1", "--set", "sample.steps=1"]) == 0
    lora = out / "style.safetensors"
    merged = tmp_path / "merged.safetensors"
    assert cli.main(["merge", "--lora", f"{lora}:0.5", "--out", str(merged)]) == 0
    assert cli.main(["merge", "--lora", f"{lora}:0.7", "--out", str(merged)]) == 2  # exists: refused
    assert cli.main(["merge", "--lora", f"{lora}:0.7", "--out", str(merged), "--replace"]) == 0
    png = tmp_path / "mix.png"
    assert cli.main(["mix", "--base", str(tiny_model), "--lora", f"{lora}:1", "--prompt", "red", "--steps", "1",
                     "--out", str(png)]) == 0
    assert unrecorded(before, tmp_path) == []
