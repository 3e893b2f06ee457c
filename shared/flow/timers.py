"""What the timer functions do: poll the provisioning group, reconcile both groups with the
ledger, mail the digest, plan the role sync (and, from ``run --once``, the leavers cycle of
``leavers``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared import telemetry
from shared.errors import ProvisioningError
from shared.log import get_logger
from shared.store.ledger import LedgerRow, State, now
from shared.store.messages import Step, WorkItem
from shared.store.pause import Half

from .handlers import enqueue, read_user, send_first
from .service import io
from .transitions import Due, due, fingerprint

if TYPE_CHECKING:
    from shared.mail.reports import ProvisionedRow, WaitingRow
    from shared.mail.sender import Mail

    from .service import Service

log = get_logger("shared.flow")
REPORT_CURSOR = "report-provisioned"
# Outcome kinds the digest reports; a new row of any of them makes a digest worth sending.
REPORTED = ("provisioned", "failed", "blocked", "stuck", "shortage")


async def every_timer(svc: Service) -> tuple[int, int]:
    """Poll, reconcile, plan roles and leavers once (``run --once``); returns the items
    enqueued and the timers that failed. As in the function app, one timer failing (a DC
    down) does not stop the others or the queues."""
    enqueued = failed = 0
    for timer in (poll, reconcile, roles_cycle, leavers):
        try:
            enqueued += len(await timer(svc))
        except ProvisioningError as exc:
            log.warning("timer_failed", timer=timer.__name__, reason=str(exc))
            failed += 1
    return enqueued, failed


async def leavers(svc: Service) -> tuple[WorkItem, ...]:
    """The leavers cycle (``shared.flow.leavers``); what it enqueued."""
    from .leavers import leavers_cycle

    return (await leavers_cycle(svc)).enqueued


async def paused(svc: Service, half: Half, timer: str) -> bool:
    """Whether ``half`` is paused (``python -m shared.cli pause``): then the timer does
    nothing, and says so."""
    pause = await io(svc.pauses.paused, half)
    if pause is not None:
        log.info("timer_paused", timer=timer, half=half.value, since=pause.since,
                 fix="python -m shared.cli resume when the service should work again")
    return pause is not None


async def poll(svc: Service) -> list[uuid.UUID]:
    """Enqueue users added to the provisioning group since the last poll; returns them."""
    if await paused(svc, Half.PROVISIONING, "poll"):
        return []
    group = svc.settings.provisioning.provision_group
    cursor = f"dirsync-{group}"
    cookie = await io(svc.cursors.get, cursor)
    delta = await io((await svc.adirectory()).poll, group, cookie)
    await send_first(svc, [WorkItem(user=guid, step=Step.MAILBOX) for guid in delta.added])
    # The cookie moves only after every add is on the queue: a crash replays, never loses.
    await io(svc.cursors.put, cursor, delta.cookie)
    log.info("poll_done", group=group, added=len(delta.added), removed=len(delta.removed))
    return list(delta.added)


async def reconcile(svc: Service) -> list[WorkItem]:
    """Re-enqueue members of either group that have no live work item; returns what it sent."""
    if await paused(svc, Half.PROVISIONING, "reconcile"):
        return []
    p = svc.settings.provisioning
    sent: list[WorkItem] = []
    polled = await io(svc.ledger.sent_since, now() - svc.policy.grace)
    for group, step in ((p.provision_group, Step.MAILBOX), (p.license_group, Step.LICENSE)):
        members = await io((await svc.adirectory()).group_members, group)
        # One query for the step's rows (pages of 1,000), not a read per member.
        rows = {row.user: row for row in await io(svc.ledger.rows, step)} if members else {}
        for guid in members:
            row = rows.get(guid)
            if row is None and step is Step.MAILBOX and guid in polled:
                continue  # a poll sent its first message moments ago
            if await needs_work(svc, row, guid):
                item = WorkItem(user=guid, step=step)
                await enqueue(svc, item)
                sent.append(item)
        telemetry.stages(step.value, group, [rows.get(guid) for guid in members],
                         svc.policy.stuck_after)
    log.info("reconcile_done", enqueued=len(sent))
    return sent


async def needs_work(svc: Service, row: LedgerRow | None, guid: uuid.UUID) -> bool:
    """Whether reconcile should enqueue ``guid``, whose ledger row is ``row``."""
    decision = due(row, now(), svc.policy.grace)
    if decision is not Due.IF_CHANGED:
        return decision is Due.YES
    assert row is not None
    user = await read_user(svc, guid)
    return user is not None and fingerprint(user) != row.fingerprint


def provisioned_row(outcome: dict[str, Any]) -> ProvisionedRow:
    """A digest row from a ``provisioned`` outcome."""
    from shared.mail.reports import ProvisionedRow

    return ProvisionedRow(username=outcome.get("name", ""), email=outcome.get("mail", ""),
                          licence=outcome.get("licence", ""),
                          display_name=outcome.get("display_name", ""))


def waiting_rows(rows: list[LedgerRow], stuck_after: int) -> list[WaitingRow]:
    """The digest's users waiting and why: failed or blocked for good, stuck after
    ``stuck_after`` attempts, or waiting for a licence unit."""
    from shared.mail.reports import WaitingRow

    found = []
    for row in rows:
        if row.state is State.FAILED:
            status = "blocked" if row.wait == "blocked" else "failed"
        elif row.wait == "shortage":
            status = "no licence unit"
        elif row.attempts >= stuck_after:
            status = f"stuck after {row.attempts} attempts"
        else:
            continue
        found.append(WaitingRow(username=row.name or str(row.user), step=row.step.value,
                                status=status, reason=row.last_error,
                                since=row.first_attempt_at))
    return sorted(found, key=lambda r: (r.step, r.username.lower()))


@dataclass(frozen=True)
class Report:
    users: int
    html: str = ""


async def report(svc: Service) -> Report:
    """Mail the digest: users provisioned since the last one, users waiting and why, the
    leavers, and the licence summary. Sent when something new happened since the last one."""
    last = ((await io(svc.cursors.get, REPORT_CURSOR)) or b"").decode()
    mail, new = await digest(svc, last)
    if mail is None:
        return Report(0)
    provisioned, waiting = new["provisioned"], new["~waiting"]
    if svc.settings.mail.transport != "none":
        await svc.mailer().send(mail)
    newest = max(str(rows[-1]["RowKey"]) for kind, rows in new.items()
                 if rows and kind != "~waiting")
    await io(svc.cursors.put, REPORT_CURSOR, newest.encode())
    log.info("report_sent", users=len(provisioned), waiting=len(waiting))
    return Report(len(provisioned), mail.html)


async def digest(svc: Service, last: str, *, always: bool = False,
                 skus: list[Any] | None = None) -> tuple[Mail | None, dict[str, list[Any]]]:
    """The next digest (None when nothing new happened since ``last``, the report cursor,
    unless ``always``: the CLI's preview) and what it was made of: the new outcomes by kind,
    and the users waiting (``~waiting``). ``skus``: the licence summary when the caller read
    it (else Graph's subscribedSkus, read here)."""
    from shared.leavers.report import LEAVER_KINDS, month_start, section
    from shared.mail.reports import render_digest

    new: dict[str, list[Any]] = {kind: await io(svc.outcomes.since, kind, last)
                                 for kind in REPORTED + LEAVER_KINDS}
    if not any(new.values()) and not always:
        return None, new
    until = now()
    month = await io(svc.outcomes.since, "leaver_unlicensed", month_start(until))
    leavers = section(new, month, svc.settings.leavers.prices, until=until)
    new["~waiting"] = waiting_rows(await io(svc.ledger.rows_in, State.FAILED, State.WAITING),
                                   svc.policy.stuck_after)
    if skus is None:
        skus = list(await svc.graph().subscribed_skus())
        telemetry.sku_capacity(skus)
    mail = render_digest([provisioned_row(r) for r in new["provisioned"]], skus,
                         since=last[:19] or None, until=until, waiting=new["~waiting"],
                         leavers=leavers)
    return mail, new


async def roles_cycle(svc: Service) -> list[WorkItem]:
    """Plan the role sync, apply the guards, enqueue one message per allowed change."""
    if not svc.settings.roles.enabled or await paused(svc, Half.ROLES, "roles"):
        return []
    from shared.roles.cycle import run_cycle

    result = await run_cycle(svc)
    if result.held is not None:
        telemetry.held_plan(result.held.plan_id, result.held.grants, result.held.revocations,
                            result.held.reason)
    plan = result.plan.plan_id if result.plan else None
    items = [WorkItem(user=c.principal, step=Step.ROLE, role=c.role, action=c.action, plan=plan)
             for c in result.to_enqueue]
    for item in items:
        await enqueue(svc, item)
    return items

