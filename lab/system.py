"""What the lab takes from the machine, in one table: each program and data file, the Debian
package that provides it, and the line that installs it.

Every program the lab runs from the system is looked up with ``tool()``; every system file it
reads is in ``DATA_FILES``. ``python -m lab doctor`` checks them all, and
``tests/repo/test_setup.py`` checks (with ``dpkg -S``) that each belongs to a package
``scripts/debian-packages.txt`` names, so a package installed by hand cannot hide a missing
install step again.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .core import REPO, LabError

PACKAGE_LIST = REPO / "scripts" / "debian-packages.txt"
# The interpreter Debian's python3-samba is built for; lab/schema/prepare.py runs in it.
SYSTEM_PYTHON = "/usr/bin/python3"
SAMBA_SETUP = Path("/usr/share/samba/setup")


@dataclass(frozen=True)
class Tool:
    """A program the lab runs, and the Debian package that provides it."""

    name: str
    package: str
    purpose: str


TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool("samba", "samba", "the lab's domain controller"),
        Tool("samba-tool", "samba-common-bin", "provisions the lab's domain"),
        Tool("ldbadd", "ldb-tools", "adds Exchange's schema attributes offline"),
        Tool("ldbmodify", "ldb-tools", "adds Exchange's attributes to mailRecipient offline"),
        Tool("ip", "iproute2", "gives the DC a loopback address of its own"),
    )
}

# Files ``samba-tool domain provision`` reads; absent when samba-ad-provision (only a
# Recommends of samba) is missing, and then provisioning fails after a long wait.
DATA_FILES: dict[Path, str] = {
    SAMBA_SETUP / "provision.ldif": "samba-ad-provision",
    SAMBA_SETUP / "ad-schema" / "AD_DS_Attributes__Windows_Server_2012_R2.ldf":
        "samba-ad-provision",
    SAMBA_SETUP / "ad-schema" / "AD_DS_Classes__Windows_Server_2012_R2.ldf": "samba-ad-provision",
    Path(SYSTEM_PYTHON): "python3-minimal",
}


def named_packages() -> list[str]:
    """The Debian packages ``scripts/setup`` installs (``scripts/debian-packages.txt``)."""
    names = []
    for line in PACKAGE_LIST.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            names.append(words[0])
    return names


def install_line(*packages: str) -> str:
    """The one line that installs ``packages`` on this machine."""
    sudo = "" if os.geteuid() == 0 else "sudo "
    return f"{sudo}apt-get install --no-install-recommends {' '.join(packages)}"


def find(name: str) -> str | None:
    """The path of a system program, also where the sbin folders are not on PATH (non-root)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/sbin"):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def tool(name: str) -> str:
    """The path of ``name`` from ``TOOLS``; a LabError with the fix when it is missing."""
    spec = TOOLS[name]
    path = find(name)
    if path is None:
        raise LabError(f"{name} ({spec.purpose}) is missing; fix: {install_line(spec.package)}")
    return path


def azurite() -> Path:
    """Azurite as ``scripts/setup`` installs it: into the project's node_modules/."""
    return REPO / "node_modules" / ".bin" / "azurite"
