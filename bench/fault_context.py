"""What a fault scenario of ``python -m bench.faults`` sees (``Context``) and is (``Scenario``),
and the group reads both the scenarios (``bench/fault_scenarios.py``) and the suite
(``bench/faults.py``) make: the piece they share, so that neither imports the other for it."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ldap3 import Connection

from bench.e2e import LabGraph
from lab import ad
from lab.core import Lab


@dataclass
class Context:
    """What a scenario's fault sees: the lab, the seeded users and the running worker."""

    lab: Lab
    graph: LabGraph
    sams: list[str]
    stop: threading.Event = field(default_factory=threading.Event)
    worker: subprocess.Popen[bytes] | None = None
    notes: list[str] = field(default_factory=list)
    kills: int = 0

    def progress(self) -> float:
        """The share of the users out of O365_Provision (their mailbox step done)."""
        members = set(member_sams(self.lab, ad.PROVISION_GROUP))
        return sum(sam not in members for sam in self.sams) / max(len(self.sams), 1)

    def wait_progress(self, share: float, timeout: float = 300.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self.stop.is_set() and time.monotonic() < deadline:
            if self.progress() >= share:
                return True
            time.sleep(0.5)
        return False

    def sleep(self, seconds: float) -> None:
        self.stop.wait(seconds)


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    fault: Callable[[Context], None] = lambda ctx: None  # runs in a thread during the run
    before: Callable[[Context], None] = lambda ctx: None  # before the first worker starts
    after: Callable[[Context], None] = lambda ctx: None  # undo knobs, whatever happened
    worker_prefix: tuple[str, ...] = ()  # e.g. faketime
    deadline: float = 600.0


# -- reading the lab -----------------------------------------------------------------------------
def member_dns(conn: Connection, group: str) -> list[str]:
    """The DNs of a group's members, in one read."""
    conn.search(f"CN={group},{ad.GROUPS_OU}", "(objectClass=group)", "BASE",
                attributes=["member"])
    return list(conn.response[0]["attributes"].get("member") or [])


def member_sams(lab: Lab, group: str) -> list[str]:
    """The sAMAccountNames of a group's members."""
    conn = ad.admin_connection(lab, timeout=30)
    try:
        found = []
        for dn in member_dns(conn, group):
            conn.search(dn, "(objectClass=user)", "BASE", attributes=["sAMAccountName"])
            if conn.response:
                found.append(str(conn.response[0]["attributes"]["sAMAccountName"]))
        return found
    finally:
        conn.unbind()
