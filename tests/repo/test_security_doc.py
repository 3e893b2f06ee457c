"""docs/security.md's threat → control → test table names only tests that exist, and a row
for every kind of input the service trusts least."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGE = (REPO / "docs" / "security.md").read_text()


def _named_tests() -> list[tuple[str, str]]:
    found = []
    for row in re.findall(r"^\|.*\|$", PAGE, re.M):
        current = ""
        for match in re.finditer(r"`(?:(test_\w+\.py)::)?(test_\w+)`", row):
            current = match.group(1) or current
            found.append((current, match.group(2)))
    return found


def _test_file(name: str) -> Path:
    """The test file of that name: the page names files by name, wherever under tests/ they are
    (test file names are unique across tests/, as the layout test checks)."""
    (found,) = (REPO / "tests").rglob(name)
    return found


def test_every_test_the_security_page_names_exists() -> None:
    """A test renamed or removed fails here instead of leaving the table wrong."""
    named = _named_tests()
    missing = [f"{file}::{name}" for file, name in named
               if f"def {name}(" not in _test_file(file).read_text()]
    assert len(named) >= 40
    assert [] == missing


def test_the_security_page_covers_each_untrusted_input() -> None:
    """AD attributes, queue messages, role groups and mail each have a section."""
    sections = re.findall(r"^## (.+)$", PAGE, re.M)
    assert ["Injection and escaping (held up)", "AD attributes (input rules)",
            "Queue messages (anyone with queue access can write one)",
            "Role groups and guards", "Mail and logs", "Azure Relay keys"] == sections
