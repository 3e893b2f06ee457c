"""A fresh machine: every system file the lab uses comes from a Debian package that
``scripts/setup`` names, and ``python -m lab doctor`` names what is missing and its fix."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from lab import doctor, system
from lab.core import REPO


def _owner(path: str) -> str:
    """The Debian package that ships ``path`` (``dpkg -S``); merged-/usr aware."""
    real = os.path.realpath(path)
    candidates = [path, real]
    for name in (path, real):
        if name.startswith("/usr/"):
            candidates.append(name.removeprefix("/usr"))  # dpkg may know /sbin/ip, not /usr/sbin
    for candidate in dict.fromkeys(candidates):
        done = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True,
                              check=False)
        if done.returncode == 0:
            return done.stdout.split(":", 1)[0].split(",")[0].strip()
    return f"no package ships {path}"


def test_every_program_the_lab_runs_is_in_a_package_setup_names() -> None:
    """Each program of ``lab.system.TOOLS`` is installed, and ``dpkg -S`` names as its owner
    the package the table says, which ``scripts/debian-packages.txt`` lists."""
    named = set(system.named_packages())
    found = {}
    for tool in system.TOOLS.values():
        path = system.find(tool.name)
        assert path is not None, f"{tool.name} is not installed; run bash scripts/setup"
        found[tool.name] = _owner(path)
    expected = {tool.name: tool.package for tool in system.TOOLS.values()}
    assert expected == found
    assert set() == set(found.values()) - named


def test_every_system_file_the_lab_reads_is_in_a_package_setup_names() -> None:
    """The Samba provisioning data (the files a missing samba-ad-provision took away) and the
    interpreter of Samba's bindings belong to packages setup installs."""
    named = set(system.named_packages())
    owners = {str(path): _owner(str(path)) for path in system.DATA_FILES}
    assert {str(path): pkg for path, pkg in system.DATA_FILES.items()} == owners
    assert set() == set(owners.values()) - named


def test_samba_bindings_come_from_a_package_setup_names() -> None:
    """lab/schema/prepare.py imports ``samba`` in Debian's python3: python3-samba ships it."""
    done = subprocess.run([system.SYSTEM_PYTHON, "-c", "import samba; print(samba.__file__)"],
                          capture_output=True, text=True, check=True)
    assert "python3-samba" == _owner(done.stdout.strip())
    assert "python3-samba" in system.named_packages()


def _argv_heads(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, program) of every subprocess/spawn call whose argv starts with a literal name."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name not in {"run", "Popen", "spawn", "check_output", "call", "_run"}:
            continue
        argv = node.args[1] if name == "spawn" and len(node.args) > 1 else node.args[0]
        if isinstance(argv, ast.List) and argv.elts:
            head = argv.elts[0]
            if isinstance(head, ast.Constant) and isinstance(head.value, str):
                found.append((node.lineno, head.value))
    return found


def test_the_lab_runs_system_programs_only_through_the_table() -> None:
    """A program named by a bare string in an argv would escape the package check above: every
    one goes through ``lab.system.tool`` (or is this interpreter)."""
    offenders = []
    for path in sorted((REPO / "lab").rglob("*.py")):
        if path.name in {"system.py", "doctor.py"}:
            continue  # the table itself, and the doctor that checks it
        for line, program in _argv_heads(ast.parse(path.read_text())):
            offenders.append(f"{path.relative_to(REPO)}:{line} runs {program!r}")
    assert [] == offenders


def test_setup_installs_python_packages_into_the_project_venv_only() -> None:
    """``scripts/setup`` installs with the venv's pip, never the system interpreter's."""
    text = (REPO / "scripts" / "setup").read_text()
    pip_lines = [line.strip() for line in text.splitlines()
                 if "pip install" in line and not line.strip().startswith("#")]
    assert [".venv/bin/python -m pip install -q --disable-pip-version-check "
            "-r requirements-dev.txt"] == pip_lines
    assert "npm install -g" not in text


def _doctor(env_path: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": env_path, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "lab", "doctor"], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=60, check=False)


def test_doctor_passes_on_this_machine() -> None:
    """Setup has run (CI runs it first): every check passes, and the doctor says so."""
    done = _doctor(os.environ["PATH"])
    count = len(doctor.checks(REPO / ".lab"))
    assert (0, f"all {count} checks passed") == (done.returncode,
                                                 done.stdout.strip().splitlines()[-1])


def test_doctor_names_a_missing_tool_and_the_line_that_fixes_it(tmp_path: Path) -> None:
    """With ldbmodify gone from the PATH (and nothing else), the doctor fails on that one check
    and prints the apt-get line of the package that ships it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("node", "samba-tool", "ldbadd", "ip", "samba"):
        found = system.find(name)
        assert found is not None
        (bin_dir / name).symlink_to(found)
    done = _doctor(str(bin_dir))
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    sudo = "" if os.geteuid() == 0 else "sudo "
    assert 1 == done.returncode
    assert [f"FAIL  ldbmodify: not found (adds Exchange's attributes to mailRecipient "
            f"offline); fix: {sudo}apt-get install --no-install-recommends ldb-tools"] == failed


def test_lab_up_stops_with_the_doctors_line(tmp_path: Path) -> None:
    """``lab up`` with a prerequisite missing starts nothing and prints the doctor's line, not a
    peer's log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = {**os.environ, "PATH": str(bin_dir), "LAB_DIR": str(tmp_path / "lab")}
    done = subprocess.run([sys.executable, "-m", "lab", "up"], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=60, check=False)
    assert 1 == done.returncode
    assert "lab up failed: nothing was started" in done.stdout
    assert "FAIL  samba-tool: not found" in done.stdout
    assert not (tmp_path / "lab" / "state.json").exists()
