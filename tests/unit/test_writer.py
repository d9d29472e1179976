"""The one writer's rules, one by one, including what an attacker or a killed process would try."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from loramix.core import writer
from loramix.core.writer import DiskFullError, WriteRefused


@pytest.fixture
def roots(tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    return outputs, outside


# ---- confinement at the final path ---------------------------------------------------------------
def test_a_sibling_folder_sharing_the_prefix_is_outside(roots, tmp_path):
    outputs, _ = roots
    evil = tmp_path / "outputs-evil"
    evil.mkdir()
    with pytest.raises(WriteRefused, match="writes only inside"):
        writer.write_text(evil / "x.txt", "x", within=outputs)
    assert not (evil / "x.txt").exists()
    writer.write_text(outputs / "x.txt", "x", within=outputs)
    assert (outputs / "x.txt").read_text() == "x"


def test_a_link_at_the_final_path_is_never_written_through_or_over(roots):
    outputs, outside = roots
    victim = outside / "victim.zip"
    victim.write_text("keep me")
    (outputs / "bake.zip").symlink_to(victim)
    for replace in (False, True):
        with pytest.raises(WriteRefused, match="is a link"):
            writer.write_bytes(outputs / "bake.zip", b"zip", within=outputs, replace=replace)
    assert victim.read_text() == "keep me" and (outputs / "bake.zip").is_symlink()


def test_a_linked_folder_that_leads_outside_is_refused(roots):
    outputs, outside = roots
    (outputs / "samples").symlink_to(outside, target_is_directory=True)
    with pytest.raises(WriteRefused, match="writes only inside"):
        writer.write_text(outputs / "samples" / "s.png", "png", within=outputs)
    with pytest.raises(WriteRefused, match="writes only inside"):
        writer.append_line(outputs / "samples" / "log.jsonl", "{}", within=outputs)
    assert list(outside.iterdir()) == []


def test_dot_dot_and_relative_paths_are_judged_where_they_land(roots, monkeypatch):
    outputs, outside = roots
    with pytest.raises(WriteRefused, match="writes only inside"):
        writer.write_text(outputs / ".." / "outside" / "x.txt", "x", within=outputs)
    monkeypatch.chdir(outputs)
    writer.write_text("relative.txt", "r", within=outputs)  # relative to the working folder, inside
    assert (outputs / "relative.txt").read_text() == "r"
    with pytest.raises(WriteRefused, match="writes only inside"):
        writer.write_text("../outside/x.txt", "x", within=outputs)
    assert list(outside.iterdir()) == []


def test_missing_parent_folders_are_made_only_inside(roots):
    outputs, outside = roots
    (outputs / "up").symlink_to(outside, target_is_directory=True)
    with pytest.raises(WriteRefused):
        writer.write_text(outputs / "up" / "new" / "x.txt", "x", within=outputs)
    assert list(outside.iterdir()) == []
    writer.write_text(outputs / "a" / "b" / "x.txt", "x", within=outputs)
    assert (outputs / "a" / "b" / "x.txt").is_file()


# ---- never replace unasked -----------------------------------------------------------------------
def test_an_existing_file_is_replaced_only_when_asked(roots):
    outputs, _ = roots
    target = outputs / "keepme.toml"
    target.write_text("mine")
    with pytest.raises(WriteRefused, match="does not replace a file unless you ask"):
        writer.write_text(target, "theirs")
    assert target.read_text() == "mine"
    writer.write_text(target, "theirs", replace=True)
    assert target.read_text() == "theirs"


def test_a_file_that_appears_while_writing_is_not_replaced(roots):
    outputs, _ = roots
    target = outputs / "race.txt"
    with pytest.raises(WriteRefused, match="already exists|appeared while"):
        with writer.atomic_path(target) as tmp:
            tmp.write_text("mine")
            target.write_text("someone else's")  # another writer got there first
    assert target.read_text() == "someone else's"
    assert [p.name for p in outputs.iterdir()] == ["race.txt"]  # no temp file left


# ---- atomic, disk full ---------------------------------------------------------------------------
def test_a_failed_write_leaves_the_old_file_and_no_temp(roots):
    outputs, _ = roots
    target = outputs / "model.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with writer.atomic_path(target, replace=True) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and [p.name for p in outputs.iterdir()] == ["model.safetensors"]


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("safetensors: IoError(Os { code: 28, kind: StorageFull })")])
def test_a_full_disk_is_one_sentence_and_keeps_the_old_file(roots, error):
    outputs, _ = roots
    target = outputs / "preset.toml"
    target.write_text("old")
    with pytest.raises(DiskFullError, match=r"The disk is full: saving .*preset\.toml needs .* the previous "
                                            r"preset\.toml is unchanged\. Free some space"):
        with writer.atomic_path(target, replace=True) as tmp:
            tmp.write_text("partial")
            raise error
    assert target.read_text() == "old" and len(list(outputs.iterdir())) == 1


def test_a_full_disk_on_a_log_line_is_the_sentence_too(roots, monkeypatch):
    outputs, _ = roots

    def full(*_a):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(DiskFullError, match="log.jsonl"):
        writer.append_line(outputs / "log.jsonl", "{}", within=outputs)


# ---- folders -------------------------------------------------------------------------------------
def test_claimed_folders_are_unique_even_at_the_same_moment(roots):
    outputs, _ = roots
    got, barrier = [], threading.Barrier(8)

    def claim():
        barrier.wait()
        got.append(writer.claim_folder(outputs / "uploads", "20261205-101500", within=outputs))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({p.name for p in got}) == 8 and all(p.is_dir() for p in got)


def test_a_folder_is_replaced_only_when_asked_and_only_if_ours(roots):
    outputs, _ = roots
    target = outputs / "baked" / "mine"
    with writer.atomic_folder(target, within=outputs) as tmp:
        (tmp / "marker").write_text("ours")
    with pytest.raises(WriteRefused, match="does not replace it unless you ask"):
        with writer.atomic_folder(target, within=outputs) as tmp:
            pass
    theirs = outputs / "baked" / "theirs"
    theirs.mkdir()
    (theirs / "photo.png").write_bytes(b"p")
    with pytest.raises(WriteRefused, match="did not make"):
        with writer.atomic_folder(theirs, replace=True, within=outputs,
                                  replaceable=lambda f: (f / "marker").is_file()) as tmp:
            pass
    assert (theirs / "photo.png").read_bytes() == b"p"
    with pytest.raises(RuntimeError):  # a crash half-way keeps the old folder
        with writer.atomic_folder(target, replace=True, within=outputs) as tmp:
            (tmp / "marker").write_text("new")
            raise RuntimeError("killed")
    assert (target / "marker").read_text() == "ours"
    with writer.atomic_folder(target, replace=True, within=outputs,
                              replaceable=lambda f: (f / "marker").is_file()) as tmp:
        (tmp / "marker").write_text("new")
    assert (target / "marker").read_text() == "new"
    assert sorted(p.name for p in (outputs / "baked").iterdir()) == ["mine", "theirs"]


def test_a_zip_never_follows_links_out_of_its_folder(roots):
    import zipfile

    outputs, outside = roots
    (outside / "secret.txt").write_text("secret")
    folder = outputs / "baked" / "m"
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(b"m")
    (folder / "leak.txt").symlink_to(outside / "secret.txt")
    (folder / "leakdir").symlink_to(outside, target_is_directory=True)
    path = writer.write_zip(outputs / "baked" / "m.zip", folder, within=outputs)
    assert zipfile.ZipFile(path).namelist() == ["model.bin"]


# ---- stale temps -----------------------------------------------------------------------------------
def test_stale_temps_go_and_nothing_else_is_touched(roots):
    outputs, outside = roots
    (outputs / ".gitignore").write_text("*")
    (outputs / ".loramix.lock").write_text("pid 1")
    (outputs / "notes.tmp").write_text("the user's")
    (outputs / ".style.safetensors.k2j3h4g5.tmp").write_bytes(b"half")
    half_bake = outputs / ".mybake.a1b2c3d4.tmp"
    half_bake.mkdir()
    (half_bake / "unet.bin").write_bytes(b"x" * 10)
    outside_temp = outside / ".x.abcdefgh.tmp"
    outside_temp.write_text("outside")
    (outputs / "samples").symlink_to(outside, target_is_directory=True)  # never entered
    (outputs / ".link.abcdefgh.tmp").symlink_to(outside / "keep.txt")
    (outside / "keep.txt").write_text("keep")
    removed = writer.remove_stale_temps(outputs, subfolders=("samples",))
    assert sorted(p.name for p in removed) == [".link.abcdefgh.tmp", ".mybake.a1b2c3d4.tmp",
                                               ".style.safetensors.k2j3h4g5.tmp"]
    assert sorted(p.name for p in outputs.iterdir()) == [".gitignore", ".loramix.lock", "notes.tmp", "samples"]
    assert outside_temp.read_text() == "outside" and (outside / "keep.txt").read_text() == "keep"


def test_the_ledger_records_what_was_written(roots):
    outputs, _ = roots
    path = writer.write_text(outputs / "recorded.txt", "x")
    assert path in writer.ledger() and Path(path).parent == outputs.resolve()


def test_a_file_that_appears_after_the_last_check_is_still_not_replaced(roots, monkeypatch):
    """The window between the writer's last check and its commit: the hard-link commit refuses to replace."""
    outputs, _ = roots
    target = outputs / "race.txt"
    real_check = writer.check_target
    calls = []

    def check_then_lose_the_race(path, **kw):
        final = real_check(path, **kw)
        calls.append(path)
        if len(calls) == 2:  # the commit's own check passed; another process writes the file right after it
            Path(final).write_text("someone else's")
        return final

    monkeypatch.setattr(writer, "check_target", check_then_lose_the_race)
    with pytest.raises(WriteRefused, match="appeared while loramix was writing it"):
        writer.write_text(target, "mine")
    assert target.read_text() == "someone else's" and len(calls) == 2
