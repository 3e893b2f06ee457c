"""The shape of the code: rooms a newcomer can find. CONTRIBUTING.md's module map lists every
module of ``shared/`` in the tree's order and nothing else, no module of ``shared/`` outgrows one
room, and no run of six identical lines stands twice in ``shared/``."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / "shared"
MAX_LINES = 400
RUN = 6


def _modules() -> list[str]:
    """Every module of ``shared/``, packages' ``__init__.py`` too, in the tree's order."""
    return sorted(str(p.relative_to(REPO)) for p in SHARED.rglob("*.py"))


def _mapped() -> list[str]:
    """The ``shared/...`` paths CONTRIBUTING.md's module map names (first column), in order."""
    text = (REPO / "CONTRIBUTING.md").read_text()
    section = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(shared/[\w/]+\.py)` \|", section, re.M)


def test_the_module_map_names_every_module_of_shared_and_only_those() -> None:
    """A module added, moved or removed without its line in the map fails here; the map lists
    the tree in its order, so a newcomer reads it as ``ls -R shared`` shows it."""
    assert _modules() == _mapped()


def test_each_package_line_of_the_module_map_is_its_docstring() -> None:
    """A package's line in the map is the first sentence of its ``__init__`` docstring (up to
    the first colon), so the map and the package say the same."""
    text = (REPO / "CONTRIBUTING.md").read_text()
    row = r"^\| `(shared/\w+/__init__\.py)` \| package \| \*\*(.+?)\*\* \|"
    rows = dict(re.findall(row, text, re.M))
    wanted = {}
    for path in sorted(SHARED.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        first = " ".join(doc.split()).split(": ", 1)[0].rstrip(".")
        wanted[str(path.relative_to(REPO))] = first
    # config's line is its settings summary (a "settings" row), written before the packages
    assert {"shared/config/__init__.py"} == set(wanted) - set(rows)
    assert {k: v for k, v in wanted.items() if k in rows} == rows


def test_no_module_of_shared_is_over_400_lines() -> None:
    """A module over ~400 lines usually holds two rooms (STYLE.md)."""
    long = {name: n for name in _modules()
            if (n := len((REPO / name).read_text().splitlines())) > MAX_LINES}
    assert {} == long


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines that count: not blank, not comments, not imports,
    not lone punctuation; white space folded."""
    kept = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = " ".join(raw.split())
        if (not line or line.startswith(("#", "import ", "from ")) or
                not re.search(r"\w", line)):
            continue
        kept.append((number, line))
    return kept


def test_no_run_of_six_identical_lines_stands_twice_in_shared() -> None:
    """Six identical code lines in two places of ``shared/`` are one piece of logic written
    twice: give it one home."""
    seen: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for path in sorted(SHARED.rglob("*.py")):
        lines = _code_lines(path)
        for start in range(len(lines) - RUN + 1):
            window = tuple(text for _, text in lines[start:start + RUN])
            seen[window].append(f"{path.relative_to(REPO)}:{lines[start][0]}")
    repeated = {places[0]: places[1:] for places in seen.values() if len(places) > 1}
    assert {} == repeated


def test_contributing_lists_exactly_the_modules_under_mutation() -> None:
    """CONTRIBUTING's "Which modules decide" names the modules scripts/mutation.toml mutates,
    no more and no fewer, so a deciding module cannot be added without its mutation entry."""
    import tomllib

    text = (REPO / "CONTRIBUTING.md").read_text()
    para = text[text.index("**Which modules decide**"):]
    para = para[:para.index("\n- ")]
    named = set(re.findall(r"`(shared/[\w/]+\.py)`", para))
    config = tomllib.loads((REPO / "scripts" / "mutation.toml").read_text())
    assert {m["path"] for m in config["module"]} == named
