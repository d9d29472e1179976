"""The import rule: webui -> trainers -> loramix; only webui imports gradio; nothing imports webui."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imports_of(package: str) -> dict[str, set[str]]:
    found = {}
    for path in (ROOT / package).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_engine_never_imports_gradio_or_webui():
    for package in ("loramix", "trainers"):
        for path, names in imports_of(package).items():
            assert "gradio" not in names, f"{path} imports gradio"
            if path != "loramix/cli.py":  # the command line is the composition root: `loramix ui` starts the app
                assert "webui" not in names, f"{path} imports webui"


def test_only_webui_imports_gradio():
    for package in ("loramix", "trainers", "tests/unit"):
        for path, names in imports_of(package).items():
            assert "gradio" not in names, f"{path} imports gradio"


def test_runtime_package_does_not_import_trainers():
    for path, names in imports_of("loramix").items():
        if path != "loramix/cli.py":  # the CLI is the one entry point that drives the trainer
            assert "trainers" not in names, f"{path} imports trainers"
