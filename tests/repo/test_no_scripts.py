"""No text is ever code: the project sends Exchange cmdlets only through ``add_cmdlet`` +
``add_parameter``. This scans the repository's Python (``shared/``, ``function_app.py``,
``bench/``, ``lab/``) and fails on

- any use of ``add_script`` (pypsrp's and psrpcore's), or pypsrp's ``Client.execute_ps`` /
  ``execute_cmd``, which run strings as scripts;
- a command name or parameter name built from strings (f-string, ``%``, ``+``, ``.format``,
  ``.join``) and handed to ``add_cmdlet`` / ``add_command`` / ``add_parameter``;
- any formatted string that begins like a command line (``f"Enable-RemoteMailbox {sam} ..."``).

The lab endpoint's refusal of scripts reads psrpcore's ``is_script`` flag and needs no
exception here; ``ALLOWED`` lists any file that ever must.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("shared", "bench", "lab", "function_app.py")
ALLOWED: set[str] = set()  # repository-relative paths exempt from the scan, with a reason each

BANNED_CALLS = {"add_script", "execute_ps", "execute_cmd"}
COMMAND_CALLS = {"add_cmdlet", "add_command", "add_parameter"}
COMMAND_LINE = re.compile(r"^\s*[A-Z][a-z]+-[A-Z][A-Za-z]+(\s|$)")


def _built(node: ast.expr) -> bool:
    """Whether ``node`` builds a string at run time."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add)):
        return True
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("format", "join", "format_map"))


def _leading_text(node: ast.expr) -> str | None:
    """The literal text a built string starts with, if it has one."""
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0],
                                                                      ast.Constant):
        return str(node.values[0].value)
    if isinstance(node, ast.BinOp) and isinstance(node.left, ast.Constant):
        return str(node.left.value)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("format", "format_map")
            and isinstance(node.func.value, ast.Constant)):
        return str(node.func.value.value)
    return None


def violations(source: str, name: str = "<source>") -> list[str]:
    """Every banned construct in ``source``, as ``name:line: what``."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Attribute) and node.attr in BANNED_CALLS:
            found.append(f"{name}:{node.lineno}: {node.attr} runs a string as a script")
        elif isinstance(node, ast.Name) and node.id in BANNED_CALLS:
            found.append(f"{name}:{node.lineno}: {node.id} runs a string as a script")
        elif isinstance(node, ast.Constant) and node.value in BANNED_CALLS:
            found.append(f"{name}:{node.lineno}: '{node.value}' named (getattr?)")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in COMMAND_CALLS and node.args and _built(node.args[0])):
            found.append(f"{name}:{node.lineno}: {node.func.attr} given a built string")
        elif isinstance(node, ast.expr) and _built(node):
            text = _leading_text(node)
            if text is not None and COMMAND_LINE.match(text):
                found.append(f"{name}:{node.lineno}: command line built as a string: "
                             f"{text.strip()[:40]!r}")
    return found


def _files() -> list[Path]:
    files = []
    for entry in SCANNED:
        path = REPO / entry
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(sorted(path.rglob("*.py")))
    return [f for f in files if str(f.relative_to(REPO)) not in ALLOWED]


def test_repository_builds_no_scripts():
    """No file the service, the lab or the benchmarks run uses add_script or builds a
    command from strings."""
    files = _files()
    found = [v for f in files for v in violations(f.read_text(), str(f.relative_to(REPO)))]

    assert any(str(f.relative_to(REPO)) == "shared/exchange/client.py" for f in files)
    assert [] == found


@pytest.mark.parametrize("bad", [
    'ps.add_script("Get-Process")',
    'client.execute_ps(script)',
    'getattr(ps, "add_script")(text)',
    'ps.add_cmdlet(f"Enable-RemoteMailbox {sam}")',
    'ps.add_cmdlet("Get-" + noun)',
    'ps.add_parameter("-%s" % name, value)',
    'line = f"Enable-RemoteMailbox {sam} -RemoteRoutingAddress {address}"',
    'line = "Set-RemoteMailbox %s -Alias %s" % (sam, alias)',
    'line = "Get-RemoteMailbox {}".format(sam)',
])
def test_scanner_catches_string_built_commands(bad):
    """The scanner itself finds each banned pattern (so the test above can fail)."""
    assert 1 <= len(violations(bad))


@pytest.mark.parametrize("good", [
    'ps.add_cmdlet("Enable-RemoteMailbox").add_parameter("Identity", f"{guid}")',
    'ps.add_cmdlet(cmdlet)\nfor name, value in parameters:\n    ps.add_parameter(name, value)',
    'fix = f"set it with Set-RemoteMailbox -RemoteRoutingAddress {routing}"',
])
def test_scanner_allows_structured_commands(good):
    """Structured cmdlets, and prose that mentions a cmdlet, pass."""
    assert [] == violations(good)
