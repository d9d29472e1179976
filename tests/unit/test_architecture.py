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


# ---- the rooms inside loramix/ ------------------------------------------------------------------------
# core (config, errors, events, paths, the writer, runs, the job store) is the floor everything stands on;
# adapters (what a LoRA/LoHa/LoKr/DoRA layer is, its delta()) and embedded (the demo model's data and
# builders) stand on core; formats (reading and writing files in the peers' layouts) on those; the mix
# engine on all of them. The CLI, at the top, composes.
ROOMS = {
    "core": {"core"},
    "adapters": {"core", "adapters"},
    "embedded": {"core", "embedded"},
    "formats": {"core", "adapters", "embedded", "formats"},
    "mix": {"core", "adapters", "embedded", "formats", "mix"},
}


def room_of(dotted: str) -> str | None:
    parts = dotted.split(".")  # loramix.mix.mixer, or loramix.mix itself (`from loramix.mix import mixer`)
    return parts[1] if len(parts) > 1 and parts[0] == "loramix" and parts[1] in ROOMS else None


def module_name(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def test_every_runtime_module_lives_in_a_room():
    loose = {p for p in imports_of("loramix") if p.count("/") == 1} - {"loramix/__init__.py", COMPOSITION_ROOT}
    assert not loose, f"modules directly under loramix/ (put each in core, adapters, formats, mix or embedded): {loose}"


def test_each_room_imports_only_the_rooms_below_it():
    for path, names in imports_of("loramix").items():
        room = room_of(module_name(path))
        if room is None:
            continue
        for name in names:
            target = room_of(name)
            if target is None and name == "loramix.cli":
                raise AssertionError(f"{path} imports the command line")
            if target is not None:
                assert target in ROOMS[room], f"{path} ({room}) imports {name} ({target})"


def test_no_import_circle_between_runtime_modules():
    """Lazy imports (inside functions) count too: a circle hidden in a function is still a circle."""
    graph = {}
    known = {module_name(p) for p in imports_of("loramix")}
    for path, names in imports_of("loramix").items():
        graph[module_name(path)] = {n for n in names if n in known and n != module_name(path)}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
