"""The import rule: webui -> trainers -> loramix, and webui -> loramix; only webui imports gradio;
nothing imports webui and nothing imports upward.

The one documented exception: `loramix/cli.py` is the composition root; it starts the trainer and the
web app with imports *inside* the functions that start them (lazily), never at module level. Nothing
imports `loramix.cli` back, so there is no cycle.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPOSITION_ROOT = "loramix/cli.py"


def imports_of(package: str, top_level_only: bool = False) -> dict[str, set[str]]:
    """Module -> the dotted names it imports (all imports, or only those at module level)."""
    found = {}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = tree.body if top_level_only else ast.walk(tree)
        names = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def roots(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def test_engine_never_imports_gradio_or_webui_except_the_cli_lazily():
    for package in ("loramix", "trainers"):
        for path, names in imports_of(package).items():
            assert "gradio" not in roots(names), f"{path} imports gradio"
            if path != COMPOSITION_ROOT:
                assert "webui" not in roots(names), f"{path} imports webui"
    top = roots(imports_of("loramix", top_level_only=True)[COMPOSITION_ROOT])
    assert not top & {"webui", "trainers"}, "loramix/cli.py may import trainers/webui only inside functions"


def test_only_webui_imports_gradio():
    for package in ("loramix", "trainers", "tests/unit"):
        for path, names in imports_of(package).items():
            assert "gradio" not in roots(names), f"{path} imports gradio"


def test_runtime_package_does_not_import_trainers():
    for path, names in imports_of("loramix").items():
        if path != COMPOSITION_ROOT:
            assert "trainers" not in roots(names), f"{path} imports trainers"


def test_nothing_imports_the_command_line():
    for package in ("loramix", "trainers", "webui"):
        for path, names in imports_of(package).items():
            if path != COMPOSITION_ROOT:
                assert "loramix.cli" not in names, f"{path} imports loramix.cli (move what it needs lower down)"
