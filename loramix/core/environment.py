"""Can this Python environment run loramix? One sentence naming the package to install or pin, before a model loads.

The rule is pyproject.toml's own dependency ranges, read back from the installed package's metadata: they
exclude the combinations known to be broken, so the check and the install agree by construction. The CLI and
the app call `check_environment()` first; a missing or out-of-range package is a `LoramixError`.
"""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import Requirement

from loramix.core.errors import LoramixError

LOCK_HINT = "pip install --no-deps -r requirements/app.lock (the set CI tested; see the README)"


def runtime_requirements() -> list[Requirement]:
    """loramix's own runtime dependencies (no extras), as installed; empty when loramix is not installed."""
    try:
        declared = metadata.requires("loramix") or []
    except metadata.PackageNotFoundError:  # run from a source tree that was never pip-installed
        return []
    requirements = [Requirement(line) for line in declared]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]


def environment_problems(requirements: list[Requirement] | None = None) -> list[str]:
    """One sentence per required package that is missing or installed at a version outside its range."""
    problems = []
    for req in runtime_requirements() if requirements is None else requirements:
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{req.name} is not installed (loramix needs {req})")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req.name} {installed} is installed but loramix needs {req}")
    return problems


def check_environment(requirements: list[Requirement] | None = None) -> None:
    """Raise one sentence naming every package to install or pin, or return quietly."""
    problems = environment_problems(requirements)
    if problems:
        raise LoramixError(f"This Python environment cannot run loramix: {'; '.join(problems)}. "
                           f"Install the tested set with `{LOCK_HINT}`, or pin the package named.")
