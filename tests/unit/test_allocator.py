"""loramix.core.allocator: glibc set to reuse large freed blocks in every thread, the person's own MALLOC_ settings
respected, and the CLI setting it before anything else."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from loramix.core import allocator


class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, option, value):
        self.calls.append((option, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("trim", pad))
        return 1


@pytest.fixture
def libc(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(allocator, "_glibc", lambda: fake)
    return fake


def test_the_settings_are_one_arena_a_1_gib_mmap_threshold_and_2_gib_kept(libc):
    assert allocator.tune_allocator({}) is True
    assert libc.calls == [(-8, 1), (-3, 1 << 30), (-1, 2 << 30)]
    allocator.give_back_memory()
    assert libc.calls[-1] == ("trim", 0)


@pytest.mark.parametrize("environ", [{"MALLOC_ARENA_MAX": "4"}, {"MALLOC_MMAP_THRESHOLD_": "65536"},
                                     {"LORAMIX_ALLOCATOR": "default"}])
def test_a_persons_own_allocator_settings_win(libc, environ):
    assert allocator.tune_allocator(environ) is False
    assert libc.calls == []


def test_not_glibc_changes_nothing(monkeypatch):
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert allocator.tune_allocator({}) is False
    allocator.give_back_memory()  # a no-op, not an error


FAULTS = textwrap.dedent("""
    import resource, threading
    from loramix.core.allocator import tune_allocator
    tune_allocator()
    def work():
        for i in range(6):
            block = bytearray(96 << 20)  # a preview's large temporary, made in a worker thread as the app does
            del block
            if i == 0:
                work.start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        work.faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - work.start
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    print(work.faults)
""")


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc's allocator only")
def test_a_large_temporary_made_again_in_a_worker_thread_is_not_faulted_in_again():
    def faults(**env):
        import os

        out = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, check=True,
                             env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env)
        return int(out.stdout.split()[-1])

    assert faults(LORAMIX_ALLOCATOR="default") > 5 * 20_000  # 96 MiB mapped and faulted in again, 5 times
    assert faults() < 1_000


def test_the_cli_sets_the_allocator_before_anything_else(monkeypatch):
    import loramix.cli as cli

    order = []
    monkeypatch.setattr(cli, "tune_allocator", lambda: order.append("allocator"))
    monkeypatch.setattr(cli, "check_environment", lambda: order.append("environment"))
    cli.main(["tags", "/nonexistent-folder", "--dry-run"])
    assert order[:2] == ["allocator", "environment"]
