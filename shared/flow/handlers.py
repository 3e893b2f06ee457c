"""The queue handlers: thin I/O around ``transitions``.

``handle`` takes one message: ``accept`` decides whether it is ours, the ledger claim whether
this worker may act, the step runs through its adapter, ``advance`` decides the rest and
``carry_out`` does it. Storage and directory calls run in threads (the SDKs are blocking),
mail goes through the async mailer. A handler never raises for a failure it understands; only
a bug raises, so that the Functions host retries it and finally parks it on ``<queue>-poison``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shared import telemetry
from shared.errors import ProvisioningError, TransientError
from shared.log import get_logger
from shared.store.ledger import LedgerRow, now
from shared.store.messages import MalformedMessage, WorkItem, decode
from shared.store.pause import HALF_OF_STEP
from shared.store.queues import decode_body, excerpt, raw_text
from shared.store.records import audit_rows, outcome_row

from . import alerts
from .service import io
from .steps import check, run_step
from .transitions import (
    Drop,
    Handled,
    Poison,
    Proceed,
    Send,
    Transition,
    accept,
    advance,
    fingerprint,
    on_check,
    on_claim,
    on_pause,
)

if TYPE_CHECKING:
    from shared.ad.directory import DirectoryUser
    from shared.store.queues import MessageRef

    from .service import Service

log = get_logger("shared.flow")
async def send_first(svc: Service, items: Sequence[WorkItem]) -> None:
    """A poll's first mailbox messages: each sent, then one record of the lot (``Ledger.sent``)
    instead of a ledger row per user; in this order a crash in between leaves messages the
    claim rule accepts, and at worst a reconcile that sends some of them again."""
    for item in items:
        await io(svc.queues.send_item, item)
    await io(svc.ledger.sent, items)


async def enqueue(svc: Service, item: WorkItem, *, delay: float = 0.0) -> None:
    """Send the item, then record it as the live one for its user and step. In this order a
    crash in between leaves a message the claim rule accepts, never a ledger row that promises
    a message nobody sent (which reconcile would only notice after its grace)."""
    inserted = await io(svc.queues.send_item, item, delay=delay)
    # The ledger records the storage service's time for it, the time its handler will see.
    await io(svc.ledger.enqueued, dataclasses.replace(item, enqueued_at=inserted))
    telemetry.enqueued(item, delay)


async def handle(svc: Service, queue: str, raw: str | bytes, *,
                 inserted_at: dt.datetime | None = None) -> Handled:
    """Process one message of ``queue``, as it was stored (base64), inserted at
    ``inserted_at`` by the storage service's clock (``QueueMessage.inserted_on``, the
    Functions host's ``insertion_time``). Raises only on a bug."""
    if inserted_at is None:  # never from Azure Storage or Azurite; the reader's time is later
        log.warning("message_undated", queue=queue, fix="none: the receipt time stands in")
        inserted_at = now()
    body = decode_body(raw)
    item = (accept(queue, body, now(), inserted_at) if isinstance(body, str)
            else Poison(body.reason))
    if isinstance(item, Poison):
        # No side effect: parked as it came; the poison handler records and alerts.
        await io(svc.queues.to_poison, queue, raw_text(raw))
        log.warning("message_malformed", queue=queue, reason=item.reason, outcome="poison")
        return Handled("poison", detail=item.reason)

    half = HALF_OF_STEP[item.step]
    paused = on_pause(await io(svc.pauses.paused, half) is not None)
    if paused is not None:  # as it came, for later: a pause loses no work
        await io(svc.queues.send_raw, queue, raw_text(raw), delay=paused.delay)
        log.info("message_paused", user=str(item.user), step=item.step, half=half.value,
                 correlation_id=item.correlation_id)
        return Handled("paused", str(item.user), f"{half.value} is paused")

    try:
        checked = on_check(await check(svc, item))
    except TransientError as exc:  # the check could not read: the same work again, later
        await io(svc.queues.send_item, item, delay=svc.policy.outage_min)
        log.warning("message_check_deferred", user=str(item.user), step=item.step,
                    reason=exc.reason, correlation_id=item.correlation_id)
        return Handled("retry", str(item.user), exc.reason)
    if checked is not None:  # failed its check: no ledger row is touched
        log.info("message_dropped", user=str(item.user), step=item.step, why=checked.why,
                 correlation_id=item.correlation_id)
        return Handled("skipped", str(item.user), checked.why)

    verdict, row = await io(svc.ledger.claim, item, svc.policy.lease)
    decision = on_claim(verdict, row, now())
    if isinstance(decision, Drop):
        log.info("message_dropped", user=str(item.user), step=item.step, why=decision.why,
                 correlation_id=item.correlation_id)
        return Handled("skipped", str(item.user), decision.why)
    if not isinstance(decision, Proceed):
        await io(svc.queues.send_item, item, delay=decision.delay)
        return Handled("skipped", str(item.user), "busy")

    result = await run_step(svc, item)
    transition = advance(decision.row, item, result, now(), svc.policy)
    await carry_out(svc, item, decision.row, transition)
    return transition.handled


async def carry_out(svc: Service, item: WorkItem, row: LedgerRow, t: Transition) -> None:
    """Do what ``t`` says, in its order (see ``Transition``). The ledger row and the step's
    records (audit, outcomes) are one transaction; a worker that lost its lease meanwhile
    writes the records alone, so what it changed is still audited. A message that failed its
    check is unclaimed instead: the row goes back to what it was."""
    if t.undo:
        restored = await io(svc.ledger.unclaim, row)
        log.info(t.event, user=t.handled.user, step=item.step, outcome=t.handled.outcome,
                 reason=t.error or None, restored=restored, correlation_id=item.correlation_id)
        return
    retry_at, ref = None, None
    if t.retry is not None:
        retry_at, ref = await _send(svc, t.retry, wake=t.wake)
    user = await read_user(svc, item.user) if t.read_user else None
    records = _records(item, t, user)
    finished = await io(svc.ledger.finish, row, t.state, error=t.error,
                        fingerprint=fingerprint(user) if user else "",
                        retry_at=retry_at,
                        next_at=(retry_at + dt.timedelta(seconds=t.retry.delay)
                                 if retry_at is not None and t.retry is not None else None),
                        name=user.sam if user else t.who, wait=t.wait, records=records)
    if not finished and records:
        await io(svc.ledger.write_records, records)
    if t.follow is not None:
        # No ledger row for it: the next step's claim creates one. Reconcile re-sends it
        # only for a member with no row at that step (a crash right here).
        _, ref = await _send(svc, t.follow, wake=t.wake)
    if t.sync:
        (await svc.sync_trigger()).request(t.sync, again=t.sync_again, wake=ref)
    log.info(t.event, user=t.handled.user, step=item.step, outcome=t.handled.outcome,
             reason=t.error or None, attempts=row.attempts, correlation_id=item.correlation_id)
    telemetry.transition(item, t, row.attempts)
    for alert in t.alerts:
        await alerts.send(svc, alert, item=item, user=user)


async def _send(svc: Service, send: Send, *, wake: bool
                ) -> tuple[dt.datetime, MessageRef | None]:
    """Send ``send``'s item after its delay; with ``wake``, keep what makes it visible as soon
    as the sync asked for has ended. Returns its insertion time, and that reference."""
    if not wake:
        return await io(svc.queues.send_item, send.item, delay=send.delay), None
    ref = await io(svc.queues.send_waking, send.item, delay=send.delay)
    return ref.inserted_at, ref


def _records(item: WorkItem, t: Transition, user: DirectoryUser | None) -> list[dict[str, Any]]:
    """The step's audit and outcome rows, in the user's partition (``shared.store.records``)."""
    partition = str(item.user)
    rows = audit_rows(partition, user=partition, system=_system(item),
                      correlation_id=item.correlation_id,
                      changes=[(c.what, c.before, c.after) for c in t.audit])
    for record in t.records:
        fields = dict(record.fields)
        if user is not None and record.kind == "failed":
            fields.update(alerts.user_fields(user))
        rows.append(outcome_row(partition, record.kind, fields))
    return rows


def _system(item: WorkItem) -> str:
    return "exchange" if item.step.value == "mailbox" else "graph"


async def read_user(svc: Service, guid: uuid.UUID) -> DirectoryUser | None:
    """The directory's user, or None when it cannot be read (deleted, or AD is down)."""
    try:
        return await io((await svc.adirectory()).user, guid)
    except ProvisioningError:
        return None


async def poisoned(svc: Service, queue: str, raw: str | bytes, *,
                   dequeue_count: int = 0) -> Handled:
    """A message parked on ``<queue>-poison`` (as stored): recorded (kept for ``cli
    redrive``) and alerted. It never changes a ledger row: anyone who can write to a queue can
    write to its poison twin. Never raises."""
    body = decode_body(raw)
    text = body if isinstance(body, str) else excerpt(raw)
    item: WorkItem | None = None
    if isinstance(body, str):
        try:
            item = decode(body)
        except MalformedMessage as exc:
            reason = exc.reason
        else:
            reason = f"processing failed {dequeue_count or 'several'} times"
    else:
        reason = body.reason
    user = str(item.user) if item else ""
    await io(svc.outcomes.record, "poison", queue=queue, user=user, message=text[:1024],
             reason=reason, redriven=False)
    log.error("message_poisoned", queue=queue, user=user, reason=reason)
    await alerts.poison(svc, queue, text, reason=reason, dequeue_count=dequeue_count, item=item)
    return Handled("poison", user, reason)


async def redrive(svc: Service, queue: str) -> tuple[int, int]:
    """Re-enqueue, as new work items, the poisoned messages of ``queue`` not re-driven yet.
    Returns (re-driven, not ours)."""
    moved = skipped = 0
    for row in await io(svc.outcomes.since, "poison", ""):
        if row.get("queue") != queue or row.get("redriven"):
            continue
        try:
            old = decode(str(row.get("message", "")))
        except MalformedMessage:
            skipped += 1
        else:
            await enqueue(svc, WorkItem(user=old.user, step=old.step, role=old.role,
                                        action=old.action, plan=old.plan,
                                        correlation_id=old.correlation_id))
            moved += 1
        await io(svc.outcomes.update, row, redriven=True)
    return moved, skipped
