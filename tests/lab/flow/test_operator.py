"""The operator's commands on the lab: the pause stops every change until resume; an
operator's retry provisions a user failed for a reason outside its object once fixed;
``plan --users`` names each waiting user's next action and changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
import structlog
from ldap3 import MODIFY_REPLACE, Connection
from rich.console import Console
from typer.testing import CliRunner

from lab.core import Lab
from lab.seed import seed
from shared import cli, cli_views, flow
from shared.cli import app
from shared.config import Settings
from shared.flow import transitions
from shared.flow.worker import run_once
from shared.store.ledger import State
from shared.store.messages import Step, WorkItem
from shared.store.pause import Half
from shared.store.queues import encode_body
from tests.conftest import LabUser

pytestmark = [pytest.mark.lab, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _logging_as_found() -> Iterator[None]:
    """The CLI run in-process here configures logging at ERROR for the whole process; put
    structlog back afterwards, so later tests' ``capture_logs`` still hear info events."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def svc(settings: Settings) -> Iterator[flow.Service]:
    service = flow.Service.build(settings)
    yield service
    service.pauses.resume(Half.PROVISIONING)
    service.pauses.resume(Half.ROLES)
    service.close()


def _run(svc: flow.Service, limit: float = 180) -> None:
    summary = asyncio.run(run_once(svc, limit=limit))
    assert summary.drained, summary


def _snapshot(svc: flow.Service, sam: str) -> tuple[object, ...]:
    user = svc.directory().user_by_sam(sam)
    rows = [svc.ledger.get(user.guid, step) for step in (Step.MAILBOX, Step.LICENSE)]
    return (user, [r.to_entity() if r else None for r in rows])


def test_pause_stops_every_change_until_resume(svc: flow.Service, lab: Lab,
                                               settings: Settings,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A user added while provisioning is paused: poll and reconcile enqueue nothing, a
    message for them is put back untouched, run --once leaves the queues alone; the user and
    the ledger are exactly as before. After resume one cycle provisions them. The message is
    put back for 5 s here instead of a minute, so that the cycle after resume need not wait
    out the minute."""
    monkeypatch.setattr(transitions, "PAUSED_RECHECK", 5.0)
    svc.pauses.pause(Half.PROVISIONING, by="test")
    (sam,) = seed(lab, 1)
    before = _snapshot(svc, sam)
    user = svc.directory().user_by_sam(sam)
    assert ([], []) == (asyncio.run(flow.poll(svc)), asyncio.run(flow.reconcile(svc)))
    item = WorkItem(user=user.guid, step=Step.MAILBOX)
    handled = asyncio.run(flow.handle(svc, "mailbox", encode_body(item.encode()),
                                      inserted_at=item.enqueued_at))
    summary = asyncio.run(run_once(svc, limit=20))
    assert ("paused", ("mailbox", "license", "leavers")) == (handled.outcome, summary.paused)
    assert before == _snapshot(svc, sam)
    assert svc.queues.depth("mailbox") >= 1  # the message waits, it is not lost
    svc.pauses.resume(Half.PROVISIONING)
    _run(svc)
    after = svc.directory().user_by_sam(sam)
    row = svc.ledger.get(after.guid, Step.LICENSE)
    assert (1, State.DONE) == (after.remote_recipient_type, row.state if row else None)


def test_retry_provisions_a_user_failed_outside_its_object_once_fixed(
        svc: flow.Service, lab: Lab, settings: Settings,
        make_user: Callable[..., LabUser], ad_admin: Connection) -> None:
    """Another object holds the user's routing address: the mailbox step fails for good and
    the next cycles leave the user held (nothing on the user changed). Once the other object
    lets go of the address, ``retry`` queues the user, and the next cycle provisions them."""
    (sam,) = seed(lab, 1)
    address = f"{sam}@{settings.provisioning.routing_domain}"
    blocker = make_user(proxyAddresses=[f"smtp:{address}"])
    _run(svc)
    user = svc.directory().user_by_sam(sam)
    failed = svc.ledger.get(user.guid, Step.MAILBOX)
    assert failed is not None and failed.state is State.FAILED, failed
    _run(svc)  # a fix outside the user object: reconcile alone never retries
    again = svc.ledger.get(user.guid, Step.MAILBOX)
    assert again is not None and (State.FAILED, failed.attempts) == (again.state,
                                                                   again.attempts)
    assert ad_admin.modify(blocker.dn, {"proxyAddresses": [(MODIFY_REPLACE, [])]}), \
        ad_admin.result
    assert cli_views.retry_user(svc, Console(), sam)
    _run(svc)
    done = svc.ledger.get(user.guid, Step.LICENSE)
    assert done is not None and State.DONE == done.state


def test_plan_users_lists_each_waiting_user_and_changes_nothing(
        svc: flow.Service, lab: Lab, settings: Settings) -> None:
    """plan --users prints a line per member with its next action; the ledger, the
    directory and the queues are the same before and after."""
    sams = seed(lab, 2, invalid=1)
    users = [svc.directory().user_by_sam(s) for s in sams]
    before = ([_snapshot(svc, s) for s in sams], len(svc.ledger.rows()),
              svc.queues.depth("mailbox"))
    cli.console.width = 400  # one table row a line
    result = CliRunner().invoke(app, ["--env-file", str(lab.settings_file), "plan", "--users"])
    assert 0 == result.exit_code, result.output
    for user in users:
        line = next(line for line in result.output.splitlines() if user.sam in line)
        assert "enqueue" in line and "new member" in line, line
    assert any("the step will fail" in line for line in result.output.splitlines())
    assert before == ([_snapshot(svc, s) for s in sams], len(svc.ledger.rows()),
                      svc.queues.depth("mailbox"))
