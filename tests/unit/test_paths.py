"""loramix/core/paths.py, the one confinement rule: the write check after links, names, and base models under --listen."""

from __future__ import annotations

import pytest

from loramix.core.errors import ConfigError
from loramix.core.paths import Confinement, is_within, plain_name, unique_name


@pytest.fixture
def roots(tmp_path):
    outputs = tmp_path / "outputs"
    (outputs / "run").mkdir(parents=True)
    (tmp_path / "outputs-evil").mkdir()
    (tmp_path / "outside").mkdir()
    return tmp_path, outputs, Confinement([outputs])


def test_a_sibling_folder_that_shares_the_prefix_is_outside(roots):
    tmp, outputs, confinement = roots
    assert not is_within(tmp / "outputs-evil" / "x", [outputs])
    with pytest.raises(ConfigError, match="writes only inside"):
        confinement.writable("output.output_dir", tmp / "outputs-evil" / "x")
    assert confinement.writable("output.output_dir", outputs / "run" / "x") == outputs / "run" / "x"
    assert is_within(outputs, [outputs])  # the root itself is inside


def test_a_link_at_the_final_path_or_on_the_way_is_followed(roots):
    tmp, outputs, confinement = roots
    (outputs / "file.safetensors").symlink_to(tmp / "outside" / "victim.safetensors")  # dangling: still followed
    (outputs / "folder").symlink_to(tmp / "outside")
    for path in (outputs / "file.safetensors", outputs / "folder", outputs / "folder" / "x.toml"):
        assert not is_within(path, [outputs]), path
        with pytest.raises(ConfigError, match="writes only inside"):
            confinement.writable("Export name", path)
    (outputs / "inner").symlink_to(outputs / "run")  # a link that stays inside is fine
    assert confinement.writable("Export name", outputs / "inner" / "a") == outputs / "run" / "a"


def test_dot_dot_and_relative_paths_are_resolved_first(roots, monkeypatch):
    tmp, outputs, confinement = roots
    for path in (outputs / ".." / "outside", outputs / "run" / ".." / ".." / "outputs-evil", "../outside"):
        monkeypatch.chdir(outputs)
        assert not is_within(path, [outputs]), path
        with pytest.raises(ConfigError):
            confinement.writable("output.output_dir", path)
    monkeypatch.chdir(outputs)
    assert confinement.writable("output.output_dir", "run/new") == outputs / "run" / "new"
    monkeypatch.chdir(tmp / "outside")
    with pytest.raises(ConfigError):
        confinement.writable("output.output_dir", "run/new")  # the same text, now outside
    monkeypatch.chdir(tmp)
    assert is_within("outputs/run/../run", [outputs])
    assert is_within(tmp / "outputs" / "run", ["outputs"])  # a relative root is resolved too


@pytest.mark.parametrize("name", ["\u202eevil", "a\u200bb", "a\u200db", "a\x7f", "a\x85b", "a\u2028b", "a\u2029b",
                                  "\ufeffname", "a\u2066b", "a\u00adb", "a\x1bb", "a\nb", "..", ".", "a/b", "a\\b",
                                  ".hidden", " x", "", "x" * 121])
def test_plain_name_refuses_invisible_characters_and_paths(name):
    with pytest.raises(ConfigError, match="Mix name"):
        plain_name("Mix name", name)


def test_a_refused_reversed_name_is_shown_escaped():
    with pytest.raises(ConfigError) as refused:
        plain_name("Mix name", "\u202egpj.exe")
    assert "\u202e" not in str(refused.value) and "\\u202e" in str(refused.value)


@pytest.mark.parametrize("name", ["my-style", "Mix 2", "été", "日本語", "a_b.c"])
def test_plain_name_keeps_ordinary_names(name):
    assert plain_name("Mix name", name) == name


def test_names_are_unique_ignoring_case():
    assert unique_name("Mix name", "mixA", ["mixA", "other"]) == "mixA"  # the same name: replacing is asked elsewhere
    assert unique_name("Mix name", "new", ["mixA"]) == "new"
    for name in ("MIXA", "mixa", "MixA"):
        with pytest.raises(ConfigError, match="only in case"):
            unique_name("Mix name", name, ["mixA"])
    with pytest.raises(ConfigError, match="only in case"):
        unique_name("Mix name", "STRASSE", ["straße"])  # casefold, not lower


def listening(tmp_path, allow_hub: bool) -> Confinement:
    return Confinement([tmp_path / "outputs"], read_roots=[tmp_path / "data"], allow_hub=allow_hub)


def test_with_listen_an_existing_relative_folder_is_a_path_never_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "someone" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    confinement = listening(tmp_path, allow_hub=True)
    with pytest.raises(ConfigError, match="reads only inside"):
        confinement.readable_base("model.base_model", "someone/model")  # diffusers would read that folder
    assert confinement.readable_base("model.base_model", "nobody/model") == "nobody/model"
    assert confinement.readable_base("model.base_model", "") == ""


def test_with_listen_and_no_hub_flag_a_refusal_does_not_depend_on_existence(tmp_path, monkeypatch):
    (tmp_path / "someone" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    confinement = listening(tmp_path, allow_hub=False)
    messages = []
    for base in ("someone/model", "nobody/model"):
        with pytest.raises(ConfigError, match="--allow-hub-download") as refused:
            confinement.readable_base("model.base_model", base)
        messages.append(str(refused.value).replace(base, "NAME"))
    assert messages[0] == messages[1]
    assert str(tmp_path) not in messages[0]  # a remote client is told roles, not server folders


def test_without_listen_refusals_name_the_folders_and_hub_ids_work(tmp_path):
    local = Confinement([tmp_path / "outputs"])
    assert local.readable_base("model.base_model", "someone/model") == "someone/model"
    with pytest.raises(ConfigError, match=str(tmp_path / "outputs")):
        local.writable("Export name", tmp_path / "elsewhere")
