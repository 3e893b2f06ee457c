"""The imports between modules run one way. No import cycle in ``shared/``, ``lab/`` or ``bench/``
(read from the modules' own imports with ``ast``: imports inside functions count, imports under
``if TYPE_CHECKING:`` do not, as they never run), and each room of ``shared/`` imports only the
rooms it declares: a package in the "May import:" line of its ``__init__`` docstring, a
cross-cutting module at the top in ``TOP`` below. The declared rooms form no cycle either, so
"upward" has one meaning: against the order they declare."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TREES = ("shared", "lab", "bench")

# The cross-cutting modules at the top of shared/ and the rooms each may import (packages
# declare theirs in their __init__ docstring). The package root (shared/__init__.py) only
# re-exports settings and errors; `check` is the post-deploy check's package, beside the CLI.
TOP: dict[str, set[str]] = {
    "errors": set(),
    "log": set(),
    "dn": set(),
    "entra": set(),
    "identity": {"config", "log"},
    "secrets": {"errors", "log", "config", "identity"},
    "telemetry": {"log", "store"},
    "results": {"store"},
    "cli": {"errors", "log", "config", "store", "mail", "roles", "flow", "check", "cli_views"},
    "cli_views": {"errors", "ad", "store", "provisioning", "flow"},
}


def modules(root: Path, trees: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` under the trees."""
    found = {}
    for tree in trees:
        for path in sorted((root / tree).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: at any depth, but not the body of an
    ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        if isinstance(node, ast.If) and _type_checking(node):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that module ``name`` imports. ``from p import x`` is an import of
    ``p.x`` when that is a module, else of ``p``; a module is never counted as importing itself."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _import_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph(root: Path, trees: tuple[str, ...]) -> dict[str, set[str]]:
    known = modules(root, trees)
    return {name: imports(name, path, known) for name, path in known.items()}


def first_cycle(edges: dict[str, set[str]]) -> list[str]:
    """The first cycle a depth-first walk in name order finds, as ``[a, b, ..., a]``; ``[]``
    when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state and (found := walk(node)):
            return found
    return []


def test_no_import_cycle_in_shared_lab_or_bench() -> None:
    """An import cycle anywhere in the three trees fails here, naming its modules in order."""
    cycle = first_cycle(graph(REPO, TREES))
    assert [] == cycle, "import cycle: " + " → ".join(cycle)


def test_the_cycle_test_finds_a_planted_cycle(tmp_path: Path) -> None:
    """Two modules that import each other (one of them inside a function) are found, and a
    cycle closed only under ``if TYPE_CHECKING:`` is not one."""
    pkg = tmp_path / "planted"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from planted import b\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n    return a\n")
    (pkg / "c.py").write_text("from .a import x\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nimport planted.c\n")
    (pkg / "e.py").write_text("import planted.d\nfrom typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    from planted import e\n")
    edges = graph(tmp_path, ("planted",))
    assert ["planted.a", "planted.b", "planted.a"] == first_cycle(edges)
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    from . import a\n")
    assert [] == first_cycle(graph(tmp_path, ("planted",)))


def room(module: str) -> str:
    """``shared.store.ledger`` → ``store``; ``shared.errors`` → ``errors``; the root → ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def declared() -> dict[str, set[str]]:
    """Each room of shared/ and the rooms it may import: packages from the "May import:" line
    of their docstring, the modules at the top from ``TOP``."""
    rooms = dict(TOP)
    for init in sorted((REPO / "shared").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        line = re.search(r"May import: (.*?)\.?$", " ".join(doc.split()))
        assert line, f"{init.relative_to(REPO)}: no 'May import:' line in its docstring"
        rooms[init.parent.name] = set(re.findall(r"`(\w+)`", line.group(1)))
    return rooms


def test_every_room_of_shared_declares_what_it_may_import() -> None:
    """Each package has its line, each module at the top its entry in TOP, and a room names
    only rooms that exist."""
    rooms = declared()
    tops = {p.stem for p in (REPO / "shared").glob("*.py") if p.stem != "__init__"}
    packages = {p.parent.name for p in (REPO / "shared").glob("*/__init__.py")}
    assert tops | packages == set(rooms)
    assert {} == {r: sorted(allowed - set(rooms) - {"check"})
                  for r, allowed in rooms.items() if allowed - set(rooms) - {"check"}}


def test_the_declared_rooms_run_one_way() -> None:
    """No room may import a room that may import it back, however far round: the declared
    order has a bottom (errors, log) and a top (cli), and "upward" means against it."""
    cycle = first_cycle(declared())
    assert [] == cycle, "the declared rooms form a cycle: " + " → ".join(cycle)


@pytest.mark.parametrize("name", sorted(set(TOP) | {p.parent.name for p in
                                                     (REPO / "shared").glob("*/__init__.py")}))
def test_each_room_imports_only_what_it_declares(name: str) -> None:
    """A module importing a room its own room does not declare is an upward (or sideways)
    import: move the piece it needs down instead."""
    allowed = declared()[name] | {name}
    wrong = sorted(f"{module} → {target}"
                   for module, targets in graph(REPO, ("shared",)).items()
                   if room(module) == name
                   for target in targets if room(target) and room(target) not in allowed)
    assert [] == wrong
