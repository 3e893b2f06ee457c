"""Shared fixtures. The lab starts once per test session (unless it is already up, in which
case it is left running afterwards) and every process it started is stopped at the end."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings
from ldap3 import Connection
from ldap3.utils.dn import escape_rdn

from lab.__main__ import down, up
from lab.core import REPO, Lab
from shared.config import Settings, load_settings

# Property tests (hypothesis): no deadline, since the machine's cores are shared and a slow
# example is not a failure. Under ``scripts/mutation`` (HYPOTHESIS_PROFILE=mutation) the
# examples are derandomized, so a mutant is killed or not the same way on every run, and no
# example database is written into the mutants' copy of the project.
hypothesis_settings.register_profile("default", deadline=None)
hypothesis_settings.register_profile("mutation", deadline=None, derandomize=True, database=None,
                                     print_blob=False)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The running lab; started here if it was not running, and stopped after the session."""
    root = Path(os.environ.get("LAB_DIR", REPO / ".lab"))
    lab = Lab.open(root)
    was_up = bool(lab.peers) and all(lab.alive(name) for name in lab.peers)
    up(lab)
    quick_sync(lab)
    yield lab
    if not was_up:
        down(lab)


# The lab runs Entra Connect's 30-minute schedule; tests that are not about the schedule want
# the old quick mirroring, and say so here: a cycle every second, each running one second.
QUICK_SYNC = {"sync_interval_seconds": 1.0, "sync_delay_seconds": 1.0}
# ... and the licence step's first look a second after the mailbox step (the lab's 75 s is
# for its 30-s cycles). Set in the environment, so that the CLI and app the tests start see it.
os.environ["SYNC_WAIT_SECONDS"] = "1"


def quick_sync(lab: Lab) -> None:
    """Set the lab Graph's sync engine to quick cycles (``QUICK_SYNC``)."""
    import httpx

    response = httpx.post(lab.settings["LAB_GRAPH_CONTROL_URL"].rstrip("/") + "/config",
                          json=QUICK_SYNC, timeout=30,
                          headers={"Authorization": f"Bearer {lab.settings['AZURE_STATIC_TOKEN']}"})
    response.raise_for_status()


@pytest.fixture(scope="session")
def settings(lab: Lab) -> Settings:
    """The service's settings as the lab writes them."""
    return load_settings(lab.settings_file)


# -- Active Directory -------------------------------------------------------------------


@dataclass(frozen=True)
class LabUser:
    """A user a test created: its DN, objectGUID and sAMAccountName."""

    dn: str
    guid: uuid.UUID
    sam: str


@pytest.fixture(scope="session")
def ad_admin(lab: Lab) -> Iterator[Connection]:
    """An LDAPS connection to the lab's DC bound as the domain administrator (ldap3)."""
    from lab import ad

    conn = ad.admin_connection(lab, timeout=60)
    yield conn
    conn.unbind()


@pytest.fixture
def ad_ou(lab: Lab, ad_admin: Connection) -> Iterator[str]:
    """A fresh OU for this test's users and groups, deleted with its content afterwards."""
    dn = f"OU=test-{uuid.uuid4().hex[:10]},{lab.settings['LAB_AD_BASE_DN']}"
    assert ad_admin.add(dn, "organizationalUnit"), ad_admin.result
    yield dn
    # Tree delete (1.2.840.113556.1.4.805): the OU and everything under it, in one request.
    ad_admin.delete(dn, controls=[("1.2.840.113556.1.4.805", True, None)])


def _guid(conn: Connection, dn: str) -> uuid.UUID:
    assert conn.search(dn, "(objectClass=*)", "BASE", attributes=["objectGUID"]), conn.result
    return uuid.UUID(bytes_le=conn.response[0]["raw_attributes"]["objectGUID"][0])


@pytest.fixture
def make_user(ad_admin: Connection, ad_ou: str) -> Callable[..., LabUser]:
    """Factory: ``make_user(cn=None, sam=None, **attributes)`` creates an enabled user in the
    test's OU (a unique name unless given; the cn is RFC 4514-escaped here)."""

    def make(cn: str | None = None, sam: str | None = None, **attributes: Any) -> LabUser:
        sam = sam or f"u{uuid.uuid4().hex[:12]}"
        dn = f"CN={escape_rdn(cn or sam)},{ad_ou}"
        values = {"sAMAccountName": sam, "userAccountControl": 544,
                  "userPrincipalName": f"{sam}@o365lab.example", **attributes}
        assert ad_admin.add(dn, ["top", "person", "organizationalPerson", "user"], values), \
            ad_admin.result
        return LabUser(dn, _guid(ad_admin, dn), sam)

    return make


@pytest.fixture
def make_group(ad_admin: Connection, ad_ou: str) -> Callable[..., LabUser]:
    """Factory: ``make_group(name=None, members=[dn, ...])`` creates a global security group
    in the test's OU, named ``name`` (its cn) with a unique sAMAccountName (``.sam``)."""

    def make(name: str | None = None, members: list[str] | None = None) -> LabUser:
        sam = f"g{uuid.uuid4().hex[:12]}"
        dn = f"CN={escape_rdn(name or sam)},{ad_ou}"
        values: dict[str, Any] = {"sAMAccountName": sam}
        if members:
            values["member"] = members
        assert ad_admin.add(dn, ["top", "group"], values), ad_admin.result
        return LabUser(dn, _guid(ad_admin, dn), sam)

    return make
