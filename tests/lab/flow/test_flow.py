"""The whole provisioning flow on the lab: seeded users end provisioned, invalid ones stay
where they were with an error mail, the digest arrives once, duplicate and broken messages
change nothing, and a run killed with SIGKILL converges on a second run."""

from __future__ import annotations

import asyncio
import email
import email.policy
import html
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

from lab.core import REPO, Lab
from lab.seed import seed
from shared import flow
from shared.ad.directory import DirectoryUser
from shared.config import Settings
from shared.flow.worker import run_once
from shared.store.ledger import State
from shared.store.messages import Step, WorkItem
from shared.store.queues import encode_body

pytestmark = [pytest.mark.lab, pytest.mark.slow]


@pytest.fixture
def svc(settings: Settings) -> Iterator[flow.Service]:
    service = flow.Service.build(settings)
    yield service
    service.close()


def _mails(lab: Lab, since: float) -> list[EmailMessage]:
    found = []
    for path in sorted(Path(lab.settings["LAB_MAIL_DIR"]).glob("*.eml")):
        if path.stat().st_mtime >= since:
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            found.append(message)
    return found


def _html(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


def _graph(lab: Lab, path: str) -> httpx.Response:
    token = lab.settings["AZURE_STATIC_TOKEN"]
    url = lab.settings["LAB_GRAPH_URL"].rstrip("/") + "/" + path
    return httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _licences(lab: Lab, upn: str) -> list[str]:
    response = _graph(lab, f"users/{upn}/licenseDetails")
    response.raise_for_status()
    return sorted(item["skuPartNumber"] for item in response.json()["value"])


def _groups(user: DirectoryUser) -> set[str]:
    return {dn.split(",", 1)[0].removeprefix("CN=") for dn in user.member_of}


def _users(svc: flow.Service, sams: list[str]) -> list[DirectoryUser]:
    directory = svc.directory()
    return [directory.user_by_sam(sam) for sam in sams]


# What the seed's three faults (lab/seed.py) must say in the error mail: the rules' reason,
# and the rules' fix followed by the old script's request to the helpdesk.
_OLD_FIX = ("(check that the required license type has been entered and that the Country/region "
            "has been set)")
_LICENCE_FIX = f"set extensionAttribute1 to one of E3, Exchange 2 {_OLD_FIX}"


def _expected_error(user: DirectoryUser) -> tuple[str, str]:
    if user.country == "XX":
        return ("the country 'XX' in c is not an ISO 3166-1 alpha-2 country code",
                f"set c to the user's two-letter country, e.g. DE or US {_OLD_FIX}")
    if user.license_name is None:
        return "the licence attribute extensionAttribute1 is empty", _LICENCE_FIX
    return (f"the licence '{user.license_name}' in extensionAttribute1 is not one of E3, "
            "Exchange 2", _LICENCE_FIX)


def _licence_writes(svc: flow.Service, user: DirectoryUser) -> int:
    entries = svc.audit.entries(user=str(user.guid))
    return sum(1 for entry in entries if entry["action"] == "licenses")


def _run(svc: flow.Service, limit: float = 240) -> None:
    summary = asyncio.run(run_once(svc, limit=limit))
    assert summary.drained, summary


def test_fifty_users_end_to_end(lab: Lab, svc: flow.Service, settings: Settings) -> None:
    """50 seeded users, 5 invalid: the valid ones are remote mailboxes, licensed and in
    neither group; the invalid ones stay in O365_Provision without a remote mailbox, with an
    error mail naming what is wrong and the fix;
    one digest lists the provisioned users with Graph's unit counts and the invalid ones among
    the users waiting, with their step; nobody is licensed twice."""
    started = time.time()
    sams = seed(lab, 50, invalid=5)
    _run(svc)
    p = settings.provisioning
    users = _users(svc, sams)
    valid = [u for u in users if u.license_name in p.license_map and u.country != "XX"]
    invalid = [u for u in users if u not in valid]
    assert (len(valid), len(invalid)) == (45, 5)

    for user in valid:
        assert user.remote_recipient_type == 1, user.sam
        assert f"smtp:{user.sam}@{p.routing_domain}" in user.proxy_addresses
        assert _groups(user) & {p.provision_group, p.license_group} == set(), user.sam
        assert _licences(lab, user.upn or "") == [p.license_map[user.license_name or ""]]
        assert _licence_writes(svc, user) == 1, user.sam

    mails = _mails(lab, started)
    errors = {m["Subject"]: m for m in mails if "Error" in str(m["Subject"])}
    for user in invalid:
        # One rule for both steps: an invalid user never got a remote mailbox (country XX
        # used to pass the mailbox step and fail at the licence step).
        assert ({p.provision_group}, None) == (_groups(user), user.remote_recipient_type), \
            user.sam
        subject = f"Office 365 Provisioning Error: {user.sam}"
        assert subject in errors, user.sam
        body = _html(errors[subject])
        reason = body.split('<p class="error">', 1)[1].split("</p>", 1)[0]
        fix = body.split("<strong>How to fix it:</strong> ", 1)[1].split("</p>", 1)[0]
        assert _expected_error(user) == (html.unescape(reason), html.unescape(fix)), user.sam

    digests = [m for m in mails if m["Subject"] == "Office 365 Provisioning Report"]
    assert len(digests) == 1
    digest = _html(digests[0])
    provisioned, waiting = digest.split("Users waiting:", 1)
    for user in valid:
        assert user.sam in provisioned
    for user in invalid:
        # Not provisioned: listed under the users waiting, with the step and the reason.
        assert user.sam not in provisioned
        assert f"<tr><td>{user.sam}</td><td>mailbox</td><td class=\"error\">failed</td>" \
            in waiting, user.sam
    skus = {s["skuPartNumber"]: s for s in _graph(lab, "subscribedSkus").json()["value"]}
    for part in ("ENTERPRISEPACK", "EXCHANGEENTERPRISE"):
        consumed = skus[part]["consumedUnits"]
        remaining = skus[part]["prepaidUnits"]["enabled"] - consumed
        assert f">{consumed}<" in digest and f">{remaining}<" in digest


def test_duplicate_delivery_makes_no_second_change(
    lab: Lab, svc: flow.Service, settings: Settings
) -> None:
    """Every message of a finished user delivered again is dropped by the ledger: no write."""
    (sam,) = seed(lab, 1)
    user = _users(svc, [sam])[0]
    first = WorkItem(user=user.guid, step=Step.MAILBOX)
    asyncio.run(flow.enqueue(svc, first))
    _run(svc)
    writes_before = len(svc.audit.entries(user=str(user.guid)))
    assert writes_before >= 3  # mailbox, group moves, usageLocation and licence
    svc.queues.send_item(first)  # the same message again, as at-least-once delivery may
    svc.queues.send_item(WorkItem(user=user.guid, step=Step.LICENSE,
                                  correlation_id=first.correlation_id,
                                  enqueued_at=first.enqueued_at))
    _run(svc)
    assert len(svc.audit.entries(user=str(user.guid))) == writes_before
    row = svc.ledger.get(user.guid, Step.LICENSE)
    assert row is not None and row.state is State.DONE


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{not json", "not JSON"),
        ('{"v": 1}' + " " * 5000, "oversized"),
        ('{"v": 99, "user": "' + str(uuid.UUID(int=7)) + '", "step": "mailbox", '
         '"cid": "abcdefgh", "at": "2026-01-01T00:00:00+00:00"}', "schema version 99"),
    ],
)
def test_a_broken_message_is_poisoned_with_an_alert_and_no_side_effect(
    lab: Lab, svc: flow.Service, text: str, why: str
) -> None:
    """Malformed, oversized and unknown-version messages: parked, recorded, alerted, and
    nothing written to AD, Exchange or Graph; the handler never raises."""
    started = time.time()
    audit_before = len(svc.audit.entries())
    ledger_before = len(svc.ledger.rows())
    svc.queues.send("mailbox", text)
    _run(svc, limit=60)
    assert len(svc.audit.entries()) == audit_before
    assert len(svc.ledger.rows()) == ledger_before
    poisoned = [r for r in svc.outcomes.since("poison", "") if r.get("message") == text[:1024]]
    assert len(poisoned) == 1 and why in poisoned[0]["reason"]
    alerts = [m for m in _mails(lab, started) if "could not be processed" in str(m["Subject"])]
    assert len(alerts) == 1


def test_a_killed_run_converges(lab: Lab, svc: flow.Service, settings: Settings) -> None:
    """SIGKILL in the middle of `run --once`, then a second run: the same final state as an
    uninterrupted run, and no user licensed twice."""
    sams = seed(lab, 24)
    guids = {u.guid for u in _users(svc, sams)}
    command = [sys.executable, "-m", "shared.cli", "--env-file", str(lab.settings_file),
               "run", "--once", "--limit", "300"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = svc.ledger.rows(Step.MAILBOX)
            if sum(r.user in guids and r.state is State.DONE for r in rows) >= 5:
                break
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        first.wait(10)
    assert first.returncode == -signal.SIGKILL
    users = _users(svc, sams)
    assert any(_groups(u) & {settings.provisioning.provision_group,
                             settings.provisioning.license_group} for u in users), \
        "the kill came too late to interrupt anything"

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=400, check=False)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    p = settings.provisioning
    for user in _users(svc, sams):
        assert _groups(user) & {p.provision_group, p.license_group} == set(), (
            user.sam, svc.ledger.get(user.guid, Step.MAILBOX),
            svc.ledger.get(user.guid, Step.LICENSE), second.stdout[-1500:])
        assert user.remote_recipient_type == 1
        assert _licences(lab, user.upn or "") == [p.license_map[user.license_name or ""]]
        assert _licence_writes(svc, user) == 1, user.sam
    stats = httpx.get(lab.settings["LAB_GRAPH_CONTROL_URL"].rstrip("/") + "/stats",
                      headers={"Authorization": f"Bearer {lab.settings['AZURE_STATIC_TOKEN']}"},
                      timeout=30)
    assert stats.json()["cloudMailboxes"] == []  # no second, cloud mailbox for anyone


def test_a_poisoned_message_is_recorded_and_can_be_redriven(
    lab: Lab, svc: flow.Service, settings: Settings
) -> None:
    """A message the host parked on mailbox-poison is recorded with an alert and changes
    nothing, not even the user's ledger row (a poison queue is as writable as its queue);
    `redrive mailbox` enqueues it again and the user is then provisioned."""
    started = time.time()
    (sam,) = seed(lab, 1)
    user = _users(svc, [sam])[0]
    item = WorkItem(user=user.guid, step=Step.MAILBOX)
    asyncio.run(flow.enqueue(svc, item))
    before = svc.ledger.get(user.guid, Step.MAILBOX)
    handled = asyncio.run(flow.poisoned(svc, "mailbox", encode_body(item.encode()),
                                        dequeue_count=5))
    after = svc.ledger.get(user.guid, Step.MAILBOX)
    assert ("poison", str(user.guid)) == (handled.outcome, handled.user)
    assert before is not None and after is not None
    assert (before.state, before.etag) == (after.state, after.etag)
    assert _users(svc, [sam])[0].remote_recipient_type is None  # nothing was done
    alerts = [m for m in _mails(lab, started) if "could not be processed" in str(m["Subject"])]
    assert 1 == len(alerts)

    moved, _ = asyncio.run(flow.redrive(svc, "mailbox"))
    assert moved >= 1
    _run(svc)
    done = _users(svc, [sam])[0]
    assert done.remote_recipient_type == 1
    assert _groups(done) & {settings.provisioning.provision_group,
                            settings.provisioning.license_group} == set()
    assert asyncio.run(flow.redrive(svc, "mailbox")) == (0, 0)  # each record is re-driven once
