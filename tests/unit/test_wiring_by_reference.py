"""Widgets are wired by reference, and no module reads another module's private names (issue 26 §2).

The scan reads the source of webui/ and flags
- `locals()` (and `vars()` without an argument): a handler that looks widgets up by a local variable's name
  breaks only when the app starts, the day someone renames the local;
- `thing._name` where `thing` is not `self`/`cls` and `_name` is not defined in the same module (a function,
  class, module name, class field or `self._name` there): another module's private state, read across the
  seam (the way `state._mixer_base` was). Give the owner a public name for it instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("webui",)
ALLOWED = {("os", "_exit"): "the standard library's documented immediate exit (a second Ctrl-C)"}


def _own_names(tree: ast.AST) -> set[str]:
    """Every name this module itself defines: functions, classes, assigned names, class fields, self._x."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return names


def crossings(source: str) -> list[tuple[int, str]]:
    """(line, what) for each `locals()` / argless `vars()` and each private name read from another module."""
    tree = ast.parse(source)
    own = _own_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and (
                node.func.id == "locals" or (node.func.id == "vars" and not node.args)):
            found.append((node.lineno, f"{node.func.id}(): pass the widgets by reference"))
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value.id if isinstance(node.value, ast.Name) else ast.unparse(node.value)
            if owner in ("self", "cls") or node.attr in own or (owner, node.attr) in ALLOWED:
                continue
            found.append((node.lineno, f"{owner}.{node.attr}: a private name of another module"))
    return found


def _sources():
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_locals_lookups_and_no_private_names_read_across_modules(path):
    found = crossings(path.read_text(encoding="utf-8"))
    assert not found, "\n".join(f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in found)


def test_the_scan_sees_both_kinds():
    source = ("def build(state):\n    draft = 1\n    _wire(state, locals())\n"
              "def _wire(state, w):\n    return w['draft'], state._mixer_base, vars()\n")
    assert [line for line, _ in crossings(source)] == [3, 5, 5]
    own = ("class A:\n    def __init__(self):\n        self._x = 1\n"
           "    def same(self, other):\n        return other._x\n")
    assert crossings(own) == []  # a private name of this module's own class: not a crossing
