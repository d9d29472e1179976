"""Drift check: would the newest packages the registry serves today break loramix? Does not touch the lock.

    python tools/check_latest.py [--keep DIR] [-- PYTEST ARGS]

1. Makes a scratch virtual environment, installs the CPU torch the lock names, then loramix with its test,
   quant, tensorboard and tagger extras *without* the lock, upgrading every dependency to the newest version
   pyproject.toml's ranges allow (what `pip install loramix` would give a user today).
2. Prints one line per package whose version differs from requirements/test.lock.
3. Runs the default test suite there. If it fails, it goes back to the locked set and upgrades one drifted
   package at a time (with --no-deps), re-running only the failed tests, and prints one line per package
   that breaks something: `BROKE transformers 5.23.0 -> 5.25.0: 14 of 14 failed tests fail again`.

The lock keeps the README true whatever this prints; a BROKE line is a reason to add an exclusion to
pyproject.toml (and the failing case to the tests), or to fix loramix, before refreshing the lock with
tools/lock.sh. Exit status: 0 when the newest set passes, 1 when something broke.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "test.lock"
ORACLES = ["open-clip-torch", "ftfy"]  # requirements/oracle.in: installed without their dependencies


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, **kw)


def pins(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if m:
            found[m.group(1).lower().replace("_", "-")] = m.group(2)
    return found


def installed(python: str) -> dict[str, str]:
    return pins(run([python, "-m", "pip", "freeze", "--exclude-editable"]).stdout)


def pip(python: str, *args: str) -> None:
    result = run([python, "-m", "pip", "install", "--quiet", *args])
    if result.returncode:
        sys.exit(f"pip install {' '.join(args)} failed:\n{result.stderr[-2000:]}")


def failed_tests(python: str, pytest_args: list[str]) -> tuple[list[str], str]:
    result = run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *pytest_args])
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, flags=re.M)
    tail = "\n".join(result.stdout.splitlines()[-3:])
    return sorted(set(failed)), tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", help="make the scratch environment here and keep it (default: a temp folder)")
    parser.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest (default: the default suite)")
    args = parser.parse_args()
    scratch = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="loramix-drift-"))
    venv = scratch / "venv"
    run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    locked = pins(LOCK.read_text())
    print(f"scratch environment: {venv}")
    pip(python, "--upgrade", "pip")
    pip(python, f"torch=={locked['torch']}")  # the CPU build; a newer torch is the lock's job to try
    keep_torch = scratch / "torch-constraint.txt"  # the eager upgrade must not swap in another (CUDA) build
    keep_torch.write_text(f"torch=={locked['torch']}\n")
    pip(python, "--upgrade", "--upgrade-strategy", "eager", "-c", str(keep_torch), "-e", ".[test,quant,tensorboard,tagger]")
    pip(python, "--upgrade", "--no-deps", *ORACLES)
    newest = installed(python)
    drifted = {name: (locked.get(name, "-"), version) for name, version in sorted(newest.items())
               if locked.get(name) != version.split("+")[0] and name != "loramix"}  # 2.13.0+cpu is the lock's 2.13.0
    for name, (old, new) in drifted.items():
        print(f"NEWER {name} {old} -> {new}")
    if not drifted:
        print("the registry serves nothing newer than the lock")
    failed, tail = failed_tests(python, args.pytest_args)
    print(f"newest set: {tail.splitlines()[-1] if tail else 'no test output'}")
    if not failed:
        print("OK: the newest set passes the default suite")
        return 0
    print(f"{len(failed)} tests fail with the newest set: {', '.join(failed)}")
    if not drifted:
        print("FAILED with the locked set itself (nothing drifted): a flaky test or this machine, not the registry")
        return 1
    print("finding which package breaks them")
    broke = False
    for name, (old, new) in drifted.items():
        pip(python, "--no-deps", "-r", str(LOCK))
        pip(python, "--no-deps", "-e", ".")
        pip(python, "--no-deps", f"{name}=={new}")
        again, _ = failed_tests(python, failed)
        if again:
            broke = True
            print(f"BROKE {name} {old} -> {new}: {len(again)} of {len(failed)} failed tests fail again "
                  f"(first: {again[0]})")
    if not broke:
        print("BROKE (no single package): the failures need two or more of the newer packages together")
    return 1


if __name__ == "__main__":
    sys.exit(main())
