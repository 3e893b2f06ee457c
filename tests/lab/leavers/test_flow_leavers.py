"""Leavers through the whole flow on the lab (issue 27): users provisioned by the service, then
put in a leavers group (or disabled), worked by the same queues and handlers as the function
app. The order is pinned by the lab Graph's witness (``unlicensedUserMailboxes``: a licence
removed while the cloud mailbox was still a user mailbox), the guards by what stays untouched,
and exactly-once by the audit and the lab Graph's write counters after a SIGKILL."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from ldap3 import MODIFY_ADD, MODIFY_REPLACE, Connection

from lab.core import REPO, Lab
from shared import flow
from shared.ad.directory import DirectoryUser
from shared.config import LeaversSettings, Settings
from shared.flow.leavers import STATE_CURSOR, leavers_cycle
from shared.flow.worker import run_once
from shared.store.ledger import State
from shared.store.messages import Step

pytestmark = [pytest.mark.lab, pytest.mark.slow]

GB = 1024**3
QUICK = {"SYNC_RETRY_MIN_SECONDS": "2", "SYNC_RETRY_MAX_SECONDS": "4"}


class Cloud:
    def __init__(self, lab: Lab) -> None:
        self.url = lab.settings["LAB_GRAPH_URL"].rstrip("/")
        self.control = lab.settings["LAB_GRAPH_CONTROL_URL"].rstrip("/")
        self.http = httpx.Client(timeout=60, headers={
            "Authorization": f"Bearer {lab.settings['AZURE_STATIC_TOKEN']}"})

    def lab(self, method: str, name: str, body: dict[str, Any] | None = None) -> Any:
        response = self.http.request(method, f"{self.control}/{name}", json=body)
        response.raise_for_status()
        return response.json()

    def licences(self, upn: str) -> list[str]:
        response = self.http.get(f"{self.url}/users/{upn}/licenseDetails")
        response.raise_for_status()
        return sorted(d["skuPartNumber"] for d in response.json()["value"])

    def purpose(self, upn: str) -> str:
        response = self.http.get(f"{self.url}/users/{upn}/mailboxSettings/userPurpose")
        response.raise_for_status()
        return str(response.json().get("value", ""))

    def license_writes(self) -> int:
        stats = self.lab("GET", "stats")
        return sum(int(v.get("writes", 0)) for k, v in stats["paths"].items()
                   if "assignLicense" in k)

    def free_units(self) -> None:
        skus = self.http.get(f"{self.url}/subscribedSkus").json()["value"]
        self.lab("POST", "units", {s["skuPartNumber"]: s["consumedUnits"] + 25 for s in skus})


@pytest.fixture
def cloud(lab: Lab) -> Iterator[Cloud]:
    c = Cloud(lab)
    c.free_units()
    yield c
    c.http.close()


@pytest.fixture
def leavers_group() -> str:
    """The lab's O365_Leavers (its DN), on which the service account may write ``member``."""
    from lab import ad

    return f"CN={ad.LEAVERS_GROUP},{ad.GROUPS_OU}"


def _settings(settings: Settings, group: str, **leavers: Any) -> Settings:
    """The lab's settings with this test's leavers group and knobs, and quick sync waits."""
    values = {"leavers_group": group, **leavers}
    p = settings.provisioning.model_copy(update={"sync_retry_min_seconds": 2.0,
                                                 "sync_retry_max_seconds": 4.0})
    return dataclasses.replace(settings, provisioning=p,
                               leavers=LeaversSettings(_env_file=None, **values))


@pytest.fixture
def service() -> Iterator[Callable[[Settings], flow.Service]]:
    made: list[flow.Service] = []

    def build(s: Settings) -> flow.Service:
        made.append(flow.Service.build(s))
        made[-1].cursors.delete(STATE_CURSOR)  # no earlier test's starts in the rolling 24 h
        return made[-1]

    yield build
    for svc in made:
        svc.close()


def _run(svc: flow.Service, limit: float = 240) -> None:
    summary = asyncio.run(run_once(svc, limit=limit))
    assert summary.drained, summary


def _provisioned(svc: flow.Service, ad_admin: Connection, make_user: Callable[..., Any],
                 cloud: Cloud, n: int, size: int = GB) -> list[DirectoryUser]:
    """``n`` users provisioned by the service itself (remote mailbox, E3 through the licence
    step), each reported by the mailbox usage report at ``size`` bytes without an archive."""
    made = [make_user(extensionAttribute1="E3", c="DE") for _ in range(n)]
    group = svc.directory().group_dn(svc.settings.provisioning.provision_group)
    assert ad_admin.modify(group, {"member": [(MODIFY_ADD, [u.dn for u in made])]}), \
        ad_admin.result
    _run(svc)
    users = [svc.directory().user(u.guid) for u in made]
    for user in users:
        assert ["ENTERPRISEPACK"] == cloud.licences(user.upn or "")
        cloud.lab("POST", "mailboxes/usage", {"user": user.upn, "storageUsedBytes": size,
                                              "hasArchive": False})
    return users


def _join(ad_admin: Connection, group: str, users: list[DirectoryUser]) -> None:
    assert ad_admin.modify(group, {"member": [(MODIFY_ADD, [u.dn for u in users])]}), \
        ad_admin.result


def _disable(ad_admin: Connection, user: DirectoryUser, disabled: bool = True) -> None:
    assert ad_admin.modify(user.dn, {"userAccountControl": [
        (MODIFY_REPLACE, [546 if disabled else 544])]}), ad_admin.result


def _outcomes(svc: flow.Service, user: DirectoryUser, kind: str) -> list[dict[str, Any]]:
    return svc.outcomes.of_user(str(user.guid), kind)


def _conversions(svc: flow.Service, user: DirectoryUser) -> int:
    return sum(1 for e in svc.audit.entries(user=str(user.guid))
               if e["action"] == "mailbox type")


def test_a_leaver_is_converted_then_unlicensed_then_out_of_the_group(
        lab: Lab, settings: Settings, service: Any, ad_admin: Connection,
        make_user: Callable[..., Any], leavers_group: str, cloud: Cloud) -> None:
    """A provisioned user put in the leavers group: the mailbox becomes shared on premises and
    (after the sync) in the cloud, only then is E3 removed, and the user leaves the group; the
    lab never saw a licence removed from a user mailbox (the mail-loss order); the outcome rows
    say so, each once."""
    svc = service(_settings(settings, leavers_group))
    (user,) = _provisioned(svc, ad_admin, make_user, cloud, 1)
    cloud.lab("POST", "stats/reset")
    _join(ad_admin, leavers_group, [user])

    _run(svc)

    after = svc.directory().user(user.guid)
    stats = cloud.lab("GET", "stats")
    assert (user.upn or "").lower() not in {u.lower() for u in stats["unlicensedUserMailboxes"]}
    assert ([], "shared") == (cloud.licences(user.upn or ""), cloud.purpose(user.upn or ""))
    assert leavers_group.lower() not in {g.lower() for g in after.member_of}
    assert State.DONE == svc.ledger.get(user.guid, Step.LEAVER.value).state
    unlicensed = _outcomes(svc, user, "leaver_unlicensed")
    assert [("ENTERPRISEPACK", 1)] == [(r["skus"], r["units"]) for r in unlicensed]
    assert [(user.sam, 0)] == [(r["name"], r["hidden"])
                               for r in _outcomes(svc, user, "leaver_converted")]
    assert 1 == len(_outcomes(svc, user, "leaver_done"))
    assert 1 == _conversions(svc, user)


def test_a_mailbox_over_fifty_gb_keeps_its_licence_and_says_why(
        lab: Lab, settings: Settings, service: Any, ad_admin: Connection,
        make_user: Callable[..., Any], leavers_group: str, cloud: Cloud) -> None:
    """61.2 GB: converted, E3 kept, the reason recorded for the digest, out of the group."""
    svc = service(_settings(settings, leavers_group))
    (user,) = _provisioned(svc, ad_admin, make_user, cloud, 1, size=int(61.2 * GB))
    _join(ad_admin, leavers_group, [user])

    _run(svc)

    assert (["ENTERPRISEPACK"], "shared") == (cloud.licences(user.upn or ""),
                                              cloud.purpose(user.upn or ""))
    kept = _outcomes(svc, user, "leaver_kept")
    assert [("ENTERPRISEPACK", "size 61.2 GB > 50 GB")] == [(r["skus"], r["reason"])
                                                              for r in kept]
    assert [] == _outcomes(svc, user, "leaver_unlicensed")
    assert State.DONE == svc.ledger.get(user.guid, Step.LEAVER.value).state


def test_a_user_reenabled_during_the_grace_is_left_alone(
        lab: Lab, settings: Settings, service: Any, ad_admin: Connection,
        make_user: Callable[..., Any], leavers_group: str, cloud: Cloud) -> None:
    """In the group and disabled, a day's grace: the first cycle waits; enabled again, the
    cycle after the grace still leaves the user alone: no leaver row, still a licensed user
    mailbox; a member never disabled in the same group starts."""
    svc = service(_settings(settings, leavers_group, leaver_grace_days=1))
    back, other = _provisioned(svc, ad_admin, make_user, cloud, 2)
    _join(ad_admin, leavers_group, [back, other])
    _disable(ad_admin, back)
    now = dt.datetime.now(dt.UTC)

    first = asyncio.run(leavers_cycle(svc, now))
    _disable(ad_admin, back, disabled=False)
    later = asyncio.run(leavers_cycle(svc, now + dt.timedelta(days=1, minutes=1)))
    asyncio.run(svc.aclose())

    assert () == first.enqueued
    assert [other.guid] == [item.user for item in later.enqueued]
    verdicts = {d.user: d.verdict.value for d in later.plan.decisions}
    assert "re-enabled" == verdicts[str(back.guid)]
    _run(svc)
    assert None is svc.ledger.get(back.guid, Step.LEAVER.value)
    assert (["ENTERPRISEPACK"], "user") == (cloud.licences(back.upn or ""),
                                            cloud.purpose(back.upn or ""))


def _cli(lab: Lab, group: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "shared.cli", "--env-file", str(lab.settings_file), *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=400,
                          check=False, env={**os.environ, **QUICK, "LEAVERS_GROUP": group,
                                            **env})


def test_a_mass_disable_over_the_limit_is_held_then_approved(
        lab: Lab, settings: Settings, service: Any, ad_admin: Connection,
        make_user: Callable[..., Any], leavers_group: str, cloud: Cloud) -> None:
    """Three provisioned accounts disabled at once, LEAVERS_MAX_PER_DAY=2: the cycle starts
    none, records the held plan; `leavers approve <plan-id>` starts all three, and a run takes
    them through."""
    knobs = {"leavers_disabled_accounts": True, "leaver_disabled_grace_days": 0,
             "leavers_max_per_day": 2}
    svc = service(_settings(settings, leavers_group, **knobs))
    users = _provisioned(svc, ad_admin, make_user, cloud, 3)
    for user in users:
        _disable(ad_admin, user)

    held = asyncio.run(leavers_cycle(svc))
    asyncio.run(svc.aclose())
    assert held.plan.held is not None
    assert ((), 3, 2) == (held.enqueued, held.plan.held.count, held.plan.held.limit)
    assert {str(u.guid) for u in users} <= set(held.plan.held.users)
    assert all(svc.ledger.get(u.guid, Step.LEAVER.value) is None for u in users)
    records = [r for r in svc.outcomes.since("leaver_held", "")
               if r["plan_id"] == held.plan.held.plan_id]
    assert 1 == len(records)

    env = {"LEAVERS_DISABLED_ACCOUNTS": "true", "LEAVER_DISABLED_GRACE_DAYS": "0",
           "LEAVERS_MAX_PER_DAY": "2"}
    approved = _cli(lab, leavers_group, "leavers", "approve", held.plan.held.plan_id, **env)
    assert 0 == approved.returncode, approved.stdout + approved.stderr
    assert f"plan {held.plan.held.plan_id} approved" in approved.stdout
    wrong = _cli(lab, leavers_group, "leavers", "approve", "leavers-000000000000", **env)
    assert 1 == wrong.returncode

    _run(svc)
    for user in users:
        assert [] == cloud.licences(user.upn or ""), user.sam
        assert State.DONE == svc.ledger.get(user.guid, Step.LEAVER.value).state


def test_a_leaver_killed_mid_way_finishes_exactly_once(
        lab: Lab, settings: Settings, service: Any, ad_admin: Connection,
        make_user: Callable[..., Any], leavers_group: str, cloud: Cloud) -> None:
    """`run --once` SIGKILLed once the mailboxes are converted (the sync is slowed so the
    leavers wait for it), then a second run: every leaver shared, unlicensed and out of the
    group, with one conversion each and one assignLicense per leaver."""
    svc = service(_settings(settings, leavers_group))
    users = _provisioned(svc, ad_admin, make_user, cloud, 3)
    cloud.lab("POST", "stats/reset")
    _join(ad_admin, leavers_group, users)
    slow = cloud.lab("GET", "config")
    cloud.lab("POST", "config", {"sync_interval_seconds": 20.0, "sync_delay_seconds": 1.0})
    command = [sys.executable, "-m", "shared.cli", "--env-file", str(lab.settings_file),
               "run", "--once", "--limit", "300"]
    env = {**os.environ, **QUICK, "LEAVERS_GROUP": leavers_group, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = [svc.ledger.get(u.guid, Step.LEAVER.value) for u in users]
            if all(r is not None and r.state is State.WAITING for r in rows):
                break
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        first.wait(10)
        cloud.lab("POST", "config", {k: slow[k] for k in ("sync_interval_seconds",
                                                          "sync_delay_seconds")})
    assert -signal.SIGKILL == first.returncode
    assert all(cloud.licences(u.upn or "") == ["ENTERPRISEPACK"] for u in users), \
        "the kill came too late to interrupt anything"

    _run(svc)

    for user in users:
        assert ([], "shared") == (cloud.licences(user.upn or ""), cloud.purpose(user.upn or ""))
        assert 1 == _conversions(svc, user), user.sam
        assert 1 == len(_outcomes(svc, user, "leaver_unlicensed")), user.sam
        after = svc.directory().user(user.guid)
        assert leavers_group.lower() not in {g.lower() for g in after.member_of}
    assert len(users) == cloud.license_writes()
    witness = {u.lower() for u in cloud.lab("GET", "stats")["unlicensedUserMailboxes"]}
    assert set() == {(u.upn or "").lower() for u in users} & witness
