"""``python -m lab up|status|down`` on a lab of its own: the peers run, and nothing is left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.__main__ import down
from lab.core import REPO, Lab, pid_alive

pytestmark = pytest.mark.lab


def _lab(args: list[str], lab_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LAB_DIR": str(lab_dir), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "lab", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300, check=False)


def _lo_addresses() -> set[str]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", "lo"], capture_output=True,
                         text=True, check=True).stdout
    return {line.split()[3].split("/")[0] for line in out.splitlines()}


def _processes_under(root: Path) -> list[int]:
    """Processes whose command line names a file of this lab (samba -s <lab>/ad/smb.conf...)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(root) in cmdline and int(proc.name) != os.getpid():
            found.append(int(proc.name))
    return found


@pytest.mark.slow
def test_up_status_down_leaves_no_process(lab: Lab, tmp_path: Path) -> None:
    """``up`` starts every peer, ``status`` shows them running (exit 0), ``down`` stops them
    all: no pid of theirs, and no process naming the lab folder, survives; the loopback
    address the lab added for its DC is gone from ``lo``."""
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    # The session lab's cache holds the provisioned directory: this lab starts warm.
    (lab_dir / "cache").symlink_to(lab.root / "cache", target_is_directory=True)
    up = _lab(["up"], lab_dir)
    started = Lab.open(lab_dir)
    pids = [pid for peer in started.peers.values() for pid in peer.pids]
    added = list(started.aliases)
    present_while_up = [host for host in added if host in _lo_addresses()]
    try:
        status = _lab(["status"], lab_dir)
    finally:
        down = _lab(["down"], lab_dir)
    assert 0 == up.returncode, up.stdout + up.stderr
    assert (0, True) == (status.returncode, "running" in status.stdout)
    assert {"ad"} <= set(started.peers)
    assert 0 == down.returncode
    assert [] == [pid for pid in pids if pid_alive(pid)]
    assert [] == _processes_under(lab_dir)
    # An address the lab added was there while it ran, and is gone after down (another lab's
    # leftover alias may have served instead, in which case nothing was added).
    assert added == present_while_up, up.stdout
    assert [] == [host for host in added if host in _lo_addresses()]
    assert all(host in down.stdout for host in added)


def test_down_removes_the_loopback_address_the_lab_added(tmp_path: Path) -> None:
    """The DC's address, added to lo when the lab claimed it, is recorded in the lab's state and
    removed by ``down``; an address the lab found there already is left alone."""
    from lab import ad

    lab = Lab.open(tmp_path / "lab")
    host = next(f"127.0.0.{n}" for n in range(250, 200, -1)
                if f"127.0.0.{n}" not in _lo_addresses())
    assert host == ad._claim_address(lab, prefer=host)
    recorded = Lab.open(tmp_path / "lab").aliases
    present = host in _lo_addresses()
    removed = down(Lab.open(tmp_path / "lab"))
    assert ([host], True, [host]) == (recorded, present, removed)
    assert host not in _lo_addresses()
    assert [] == Lab.open(tmp_path / "lab").aliases
