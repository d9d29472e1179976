"""Every write site goes through the one writer (STYLE rule 17), the way test_architecture guards the layering.

The scan reads the source of loramix/, trainers/ and webui/ and flags each call that creates, replaces or
removes a file or folder — `open(…, "w")`, `os.open`, `Path.write_text/write_bytes/mkdir/rename/unlink`,
`shutil.*`, `save_file`, `save_pretrained`, `image.save`, `tempfile.mkstemp/mkdtemp` — unless its target is a
temp path the writer handed out (`with atomic_path(…) as tmp`, `with atomic_folder(…) as tmp`) or a scratch
folder of `tempfile.TemporaryDirectory()`. A new handler that writes around the writer fails here, naming the
line. `loramix/core/writer.py` is the door itself; the exemptions below say why each is not an app write.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("loramix", "trainers", "webui")
DOOR = "loramix/core/writer.py"
EXEMPT = {
    "loramix/embedded/tiny.py": "builds the tiny test/demo model folders from code (tests, tools/); the app never calls it",
    "loramix/core/job_store.py": "SQLite writes its own file atomically (journal); the path is checked by the writer",
}
WRITE_METHODS = {"write_text", "write_bytes", "mkdir", "rename", "unlink", "rmdir", "touch", "symlink_to",
                 "hardlink_to", "save", "save_file", "save_pretrained", "savefig"}
BARE_WRITES = {"save_file", "copyfile", "rmtree", "mkstemp", "mkdtemp", "make_archive"}  # from-imported names
WRITE_FLAGS = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"}
MODULE_WRITES = {("os", "open"), ("os", "replace"), ("os", "rename"), ("os", "remove"), ("os", "unlink"),
                 ("os", "rmdir"), ("os", "makedirs"), ("os", "mkdir"), ("os", "link"), ("os", "symlink"),
                 ("shutil", "rmtree"), ("shutil", "copyfile"), ("shutil", "copy"), ("shutil", "copy2"),
                 ("shutil", "copytree"), ("shutil", "move"), ("shutil", "make_archive"),
                 ("tempfile", "mkstemp"), ("tempfile", "mkdtemp"), ("tempfile", "NamedTemporaryFile"),
                 ("torch", "save"), ("zipfile", "ZipFile")}
WRITER_CONTEXTS = {"atomic_path", "atomic_folder", "TemporaryDirectory"}


def _call_name(func: ast.expr) -> tuple[str | None, str]:
    if isinstance(func, ast.Attribute):
        owner = func.value.id if isinstance(func.value, ast.Name) else None
        return owner, func.attr
    if isinstance(func, ast.Name):
        return None, func.id
    return None, ""


def _opens_for_writing(call: ast.Call) -> bool:
    mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
    if mode is None:
        return False
    if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
        return any(c in mode.value for c in "wax+")
    return True  # a mode we cannot read: treat as a write


class WriteSites(ast.NodeVisitor):
    def __init__(self):
        self.issued: set[str] = set()  # names bound to a writer temp path in the current scope
        self.found: list[tuple[int, str]] = []

    def visit_With(self, node: ast.With) -> None:
        bound = []
        for item in node.items:
            call = item.context_expr
            if isinstance(call, ast.Call) and _call_name(call.func)[1] in WRITER_CONTEXTS and \
                    isinstance(item.optional_vars, ast.Name):
                bound.append(item.optional_vars.id)
        self.issued.update(bound)
        self.generic_visit(node)
        self.issued.difference_update(bound)

    def _targets_issued(self, call: ast.Call) -> bool:
        exprs = [call.func.value] if isinstance(call.func, ast.Attribute) else []
        exprs += list(call.args)
        names = {n.id for e in exprs for n in ast.walk(e) if isinstance(n, ast.Name)}
        return bool(names & self.issued)

    def visit_Call(self, node: ast.Call) -> None:
        owner, name = _call_name(node.func)
        write = (owner, name) in MODULE_WRITES or (owner is None and name == "open" and _opens_for_writing(node))
        write = write or (owner is None and name in BARE_WRITES)
        if (owner, name) == ("os", "open"):  # a read-only open (checking a lock) is not a write
            flags = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
            write = bool(flags & WRITE_FLAGS) or len(node.args) < 2
        if isinstance(node.func, ast.Attribute) and owner not in ("os", "shutil", "tempfile", "torch", "zipfile"):
            write = write or name in WRITE_METHODS or (name == "open" and _opens_for_writing(node))
            # Path.replace(target) takes one argument; str.replace takes two
            write = write or (name == "replace" and len(node.args) == 1 and not node.keywords)
        if write and not self._targets_issued(node):
            self.found.append((node.lineno, ast.unparse(node)[:90]))
        self.generic_visit(node)


def write_sites() -> dict[str, list[tuple[int, str]]]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == DOOR or rel in EXEMPT:
                continue
            visitor = WriteSites()
            visitor.visit(ast.parse(path.read_text(encoding="utf-8")))
            if visitor.found:
                found[rel] = visitor.found
    return found


def test_no_file_is_written_around_the_writer():
    found = write_sites()
    lines = [f"{rel}:{line}: {code}" for rel, sites in found.items() for line, code in sites]
    assert not lines, "write sites that go around loramix.core.writer:\n" + "\n".join(lines)


@pytest.mark.parametrize("source, caught", [
    ("open(p, 'w').write('x')", True),
    ("open(p, mode='ab')", True),
    ("open(p)", False),
    ("Path(p).write_text('x')", True),
    ("image.save(path, format='PNG')", True),
    ("with atomic_path(p) as tmp:\n    image.save(tmp, format='PNG')", False),
    ("with atomic_path(p) as tmp:\n    pass\nimage.save(tmp)", True),
    ("save_file(tensors, str(target))", True),
    ("with writer.atomic_folder(p) as tmp:\n    pipe.save_pretrained(tmp / 'x')", False),
    ("shutil.make_archive(str(folder), 'zip', folder)", True),
    ("os.replace(a, b)", True),
    ("os.open(p, os.O_WRONLY | os.O_CREAT)", True),
    ("os.open(p, os.O_RDONLY | os.O_NOFOLLOW)", False),
    ("name.replace('a', 'b')", False),
    ("folder.replace(other)", True),
    ("folder.mkdir(parents=True)", True),
])
def test_the_scan_sees_a_write_around_the_writer(source, caught):
    visitor = WriteSites()
    visitor.visit(ast.parse(source))
    assert bool(visitor.found) == caught, visitor.found
