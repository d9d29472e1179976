"""The broken-environment sentence: a package outside pyproject's range, or missing, is named before any model loads."""

from __future__ import annotations

from importlib import metadata

import pytest
from packaging.requirements import Requirement

from loramix import cli
from loramix.core.environment import check_environment, environment_problems, runtime_requirements
from loramix.core.errors import LoramixError


def test_the_installed_set_passes_and_the_rule_is_pyprojects_own():
    names = {r.name for r in runtime_requirements()}
    assert {"torch", "transformers", "peft", "diffusers", "gradio"} <= names
    assert environment_problems() == []
    check_environment()


def test_an_out_of_range_package_is_named_with_its_version_and_the_lock(monkeypatch):
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "5.25.0" if name == "transformers" else real(name))
    with pytest.raises(LoramixError, match=r"transformers 5\.25\.0 is installed but loramix needs "
                                           r"transformers!=5\.25\.\*,>=4\.45.*requirements/app\.lock"):
        check_environment([Requirement("transformers>=4.45,!=5.25.*"), Requirement("peft>=0.13")])


def test_a_missing_package_is_named(monkeypatch):
    with pytest.raises(LoramixError, match=r"no-such-package-xyz is not installed"):
        check_environment([Requirement("no-such-package-xyz>=1")])


def test_the_cli_says_it_in_one_line_before_anything_loads(monkeypatch, capsys):
    monkeypatch.setattr("loramix.core.environment.runtime_requirements",
                        lambda: [Requirement("peft>=999")])
    assert cli.main(["train", "--data", "nowhere"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: This Python environment cannot run loramix: peft ") and "\n" not in err
