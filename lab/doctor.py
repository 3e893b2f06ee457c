"""``python -m lab doctor``: is this machine ready for the lab? One line per prerequisite, and
for each missing one the line that fixes it.

``scripts/setup`` ends by running it; ``python -m lab up`` runs the same checks first and stops
with the doctor's lines instead of a peer's log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from . import system
from .core import REPO

SETUP = "bash scripts/setup"
MIN_PYTHON = (3, 11)
MIN_NODE = 18
MIN_FREE_BYTES = 1 << 30  # the AD template, its snapshots and logs stay well under this
DC_PORTS = (389, 636)  # Samba's LDAP ports are fixed: the DC needs an address with both free


@dataclass(frozen=True)
class Check:
    """One prerequisite: what was found, and the fix when it is missing."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        if self.ok:
            return f"ok    {self.name}: {self.detail}"
        return f"FAIL  {self.name}: {self.detail}; fix: {self.fix}"


def _python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    ok = sys.version_info >= MIN_PYTHON
    return Check("python", ok, f"{sys.executable} is {version}",
                 "install Python 3.11, then: PYTHON=python3.11 bash scripts/setup")


def _python_packages() -> Check:
    """The pinned packages of requirements*.txt are installed, at their pins."""
    wrong = []
    for line in _requirements(REPO / "requirements-dev.txt"):
        name, _, pinned = line.partition("==")
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{name} missing")
            continue
        if pinned and found != pinned:
            wrong.append(f"{name} {found} (pinned {pinned})")
    in_venv = Path(sys.prefix).resolve() == (REPO / ".venv").resolve()
    where = "the project's .venv" if in_venv else f"{sys.prefix} (not the project's .venv)"
    if wrong:
        return Check("python packages", False, f"in {where}: {', '.join(wrong[:3])}", SETUP)
    return Check("python packages", True, f"all pinned packages in {where}")


def _requirements(path: Path) -> Iterable[str]:
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            yield from _requirements(path.parent / line[3:].strip())
        elif line:
            yield line


def _tools() -> list[Check]:
    checks = []
    for tool in system.TOOLS.values():
        path = system.find(tool.name)
        checks.append(Check(
            tool.name, path is not None, path or f"not found ({tool.purpose})",
            system.install_line(tool.package),
        ))
    return checks


def _data_files() -> Check:
    missing = {path: pkg for path, pkg in system.DATA_FILES.items() if not path.is_file()}
    if missing:
        first = next(iter(missing))
        return Check("samba provisioning data", False, f"{first} not found",
                     system.install_line(*sorted(set(missing.values()))))
    return Check("samba provisioning data", True, f"{system.SAMBA_SETUP} complete")


def _samba_python() -> Check:
    """Samba's bindings import in the interpreter they are built for."""
    if not Path(system.SYSTEM_PYTHON).is_file():
        return Check("samba python bindings", False, f"{system.SYSTEM_PYTHON} not found",
                     system.install_line("python3-minimal", "python3-samba"))
    done = subprocess.run([system.SYSTEM_PYTHON, "-c", "import samba.samdb"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["import failed"])[-1]
        return Check("samba python bindings", False, last, system.install_line("python3-samba"))
    return Check("samba python bindings", True, f"import samba.samdb in {system.SYSTEM_PYTHON}")


def _node() -> Check:
    node = shutil.which("node")
    if node is None:
        return Check("node", False, "not found", system.install_line("nodejs", "npm"))
    version = subprocess.run([node, "--version"], capture_output=True, text=True,
                             check=False).stdout.strip()
    match = re.match(r"v(\d+)", version)
    ok = bool(match and int(match.group(1)) >= MIN_NODE)
    return Check("node", ok, f"{node} {version}",
                 f"install Node.js {MIN_NODE} or newer ({system.install_line('nodejs', 'npm')})")


def _azurite() -> Check:
    pinned = json.loads((REPO / "package.json").read_text())["dependencies"]["azurite"]
    manifest = REPO / "node_modules" / "azurite" / "package.json"
    if not system.azurite().exists() or not manifest.exists():
        return Check("azurite", False, "not in node_modules/", SETUP)
    found = json.loads(manifest.read_text()).get("version", "?")
    return Check("azurite", found == pinned, f"{found} in node_modules/ (pinned {pinned})", SETUP)


def _privilege() -> Check:
    """Samba's DC binds ports 389 and 636 and needs an address of its own on lo: root."""
    if os.geteuid() == 0:
        return Check("root", True, "the DC can bind 389/636 and add 127.0.0.N to lo")
    return Check("root", False, "the lab's Samba DC binds ports 389/636 and adds a loopback "
                 "address, which needs root", "run the lab as root (sudo bash scripts/demo)")


def _dc_address() -> str | None:
    """The first 127.0.0.N (N >= 2) whose DC ports are free."""
    for n in range(2, 255):
        host = f"127.0.0.{n}"
        if all(_port_free(host, port) for port in DC_PORTS):
            return host
    return None


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except PermissionError:
            return True  # not root: not taken, and the root check says what to do
        except OSError:
            return False
    return True


def _ports() -> Check:
    """Peers bind free ports on 127.0.0.1; the DC needs 389 and 636 on a 127.0.0.N."""
    if not _port_free("127.0.0.1", 0):
        return Check("loopback ports", False, "cannot bind 127.0.0.1",
                     "bring up the loopback interface: ip link set lo up")
    host = _dc_address()
    if host is None:
        return Check("loopback ports", False, "ports 389/636 are taken on every 127.0.0.N",
                     "stop what holds them (often Samba's own service): "
                     "systemctl disable --now samba-ad-dc")
    return Check("loopback ports", True, f"{host} has ports 389 and 636 free for the DC")


def _disk(lab_dir: Path) -> Check:
    where = lab_dir if lab_dir.exists() else lab_dir.parent
    free = shutil.disk_usage(where).free
    return Check("disk space", free >= MIN_FREE_BYTES, f"{free / (1 << 30):.1f} GiB free at "
                 f"{where}", f"free at least 1 GiB under {where}")


def checks(lab_dir: Path, *, skip_slow: bool = False) -> list[Check]:
    """Every prerequisite, in the order a fix is best made."""
    steps: list[Callable[[], Check | list[Check]]] = [
        _python, _python_packages, _tools, _data_files, _node, _azurite, _privilege, _ports,
        lambda: _disk(lab_dir),
    ]
    if not skip_slow:
        steps.insert(4, _samba_python)
    found: list[Check] = []
    for step in steps:
        result = step()
        found.extend(result if isinstance(result, list) else [result])
    return found


def failures(lab_dir: Path) -> list[Check]:
    """What ``lab up`` refuses to start without (the quick checks only)."""
    return [check for check in checks(lab_dir, skip_slow=True) if not check.ok]
