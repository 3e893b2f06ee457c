"""The provisioning flow: what each timer and queue function does.

    poll        DirSync delta of O365_Provision ──▶ queue mailbox
    handle      mailbox: remote mailbox, O365_Provision → O365_License ──▶ queue license
                license: synced? routing address? capacity ──▶ assignLicense ──▶ out of O365_License
                roles:   one role change
    reconcile   members of either group without a live work item ──▶ enqueued again
    report      outcomes since the last report ──▶ digest mail
    poisoned    a message that failed maxDequeueCount times ──▶ ledger, outcome, alert

Handlers never raise for a failure they understand: a transient one is re-enqueued with a
delay (the ledger records the attempt), a permanent one is recorded and mailed, and a message
that is not ours goes to the poison queue without side effects. Only a bug raises, so the
Functions host retries it and finally parks it on ``<queue>-poison``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .config import Settings, load_settings
from .cursors import CursorStore
from .directory import Directory, DirectoryUser
from .errors import PermanentError, ProvisioningError, SafetyStop, TransientError
from .ledger import Audit, Ledger, LedgerRow, Outcomes, State, Verdict, now
from .log import configure, get_logger
from .messages import QUEUES, MalformedMessage, Step, WorkItem, decode
from .queues import Queues
from .secrets import SecretProvider
from .storage import aio_table_service, queue_service, table_service

log = get_logger(__name__)


GRACE = dt.timedelta(minutes=15)  # how overdue a queued item may be before reconcile re-sends
RETRY_MIN, RETRY_MAX = 30.0, 3600.0  # back-off for transient failures of on-premises peers
STUCK_AFTER = 6  # attempts after which an operator is alerted (the retries go on)
STEP_QUEUE = {queue: step for step, queue in QUEUES.items()}
SHORTAGES = "shortages"  # one row per SKU and day: the shortage alert goes out once
T = TypeVar("T")


@dataclass
class Service:
    """What one worker needs, built once from settings; clients open on first use."""

    settings: Settings
    secrets: SecretProvider
    queues: Queues
    ledger: Ledger
    audit: Audit
    outcomes: Outcomes
    cursors: CursorStore
    _clients: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings) -> Service:
        tables = table_service(settings.storage)
        tables.create_table_if_not_exists(SHORTAGES)  # written by the licence step's async client
        return cls(
            settings=settings,
            secrets=SecretProvider.from_settings(settings),
            queues=Queues(queue_service(settings.storage)),
            ledger=Ledger(tables),
            audit=Audit(tables),
            outcomes=Outcomes(tables),
            cursors=CursorStore(settings.storage),
        )

    def _client(self, name: str, factory: Callable[[], T]) -> T:
        if name not in self._clients:
            self._clients[name] = factory()
        client: T = self._clients[name]
        return client

    def directory(self) -> Directory:
        s = self.settings
        return self._client(
            "directory",
            lambda: Directory(
                s.ad,
                s.provisioning,
                password=self.secrets.resolve(s.ad.password, setting="AD_PASSWORD"),
                ca_bundle=s.service.ca_bundle,
            ),
        )

    def mailbox_steps(self) -> Pool[Any]:
        """Mailbox steps, each with its own Exchange session, ``EXCHANGE_SESSIONS`` at most:
        one session runs one cmdlet at a time, so sessions are what parallelism costs."""
        from .exchange import ExchangeClient
        from .mailbox import MailboxStep

        s = self.settings

        def build() -> Any:
            exchange = ExchangeClient(
                s.exchange,
                password=self.secrets.resolve(s.exchange.password, setting="EXCHANGE_PASSWORD"),
                ca_bundle=s.service.ca_bundle,
            )
            return MailboxStep(s, self.directory(), exchange)

        return self._client("mailbox", lambda: Pool(s.exchange.sessions, build))

    def license_step(self) -> Any:
        """The licence step of the running event loop (its Graph client is per loop)."""
        from .licensing import LicenseStep, TableShortageLedger

        loop = asyncio.get_running_loop()
        step = self._clients.get("license")
        if step is None or self._clients.get("license-loop") is not loop:
            tables = aio_table_service(self.settings.storage)
            step = LicenseStep(self.settings.provisioning, self.directory(), self.graph(),
                               TableShortageLedger(tables.get_table_client(SHORTAGES)))
            self._clients["license"], self._clients["license-loop"] = step, loop
            self._clients["license-tables"] = tables
        return step

    def graph(self) -> Any:
        """The Graph client of the running event loop."""
        from .graph import graph_client

        return graph_client(self.settings)

    def mailer(self) -> Any:
        from .mail import Mailer

        return self._client("mailer", lambda: Mailer(self.settings, self.secrets))

    async def aclose(self) -> None:
        """Close what belongs to the running event loop (Graph, the async table client)."""
        self._clients.pop("license", None)
        self._clients.pop("license-loop", None)
        tables = self._clients.pop("license-tables", None)
        if tables is not None:
            await tables.close()
        await self.graph().close()

    def close(self) -> None:
        for name, client in self._clients.items():
            if name.startswith("license"):  # async, closed by aclose() on their loop
                continue
            close = getattr(client, "close", None)
            if callable(close):
                result = close()
                if asyncio.iscoroutine(result):
                    result.close()
        self._clients.clear()


class Pool(Generic[T]):
    """Up to ``size`` clients, made on demand; each is used by one thread at a time."""

    def __init__(self, size: int, factory: Callable[[], T]) -> None:
        self._size = size
        self._factory = factory
        self._free: queue.LifoQueue[T] = queue.LifoQueue()
        self._made = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def use(self) -> Iterator[T]:
        item = self._take()
        try:
            yield item
        finally:
            self._free.put(item)

    def _take(self) -> T:
        with self._lock:
            make = self._free.empty() and self._made < self._size
            if make:
                self._made += 1
        if not make:
            return self._free.get()
        try:
            return self._factory()
        except BaseException:
            with self._lock:
                self._made -= 1
            raise

    def close(self) -> None:
        while not self._free.empty():
            close = getattr(self._free.get_nowait(), "close", None)
            if callable(close):
                close()


_service: Service | None = None


def service() -> Service:
    """The worker's service, built from the app settings on first use."""
    global _service  # one per worker process, by design
    if _service is None:
        settings = load_settings()
        configure(settings.service.log_level)
        _service = Service.build(settings)
    return _service


def backoff(attempts: int) -> float:
    return float(min(RETRY_MAX, RETRY_MIN * 2 ** max(attempts - 1, 0)))


def enqueue(svc: Service, item: WorkItem, *, delay: float = 0.0) -> None:
    """Send the item, then record it as the live one for its user and step. In this order a
    crash in between leaves a message the claim rule accepts, never a ledger row that promises
    a message nobody sent (which reconcile would only notice after ``GRACE``)."""
    svc.queues.send_item(item, delay=delay)
    svc.ledger.enqueued(item)


async def io(call: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """A blocking storage or directory call, off the event loop: the storage SDK is
    synchronous, and a handler makes some twenty such calls per user."""
    return await asyncio.to_thread(call, *args, **kwargs)


# -- timers -----------------------------------------------------------------------------


async def poll(svc: Service) -> list[uuid.UUID]:
    """Enqueue users added to the provisioning group since the last poll; returns them."""
    group = svc.settings.provisioning.provision_group
    cursor = f"dirsync-{group}"
    cookie = svc.cursors.get(cursor)
    delta = await asyncio.to_thread(svc.directory().poll, group, cookie)
    for guid in delta.added:
        enqueue(svc, WorkItem(user=guid, step=Step.MAILBOX))
    # The cookie moves only after every add is on the queue: a crash replays, never loses.
    svc.cursors.put(cursor, delta.cookie)
    log.info("poll_done", group=group, added=len(delta.added), removed=len(delta.removed))
    return list(delta.added)


async def reconcile(svc: Service) -> list[WorkItem]:
    """Re-enqueue members of either group that have no live work item; returns what it sent."""
    directory = svc.directory()
    p = svc.settings.provisioning
    sent: list[WorkItem] = []
    for group, step in ((p.provision_group, Step.MAILBOX), (p.license_group, Step.LICENSE)):
        members = await asyncio.to_thread(directory.group_members, group)
        for guid in members:
            row = svc.ledger.get(guid, step)
            if await needs_work(svc, row, guid):
                item = WorkItem(user=guid, step=step)
                enqueue(svc, item)
                sent.append(item)
    log.info("reconcile_done", enqueued=len(sent))
    return sent


async def needs_work(svc: Service, row: LedgerRow | None, guid: uuid.UUID) -> bool:
    at = now()
    if row is None:
        return True
    if row.is_live(at, GRACE):
        return False
    if row.state is State.FAILED:
        # Retried only once someone changed what made it fail (licence attribute, country...).
        try:
            user = await asyncio.to_thread(svc.directory().user, guid)
        except PermanentError:
            return False
        return fingerprint(user) != row.fingerprint
    if row.state is State.DONE:
        # Finished, yet still in the group: someone re-added them, or a crash came between
        # the group moves. Steps are idempotent, so doing it again is safe.
        return row.finished_at is None or at - row.finished_at > GRACE
    return True  # queued, waiting or working, but overdue: the message or worker was lost


def fingerprint(user: DirectoryUser) -> str:
    """What a fix of a permanent failure changes; reconcile retries when it differs."""
    parts = [user.sam, user.upn or "", user.license_name or "", user.country or "", user.dn]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


# -- queue handlers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Handled:
    """What happened to one message: for logs, the CLI's progress and tests."""

    outcome: str  # done, retry, failed, blocked, skipped, poison
    user: str = ""
    detail: str = ""


async def handle(svc: Service, queue: str, text: str) -> Handled:
    """Process one message of ``queue``. Raises only on a bug."""
    try:
        item = decode(text)
        if STEP_QUEUE.get(queue) is not item.step:
            raise MalformedMessage(f"a {item.step} message on queue {queue}", raw=text)
    except MalformedMessage as exc:
        # No side effect: parked as it came; the poison handler records and alerts.
        svc.queues.to_poison(queue, text)
        log.warning("message_malformed", queue=queue, reason=exc.reason, outcome="poison")
        return Handled("poison", detail=exc.reason)

    lease = dt.timedelta(seconds=svc.settings.service.lease_seconds)
    verdict, row = await io(svc.ledger.claim, item, lease)
    if verdict is Verdict.BUSY:
        # Another worker holds this user; look again when its lease ends.
        wait = (row.lease_until - now()).total_seconds() if row and row.lease_until else 60.0
        await io(svc.queues.send, queue, text, delay=max(wait, 1.0))
        return Handled("skipped", str(item.user), "busy")
    if verdict is not Verdict.CLAIMED or row is None:
        log.info("message_dropped", user=str(item.user), step=item.step, why=verdict.value,
                 correlation_id=item.correlation_id)
        return Handled("skipped", str(item.user), verdict.value)

    try:
        if item.step is Step.MAILBOX:
            await _mailbox(svc, item)
        elif item.step is Step.LICENSE:
            await _license(svc, item, row)
        else:
            await _role(svc, item)
    except TransientError as exc:
        return await _retry(svc, item, row, exc)
    except SafetyStop as exc:
        svc.ledger.finish(row, State.FAILED, error=str(exc))
        svc.outcomes.record("blocked", user=str(item.user), step=item.step.value, reason=str(exc))
        log.warning("safety_stop", user=str(item.user), step=item.step, reason=exc.reason,
                    correlation_id=item.correlation_id)
        return Handled("blocked", str(item.user), str(exc))
    except PermanentError as exc:
        await _failed(svc, item, row, exc)
        return Handled("failed", str(item.user), str(exc))
    await io(svc.ledger.finish, row, State.DONE)
    if item.step is Step.MAILBOX:
        await io(enqueue, svc, item.next(Step.LICENSE))
    return Handled("done", str(item.user))


async def _mailbox(svc: Service, item: WorkItem) -> None:
    def run() -> Any:
        with svc.mailbox_steps().use() as step:
            return step.run(item.user, correlation_id=item.correlation_id)

    outcome = await asyncio.to_thread(run)
    await _audit(svc, item, "exchange", outcome)


async def _license(svc: Service, item: WorkItem, row: LedgerRow) -> None:
    step = svc.license_step()
    first = row.first_attempt_at or now()
    outcome = await step.run(item.user, first_attempt_at=first, correlation_id=item.correlation_id)
    await _audit(svc, item, "graph", outcome)
    if outcome.status == "shortage":
        if outcome.shortage is not None:
            await _shortage_alert(svc, outcome.shortage)
        raise TransientError(
            f"no free unit of {outcome.sku}",
            user=outcome.user,
            step="license",
            fix=f"buy or free {outcome.sku} licences; the user waits in the licence group",
            retry_after=svc.settings.provisioning.sync_retry_max_seconds,
        )
    await io(
        svc.outcomes.record,
        "provisioned",
        user=str(item.user),
        name=outcome.sam or outcome.user,
        display_name=outcome.display_name or "",
        mail=outcome.mail or "",
        licence=outcome.license_name or "",
        sku=outcome.sku,
        status=outcome.status,
        correlation_id=item.correlation_id,
    )


async def _shortage_alert(svc: Service, notice: Any) -> None:
    """Once per SKU and day (the step decides which call is the first)."""
    from .reports import SkuSummary, render_shortage

    svc.outcomes.record("shortage", sku=notice.part_number, consumed=notice.consumed,
                        total=notice.prepaid)
    if svc.settings.mail.transport == "none":
        return
    waiting = len(await asyncio.to_thread(
        svc.directory().group_members, svc.settings.provisioning.license_group))
    summary = SkuSummary(notice.part_number, notice.consumed, notice.prepaid)
    try:
        await _send(svc, render_shortage([summary], {notice.part_number: max(waiting, 1)}))
    except ProvisioningError as exc:
        log.error("alert_mail_failed", sku=notice.part_number, reason=str(exc))


async def _role(svc: Service, item: WorkItem) -> None:
    from .rolesync import apply_change

    outcome = await apply_change(svc.settings, svc.graph(), item,
                                 correlation_id=item.correlation_id)
    await _audit(svc, item, "graph", outcome)


async def _audit(svc: Service, item: WorkItem, system: str, outcome: Any) -> None:
    await io(_record_changes, svc, item, system, outcome)


def _record_changes(svc: Service, item: WorkItem, system: str, outcome: Any) -> None:
    changes = [
        (str(c[0]), c[1], c[2]) if isinstance(c, tuple) else (c.what, c.before, c.after)
        for c in getattr(outcome, "changes", ()) or ()
    ]
    if changes:
        svc.audit.record_all(user=str(item.user), system=system, changes=changes,
                             correlation_id=item.correlation_id)


async def _retry(svc: Service, item: WorkItem, row: LedgerRow, exc: TransientError) -> Handled:
    retry = WorkItem(user=item.user, step=item.step, correlation_id=item.correlation_id,
                     role=item.role, action=item.action)
    delay = exc.retry_after if exc.retry_after is not None else backoff(row.attempts)
    # The retry first (see ``enqueue``): until the lease is released below, a retry that
    # comes early finds the user busy and waits for the lease.
    await io(svc.queues.send_item, retry, delay=delay)
    await io(svc.ledger.finish, row, State.WAITING, error=str(exc), retry_at=retry.enqueued_at)
    log.info("step_retry", user=str(item.user), step=item.step, reason=exc.reason,
             delay=round(delay, 1), attempts=row.attempts, correlation_id=item.correlation_id)
    if row.attempts == STUCK_AFTER:
        svc.outcomes.record("stuck", user=str(item.user), step=item.step.value, reason=str(exc))
    return Handled("retry", str(item.user), str(exc))


async def _failed(svc: Service, item: WorkItem, row: LedgerRow, exc: PermanentError) -> None:
    exc.at(user=str(item.user), step=item.step.value)
    user: DirectoryUser | None = None
    if item.step is not Step.ROLE:
        try:
            user = await asyncio.to_thread(svc.directory().user, item.user)
        except ProvisioningError:
            user = None
    svc.ledger.finish(row, State.FAILED, error=str(exc),
                      fingerprint=fingerprint(user) if user else "")
    svc.outcomes.record(
        "failed",
        user=str(item.user),
        name=user.sam if user else exc.user,
        display_name=(user.display_name if user else "") or "",
        mail=(user.mail if user else "") or "",
        licence=(user.license_name if user else "") or "",
        usage_location=(user.country if user else "") or "",
        step=item.step.value,
        reason=exc.reason,
        fix=exc.fix,
        correlation_id=item.correlation_id,
    )
    log.warning("step_failed", user=str(item.user), step=item.step, reason=exc.reason,
                fix=exc.fix, correlation_id=item.correlation_id, outcome="failed")
    await _send_error_mail(svc, item, user, exc)


async def _send_error_mail(
    svc: Service, item: WorkItem, user: DirectoryUser | None, exc: ProvisioningError
) -> None:
    from .reports import FailureReport, render_error

    if svc.settings.mail.transport == "none":
        return
    report = FailureReport(
        username=user.sam if user else str(item.user),
        display_name=(user.display_name if user else None) or "",
        email=(user.mail if user else None) or "",
        licence=(user.license_name if user else None) or "",
        usage_location=(user.country if user else None) or "",
        step=item.step.value,
        error=exc.reason,
        fix=exc.fix,
        correlation_id=item.correlation_id,
    )
    try:
        await _send(svc, render_error(report))
    except ProvisioningError as mail_error:
        # The failure is in the ledger and the outcomes; the digest will list it.
        log.error("error_mail_failed", user=str(item.user), reason=str(mail_error))


async def _send(svc: Service, mail: Any) -> None:
    mailer = svc.mailer()
    result = mailer.send(mail)
    if asyncio.iscoroutine(result):
        await result


async def poisoned(svc: Service, queue: str, text: str, *, dequeue_count: int = 0) -> Handled:
    """A message the host gave up on: ledger entry, outcome (kept for ``cli redrive``) and
    alert. Never raises."""
    from .reports import PoisonReport, render_poison

    try:
        item: WorkItem | None = decode(text)
    except MalformedMessage as exc:
        item, reason = None, exc.reason
    else:
        reason = f"processing failed {dequeue_count or 'several'} times"
    user = str(item.user) if item else ""
    if item is not None:
        row = svc.ledger.get(item.user, item.key)
        if row is not None and row.state is not State.DONE:
            fp = ""
            if item.step is not Step.ROLE:
                with contextlib.suppress(ProvisioningError):
                    fp = fingerprint(await asyncio.to_thread(svc.directory().user, item.user))
            row.lease_until = None
            svc.ledger.finish(row, State.FAILED, error=f"poisoned: {reason}", fingerprint=fp)
    svc.outcomes.record("poison", queue=queue, user=user, message=text[:1024], reason=reason,
                        redriven=False)
    log.error("message_poisoned", queue=queue, user=user, reason=reason)
    if svc.settings.mail.transport != "none":
        report = PoisonReport(
            queue=queue, message_id="", reason=reason, dequeue_count=dequeue_count, user=user,
            content=text[:300], correlation_id=item.correlation_id if item else "",
        )
        try:
            await _send(svc, render_poison(report))
        except ProvisioningError as exc:
            log.error("alert_mail_failed", queue=queue, reason=str(exc))
    return Handled("poison", user, reason)


def redrive(svc: Service, queue: str) -> tuple[int, int]:
    """Re-enqueue, as new work items, the poisoned messages of ``queue`` not re-driven yet.
    Returns (re-driven, not ours)."""
    moved = skipped = 0
    for row in svc.outcomes.since("poison", ""):
        if row.get("queue") != queue or row.get("redriven"):
            continue
        try:
            old = decode(str(row.get("message", "")))
        except MalformedMessage:
            skipped += 1
        else:
            enqueue(svc, WorkItem(user=old.user, step=old.step, role=old.role,
                                  action=old.action, correlation_id=old.correlation_id))
            moved += 1
        svc.outcomes.update(row, redriven=True)
    return moved, skipped


# -- report and roles -------------------------------------------------------------------


def provisioned_row(outcome: dict[str, Any]) -> Any:
    """A digest row from a ``provisioned`` outcome."""
    from .reports import ProvisionedRow

    return ProvisionedRow(username=outcome.get("name", ""), email=outcome.get("mail", ""),
                          licence=outcome.get("licence", ""),
                          display_name=outcome.get("display_name", ""))


@dataclass(frozen=True)
class Report:
    users: int
    html: str = ""


async def report(svc: Service) -> Report:
    """Mail the digest of users provisioned since the last report."""
    from .reports import render_digest

    cursor = "report-provisioned"
    last = (svc.cursors.get(cursor) or b"").decode()
    rows = svc.outcomes.since("provisioned", last)
    if not rows:
        return Report(0)
    skus = await svc.graph().subscribed_skus()
    mail = render_digest(
        [provisioned_row(r) for r in rows],
        skus,
        since=last[:19] or None,
        until=now(),
    )
    if svc.settings.mail.transport != "none":
        await _send(svc, mail)
    svc.cursors.put(cursor, str(rows[-1]["RowKey"]).encode())
    log.info("report_sent", users=len(rows))
    return Report(len(rows), mail.html)


async def roles_cycle(svc: Service) -> list[WorkItem]:
    """Plan the role sync, apply the guards, enqueue one message per allowed change."""
    if not svc.settings.roles.enabled:
        return []
    from .rolesync import run_cycle

    result = await run_cycle(svc)
    items = [WorkItem(user=c.principal, step=Step.ROLE, role=c.role, action=c.action)
             for c in result.to_enqueue]
    for item in items:
        enqueue(svc, item)
    return items
