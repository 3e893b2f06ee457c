"""The work item's state machine: every decision of the queue handlers, with no I/O.

A handler moves bytes; this module decides. Each function takes what the handler read (the
message, the ledger row, the step's result, the time) and returns what to do::

    accept(queue, text, now)            message ──▶ WorkItem, or Poison (never trusted blindly)
    on_claim(verdict, row, now)         ledger claim ──▶ Proceed | Requeue | Drop
    advance(row, item, result, now, policy) ──▶ Transition

    result                 ledger     sent                          recorded       mailed
    Done                   DONE       the next step's message**** provisioned*   -
    Stale (not the step's) as before  -                             -              -
      (the claim undone)
    NotYet(outage|sync|    WAITING    the same item, after backoff  stuck**        stuck alert**
      routing|shortage)                 (or the peer's Retry-After)  shortage***   shortage***
    NotYet past deadline   FAILED     -                             failed         error mail
    PermanentError         FAILED     -                             failed         error mail
    SafetyStop             FAILED     -                             blocked        alert

    *  the licence step's digest row   ** once, at exactly ``stuck_after`` attempts
    *** the first shortage of a SKU on a day
    **** after ``first_look`` for the licence step; the sync trigger is asked for the user
    (a wait for the sync or the routing address asks again: ``shared.provisioning.sync`` coalesces)

``Transition`` lists the effects in the order the handler must carry them out: the retry is
sent *before* the ledger row is released (a crash in between leaves a message the claim rule
accepts, never a row promising a message nobody sent); the next step's message is sent after
the row is DONE.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import TYPE_CHECKING

from shared.errors import PermanentError, ProvisioningError, SafetyStop
from shared.provisioning.looks import quick_retries, stuck_at, sync_delay
from shared.results import Done, NotYet, Shortage, Stale, Wait
from shared.store.ledger import Change, LedgerRow, State, Verdict
from shared.store.messages import QUEUES, MalformedMessage, Step, WorkItem, decode

if TYPE_CHECKING:
    from shared.ad.directory import DirectoryUser
    from shared.config import Settings

STEP_OF_QUEUE = {queue: step for step, queue in QUEUES.items()}
# How overdue a queued item may be before reconcile sends it again (RECONCILE_GRACE_SECONDS).
GRACE = dt.timedelta(minutes=15)

StepResult = Done | NotYet | Stale | PermanentError | SafetyStop


@dataclass(frozen=True)
class Policy:
    """How long to wait, per kind of wait, and when to give up or alert."""

    outage_min: float = 30.0
    outage_max: float = 3600.0
    sync_min: float = 60.0
    sync_max: float = 3600.0
    # A shortage ends when someone buys or frees units, at any moment: looked at again every
    # two minutes, so a user is licensed within minutes of it, not after ``sync_max`` (1 h).
    # A recheck per user, not a timer waking the users of a SKU: a timer would read every two
    # minutes whether anyone waits or not and need a second way into the licence queue. The
    # recheck costs Graph nothing while nobody waits, one user read per waiting user
    # otherwise (subscribedSkus comes from the step's 5-s cache): 100 waiting users are under
    # one Graph read per second.
    shortage_recheck: float = 120.0
    sync_deadline: dt.timedelta = dt.timedelta(hours=24)
    stuck_after: int = 6
    lease: dt.timedelta = dt.timedelta(minutes=5)
    first_look: float = 0.0  # how long after the mailbox step the licence step first looks
    grace: dt.timedelta = GRACE
    # a trigger says when the sync ended: the licence message is woken then, and a user not
    # there yet is looked at again after these seconds before the back-off (``looks``)
    quick: tuple[float, ...] = ()

    @classmethod
    def of(cls, settings: Settings) -> Policy:
        p = settings.provisioning
        return cls(
            sync_min=p.sync_retry_min_seconds,
            sync_max=p.sync_retry_max_seconds,
            shortage_recheck=p.shortage_recheck_seconds,
            sync_deadline=dt.timedelta(hours=p.sync_deadline_hours),
            stuck_after=settings.service.stuck_after,
            lease=dt.timedelta(seconds=settings.service.lease_seconds),
            first_look=settings.sync.wait_seconds,
            grace=dt.timedelta(seconds=settings.service.reconcile_grace_seconds),
            quick=quick_retries(settings.sync.trigger),
        )

    def delay(self, wait: NotYet, attempts: int) -> float:
        """The one back-off: doubling from the kind's minimum up to its maximum, or the peer's
        own Retry-After when it gave one. A shortage is looked at again every
        ``shortage_recheck``, never backed off: units come back at any moment, and a user
        must get one within minutes of it."""
        if wait.retry_after is not None:
            return max(wait.retry_after, 1.0)
        if wait.kind is Wait.SHORTAGE:
            return self.shortage_recheck
        if wait.kind is Wait.OUTAGE:
            return sync_delay(attempts, (), self.outage_min, self.outage_max)
        quick = self.quick if wait.kind is Wait.SYNC else ()
        return sync_delay(attempts, quick, self.sync_min, self.sync_max)

    def deadline(self, wait: NotYet) -> dt.timedelta | None:
        """How long a wait may last since the first attempt; None: as long as it takes."""
        return self.sync_deadline if wait.kind in (Wait.SYNC, Wait.ROUTING) else None


# -- the message -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Poison:
    """A message that is not ours (or not for this queue): parked, with no side effect."""

    reason: str


def accept(queue: str, text: str, now: dt.datetime,
           inserted_at: dt.datetime | None = None) -> WorkItem | Poison:
    """The work item ``text`` names, if it is one of ours and belongs on ``queue``, dated by
    ``inserted_at``, the storage service's insertion time (never by its body)."""
    try:
        item = decode(text, now=now, inserted_at=inserted_at)
    except MalformedMessage as exc:
        return Poison(exc.reason)
    if STEP_OF_QUEUE.get(queue) is not item.step:
        return Poison(f"a {item.step} message on queue {queue}")
    return item


# -- the claim -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proceed:
    row: LedgerRow


@dataclass(frozen=True)
class Requeue:
    """Another worker holds the user: the same message again once its lease ends."""

    delay: float


@dataclass(frozen=True)
class Drop:
    """A duplicate or superseded message: nothing to do."""

    why: str


def on_claim(verdict: Verdict, row: LedgerRow | None, now: dt.datetime
             ) -> Proceed | Requeue | Drop:
    """What to do after ``Ledger.claim`` answered ``verdict``."""
    if verdict is Verdict.CLAIMED and row is not None:
        return Proceed(row)
    if verdict is Verdict.BUSY:
        wait = (row.lease_until - now).total_seconds() if row and row.lease_until else 60.0
        return Requeue(max(wait, 1.0))
    return Drop(verdict.value)


# How long a message received while its half is paused stays invisible before it is looked
# at again (s): it is never lost, and is worked within this long of ``resume``.
PAUSED_RECHECK = 60.0


def on_pause(paused: bool) -> Requeue | None:
    """What to do with a message whose half of the service is paused (``shared.store.pause``):
    the same message again after ``PAUSED_RECHECK``, untouched: no ledger row, no step."""
    return Requeue(PAUSED_RECHECK) if paused else None


def on_check(stale: str | None) -> Drop | None:
    """What to do after the check made before the claim (a role change still wanted now?):
    a stale message is dropped before it touches the ledger."""
    return Drop(f"stale: {stale}") if stale is not None else None


# -- the step's result -----------------------------------------------------------------------


@dataclass(frozen=True)
class Handled:
    """What happened to one message: for logs, the CLI's progress and tests."""

    outcome: str  # done, retry, failed, blocked, skipped, poison
    user: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Send:
    item: WorkItem
    delay: float = 0.0


@dataclass(frozen=True)
class Record:
    """An outcome row (``Outcomes.record(kind, **fields)``)."""

    kind: str
    fields: dict[str, str | int] = field(default_factory=dict)


@dataclass(frozen=True)
class ErrorMail:
    """One mail about one user's failure, with the fix."""

    error: ProvisioningError


@dataclass(frozen=True)
class StuckAlert:
    user: str
    step: str
    reason: str
    attempts: int


@dataclass(frozen=True)
class ShortageAlert:
    part_number: str
    prepaid: int
    consumed: int


Alert = ErrorMail | StuckAlert | ShortageAlert


@dataclass(frozen=True)
class Transition:
    """Everything a handler does after a step, in order: ``retry`` is sent first, then the
    ledger row becomes ``state`` (with ``error``; a FAILED row with the user's fingerprint,
    which ``read_user`` asks the handler to read), then ``follow`` is sent, the ``audit``
    and ``records`` are written, the ``alerts`` mailed and ``event`` logged."""

    state: State
    handled: Handled
    event: str
    who: str = ""  # the user as the step named them (sAMAccountName or UPN)
    error: str = ""
    wait: str = ""
    retry: Send | None = None
    follow: Send | None = None
    audit: tuple[Change, ...] = ()
    records: tuple[Record, ...] = ()
    alerts: tuple[Alert, ...] = ()
    read_user: bool = False
    # the message failed a check (the user is not a member): the claim is undone, the ledger
    # row left exactly as it was before it (or not there), and nothing else happens
    undo: bool = False
    shortage: Shortage | None = None  # a wait for a licence unit: which SKU, how many
    # a user (DN) who needs the sync now: the trigger is asked (``shared.provisioning.sync``)
    sync: str = ""
    sync_again: bool = False  # asked again for a user still not synced
    wake: bool = False  # ``follow`` or ``retry`` is made visible once the sync has ended


def advance(row: LedgerRow, item: WorkItem, result: StepResult, now: dt.datetime,
            policy: Policy) -> Transition:
    """The transition of a claimed work item, given what its step returned."""
    if isinstance(result, Done):
        return _done(item, result, policy)
    if isinstance(result, Stale):
        return _stale(item, result)
    if isinstance(result, NotYet):
        return _not_yet(row, item, result, now, policy)
    if isinstance(result, SafetyStop):
        return _blocked(item, result)
    return _failed(item, result)


def _done(item: WorkItem, result: Done, policy: Policy) -> Transition:
    # A mailbox just enabled reaches the cloud with the next sync: ask for it, and look for
    # the synced user about one delta cycle later, not before.
    mailbox = item.step is Step.MAILBOX
    follow = (Send(item.next(result.next_step), policy.first_look if mailbox else 0.0)
              if result.next_step else None)
    records = _outcomes(item, result.records)
    if result.report is not None:
        records += (Record("provisioned", {**result.report, "user": str(item.user),
                                           "correlation_id": item.correlation_id}),)
    return Transition(State.DONE, Handled("done", str(item.user)), "step_done", who=result.user,
                      follow=follow, audit=result.changes, records=records,
                      sync=result.dn if mailbox else "", wake=mailbox and bool(policy.quick))


def _outcomes(item: WorkItem, made: tuple[tuple[str, dict[str, str | int]], ...]
              ) -> tuple[Record, ...]:
    """The outcome rows a step made (a leaver's ``leaver_*``), in the user's partition."""
    return tuple(Record(kind, {**fields, "user": str(item.user),
                               "correlation_id": item.correlation_id}) for kind, fields in made)


def _stale(item: WorkItem, stale: Stale) -> Transition:
    # Nothing to do for this message, which anyone with queue access may have written: the
    # claim is undone, so the row keeps its state and times (a real message for the user is
    # not made to look stale, nor a finished step to look redone).
    detail = f"stale: {stale.reason}"
    return Transition(State.DONE, Handled("skipped", str(item.user), detail), "message_stale",
                      who=stale.user, error=detail, undo=True)


def _not_yet(row: LedgerRow, item: WorkItem, wait: NotYet, now: dt.datetime,
             policy: Policy) -> Transition:
    limit = policy.deadline(wait)
    first = row.first_attempt_at or now
    if limit is not None and now - first >= limit:
        hours = limit.total_seconds() / 3600
        late = PermanentError(f"{wait.late or wait.reason} after {hours:g} h",
                              user=wait.user, step=item.step.value,
                              fix=wait.late_fix or wait.fix)
        return _failed(item, late, audit=wait.changes)
    delay = policy.delay(wait, row.attempts)
    user = wait.user or str(item.user)
    error = f"{item.step.value} waits for {user}: {wait.reason}"
    records: list[Record] = list(_outcomes(item, wait.records))
    alerts: list[Alert] = []
    if wait.shortage is not None and wait.shortage.first_today:
        s = wait.shortage
        records.append(Record("shortage", {"sku": s.part_number, "consumed": s.consumed,
                                           "total": s.prepaid}))
        alerts.append(ShortageAlert(s.part_number, s.prepaid, s.consumed))
    stuck = stuck_at(policy.stuck_after, policy.quick if wait.kind is Wait.SYNC else ())
    # what the next sync may bring: asked for, and looked at again as soon as it has ended
    synced = wait.kind in (Wait.SYNC, Wait.ROUTING)
    if row.attempts == stuck and wait.kind is not Wait.SHORTAGE:
        # Exactly once: the shortage has its own alert, once per SKU and day.
        records.append(Record("stuck", {"user": str(item.user), "name": user,
                                        "step": item.step.value, "reason": wait.reason,
                                        "attempts": row.attempts}))
        alerts.append(StuckAlert(user, item.step.value, wait.reason, row.attempts))
    return Transition(
        State.WAITING, Handled("retry", str(item.user), error), "step_retry", who=wait.user,
        error=error, wait=wait.kind.value, retry=Send(item.again(now), delay), audit=wait.changes,
        records=tuple(records), alerts=tuple(alerts), shortage=wait.shortage,
        sync=wait.dn if synced else "", sync_again=True, wake=synced and bool(policy.quick))


def _failed(item: WorkItem, error: PermanentError, audit: tuple[Change, ...] = ()
            ) -> Transition:
    error.at(user=str(item.user), step=item.step.value)
    record = Record("failed", {"user": str(item.user), "step": item.step.value,
                               "reason": error.reason, "fix": error.fix,
                               "correlation_id": item.correlation_id})
    return Transition(State.FAILED, Handled("failed", str(item.user), str(error)),
                      "step_failed", who=error.user, error=str(error), audit=audit,
                      records=(record,), alerts=(ErrorMail(error),),
                      read_user=item.step is not Step.ROLE)


def _blocked(item: WorkItem, stop: SafetyStop) -> Transition:
    stop.at(user=str(item.user), step=item.step.value)
    record = Record("blocked", {"user": str(item.user), "step": item.step.value,
                                "reason": str(stop)})
    return Transition(State.FAILED, Handled("blocked", str(item.user), str(stop)),
                      "safety_stop", who=stop.user, error=str(stop), wait="blocked",
                      records=(record,), alerts=(ErrorMail(stop),))


# -- reconcile -------------------------------------------------------------------------------


class Due(Enum):
    """Reconcile's answer for one member (compared by identity; never written anywhere)."""

    YES = auto()
    NO = auto()
    IF_CHANGED = auto()  # failed for good: only once someone changed what made it fail


def due(row: LedgerRow | None, now: dt.datetime, grace: dt.timedelta = GRACE) -> Due:
    """Whether reconcile should enqueue a group member whose ledger row is ``row``."""
    if row is None:
        return Due.YES
    if row.is_live(now, grace):
        return Due.NO
    if row.state is State.FAILED:
        return Due.IF_CHANGED
    if row.state is State.DONE:
        # Finished, yet still in the group: someone re-added them, or a crash came between
        # the group moves. Steps are idempotent, so doing it again is safe.
        return Due.YES if row.finished_at is None or now - row.finished_at > grace else Due.NO
    return Due.YES  # queued, waiting or working, but overdue: the message or worker was lost


def fingerprint(user: DirectoryUser) -> str:
    """What a fix of a permanent failure changes; reconcile retries when it differs."""
    parts = [user.sam, user.upn or "", user.license_name or "", user.country or "", user.dn]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]
