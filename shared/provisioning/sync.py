"""Asking for the sync instead of waiting for it (``SYNC_TRIGGER``).

After a remote mailbox is enabled, the user reaches Entra ID only when the sync runs: Entra
Connect's scheduler every 30 minutes by default. This module asks for it:

``connect``     ``Start-ADSyncSyncCycle -PolicyType Delta`` on the Connect server, over PSRP to
                a constrained endpoint that exposes that cmdlet alone (``CONNECT_*``), through
                the same client as Exchange (direct or relay). **Coalesced**: a delta cycle
                imports every change made before it started, so one trigger covers every user
                enabled before it was sent; users enabled while it was on its way wait for the
                next. Connect's answer while a cycle runs ("... - AAD is busy.") is not an
                error: the trigger is sent again after ``SYNC_BUSY_RETRY_SECONDS``.
``cloud-sync``  Graph's ``provisionOnDemand`` for each user (the Cloud Sync agent's
                synchronization job), at most 5 requests per 10 s, the rate the API page
                documents ("synchronizationJob: provisionOnDemand", Microsoft Graph v1.0);
                users beyond it wait their turn, or the next scheduled cycle.
``none``        nothing: the licence step waits for the schedule.

**Looking right away**: the licence message goes out with ``SYNC_WAIT_SECONDS`` of
invisibility (the fallback) and its reference is handed to ``request``; once the sync that
covers the user has ended (``connect``: the Connect server's scheduler, read every few seconds
while a triggered cycle runs; ``cloud-sync``: provisionOnDemand's answer) the message is made
visible now (``Queues.wake``). What decides: ``shared.provisioning.looks``.

``Coalescer`` decides when to send (pure, tested without peers); ``SyncTrigger`` sends, from a
task on the worker's event loop, so a handler never waits for it. A trigger is an optimisation,
never a promise: a worker that stops before its trigger went out leaves those users to the
schedule, and the licence step asks again when it finds a user not synced yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from shared.errors import PermanentError, ProvisioningError, TransientError
from shared.exchange.errors import record_error
from shared.log import get_logger

from .looks import POLL_SECONDS, SUCCESS, Scheduler, baseline, cycle_over

if TYPE_CHECKING:
    from collections.abc import Callable

    from shared.config import Settings
    from shared.exchange.client import ExchangeClient
    from shared.graph.client import GraphClient
    from shared.store.queues import MessageRef

log = get_logger(__name__)
STEP = "sync"
BUSY = "is busy"  # Connect: "Connector: <tenant>.onmicrosoft.com - AAD is busy."
# provisionOnDemand's documented rate: 5 requests per 10 seconds.
ON_DEMAND_REQUESTS = 5
ON_DEMAND_WINDOW = 10.0
FAILED_RETRY = 60.0  # s before a trigger that failed (not busy) is tried again


class Sent(StrEnum):
    SENT = "sent"
    BUSY = "busy"
    FAILED = "failed"


@dataclass
class Coalescer:
    """When to send the next delta-sync trigger. Times are seconds on one clock.

    ``request(at)``: a user was enabled at ``at`` and needs a cycle that starts after that.
    ``due(now)``: whether to send now. ``sent(started, answer, now)``: what the trigger sent at
    ``started`` got: covered every request before ``started`` (``SENT``), or not (busy,
    failed: the same requests are tried again later). ``again=True`` marks a request from a
    user still not synced: ignored while a trigger sent less than ``horizon`` s ago may yet
    bring them."""

    settle: float
    busy_retry: float
    horizon: float = 0.0
    first_pending: float | None = None
    last_request: float | None = None
    next_at: float | None = None
    last_sent: float | None = None

    def request(self, at: float, *, again: bool = False) -> None:
        if again and self.last_sent is not None and at - self.last_sent < self.horizon:
            return
        self.last_request = at if self.last_request is None else max(self.last_request, at)
        if self.first_pending is None:
            self.first_pending = at
            self.next_at = at + self.settle

    def due(self, now: float) -> bool:
        return self.next_at is not None and now >= self.next_at

    def sent(self, started: float, answer: Sent, now: float) -> None:
        if answer is Sent.BUSY:
            self.next_at = now + self.busy_retry
            return
        if answer is Sent.FAILED:
            self.next_at = now + max(self.busy_retry, FAILED_RETRY)
            return
        self.last_sent = started
        if self.last_request is not None and self.last_request >= started:
            # Enabled while the trigger was on its way: the cycle may have begun without them.
            self.first_pending, self.next_at = self.last_request, now + self.settle
        else:
            self.first_pending = self.next_at = None

    def ended(self) -> None:
        """The cycle a trigger started has ended: a user still not synced after it needs a
        new one (a failed cycle, a change it did not import), at once."""
        self.last_sent = None


@dataclass
class Pacer:
    """At most ``limit`` sends per ``window`` seconds (a sliding window), for provisionOnDemand."""

    limit: int = ON_DEMAND_REQUESTS
    window: float = ON_DEMAND_WINDOW
    sent_at: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0

    def wait(self, now: float) -> float:
        """Seconds until one more may be sent (0: now)."""
        while self.sent_at and now - self.sent_at[0] >= self.window:
            self.sent_at.popleft()
        wait = max(0.0, self.blocked_until - now)
        if len(self.sent_at) >= self.limit:
            wait = max(wait, self.sent_at[0] + self.window - now)
        return wait

    def took(self, now: float) -> None:
        self.sent_at.append(now)


def connect_answer(client: ExchangeClient) -> Sent:
    """``Start-ADSyncSyncCycle -PolicyType Delta``: SENT, or BUSY while a cycle runs. Raises
    the Exchange client's errors (transport) and a ProvisioningError for any other refusal."""
    result = client.invoke("Start-ADSyncSyncCycle", [("PolicyType", "Delta")])
    if result.errors:
        if BUSY in str(result.errors[0]):
            return Sent.BUSY
        raise record_error("Start-ADSyncSyncCycle", "Delta", result.errors).at(step=STEP)
    return Sent.SENT


def scheduler(client: ExchangeClient) -> Scheduler | None:
    """``Get-ADSyncScheduler`` on the Connect server; None when it cannot be read (an endpoint
    registered before it exposed the cmdlet: the fallback wait holds). Raises the Exchange
    client's transport errors."""
    result = client.invoke("Get-ADSyncScheduler", [])
    if result.errors or not result.output:
        return None
    props: dict[str, Any] = {}
    for bag in ("adapted_properties", "extended_properties"):
        props.update(getattr(result.output[0], bag, None) or {})
    running = props.get("SyncCycleInProgress")
    if running is None:
        return None
    return Scheduler(in_progress=running is True or str(running).lower() == "true",
                     next_start=str(props.get("NextSyncCycleStartTimeInUTC") or ""))


async def provision_on_demand(graph: GraphClient, settings: Settings, dn: str) -> str:
    """One user through Cloud Sync now; the result Graph reports (Success, Skipped, ...)."""
    import json

    s = settings.sync
    path = (f"servicePrincipals/{s.cloud_sync_service_principal_id}/synchronization/jobs/"
            f"{s.cloud_sync_job_id}/provisionOnDemand")
    body = {"parameters": [{"ruleId": s.cloud_sync_rule_id,
                            "subjects": [{"objectId": dn, "objectTypeName": "user"}]}]}
    answer = await graph.call("POST", path, body=body, action="provisionOnDemand", user=dn)
    try:
        key = json.loads(str(answer.get("key") or "{}"))
    except ValueError:
        key = {}
    return str(key.get("result", "Unknown")) if isinstance(key, dict) else "Unknown"


class SyncTrigger:
    """Sends the triggers ``SYNC_TRIGGER`` asks for, from a task on one event loop."""

    def __init__(self, settings: Settings, connect: ExchangeClient | None,
                 graph: GraphClient | None,
                 wake: Callable[[MessageRef], bool] | None = None) -> None:
        self.settings = settings
        s = settings.sync
        self.mode = s.trigger
        self.coalescer = Coalescer(settle=s.settle_seconds, busy_retry=s.busy_retry_seconds,
                                   horizon=s.wait_seconds)
        self.pacer = Pacer()
        self.users: deque[str] = deque()  # cloud-sync: DNs waiting for provisionOnDemand
        self.queued: set[str] = set()
        self._connect = connect
        self._graph = graph
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.counts = {"sent": 0, "busy": 0, "failed": 0, "on_demand": 0, "woken": 0,
                       "polls": 0}
        self._wake_message = wake
        self.waiting: list[tuple[float, MessageRef]] = []  # connect: no trigger sent for them yet
        # a sent trigger: its baseline, whether a read saw its cycle run, the messages it covers
        self.riding: list[tuple[str, bool, list[MessageRef]]] = []
        self.refs: dict[str, MessageRef] = {}  # cloud-sync: the licence message of each DN
        self.exports: dict[str, str] = {}  # cloud-sync: provisionOnDemand's last answer per DN
        self.watchable = True  # connect: the scheduler can be read
        self._read_at = 0.0  # when it was last read (monotonic)

    def request(self, dn: str, *, again: bool = False, wake: MessageRef | None = None) -> None:
        """A user (by DN) needs a sync; ``wake`` is their licence message, made visible once
        that sync has ended. Returns at once."""
        if self.mode == "none":
            return
        at = time.monotonic()
        if self.mode == "connect":
            self.coalescer.request(at, again=again)
            if wake is not None and again and self.riding and not self.waiting:
                # A look again while our cycle runs (the fallback wait ran out first): that
                # cycle imported the user's change, so its end wakes the retry too.
                self.riding[-1][2].append(wake)
            elif wake is not None:
                self.waiting.append((at, wake))
        elif dn:
            if wake is not None:  # the newest: an older one was received or woken already
                self.refs[dn] = wake
            if dn not in self.queued:
                self.queued.add(dn)
                self.users.append(dn)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            wait = await (self._connect_once() if self.mode == "connect" else self._on_demand())
            if wait is None:
                return  # nothing pending: a new request starts the task again
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.05))

    async def _connect_once(self) -> float | None:
        c = self.coalescer
        if self.riding and time.monotonic() >= self._read_at + POLL_SECONDS:
            await self._watch()  # every few seconds, however often users are added meanwhile
        now = time.monotonic()
        poll = max(0.0, self._read_at + POLL_SECONDS - now) if self.riding else None
        if c.next_at is None:
            return poll
        if not c.due(now):
            return c.next_at - now if poll is None else min(c.next_at - now, poll)
        assert self._connect is not None
        started = time.monotonic()
        before: Scheduler | None = None
        try:
            before = await self._read_scheduler()
            if before is not None and baseline(before) is None:  # a cycle runs: wait for it
                answer = Sent.BUSY
            else:
                answer = await asyncio.to_thread(connect_answer, self._connect)
        except ProvisioningError as exc:
            answer = Sent.FAILED
            log.warning("sync_trigger_failed", step=STEP, reason=exc.reason, fix=exc.fix,
                        permanent=isinstance(exc, PermanentError))
        c.sent(started, answer, time.monotonic())
        if answer is Sent.BUSY and before is not None:
            c.next_at = time.monotonic() + POLL_SECONDS  # asked again once it has ended
        if answer is Sent.SENT:
            covered = [ref for at, ref in self.waiting if at < started]
            self.waiting = [(at, ref) for at, ref in self.waiting if at >= started]
            if before is not None:
                self.riding.append((before.next_start, False, covered))
        self.counts[answer.value] += 1
        log.info("sync_triggered", step=STEP, answer=answer.value, trigger="connect")
        return 0.0 if c.next_at is not None or self.riding else None

    async def _read_scheduler(self) -> Scheduler | None:
        """The scheduler's state, or None (not readable: the fallback wait holds)."""
        if not self.watchable:
            return None
        assert self._connect is not None
        self.counts["polls"] += 1
        self._read_at = time.monotonic()
        try:
            reading = await asyncio.to_thread(scheduler, self._connect)
        except ProvisioningError as exc:
            log.warning("sync_scheduler_unreadable", step=STEP, reason=exc.reason, fix=exc.fix)
            return None
        if reading is None:
            self.watchable = False
            log.warning("sync_scheduler_unreadable", step=STEP,
                        reason="Get-ADSyncScheduler is not available on the Connect endpoint",
                        fix="add Get-ADSyncScheduler to the endpoint's VisibleCmdlets "
                        "(docs/permissions.md); until then the licence step waits "
                        "SYNC_WAIT_SECONDS")
        return reading

    async def _watch(self) -> None:
        """Read the scheduler once; wake the messages of every triggered cycle that ended."""
        reading = await self._read_scheduler()
        if reading is None:
            self.riding = [] if not self.watchable else self.riding
            return
        seen = [(b, ran or reading.in_progress, refs) for b, ran, refs in self.riding]
        ended = [refs for b, ran, refs in seen if cycle_over(b, reading, ran)]
        self.riding = [(b, ran, refs) for b, ran, refs in seen if not cycle_over(b, reading, ran)]
        if ended:
            self.coalescer.ended()
            log.info("sync_cycle_ended", step=STEP, trigger="connect",
                     users=sum(len(refs) for refs in ended))
        for refs in ended:
            await self._wake_all(refs)

    async def _wake_all(self, refs: list[MessageRef]) -> None:
        """Make these licence messages visible now, a few at a time."""
        if self._wake_message is None or not refs:
            return
        wake = self._wake_message
        gate = asyncio.Semaphore(8)

        async def one(ref: MessageRef) -> None:
            async with gate:
                try:
                    if await asyncio.to_thread(wake, ref):
                        self.counts["woken"] += 1
                except Exception as exc:  # the fallback wait still holds for this one
                    log.warning("sync_wake_failed", step=STEP, error=type(exc).__name__)

        await asyncio.gather(*(one(ref) for ref in refs))

    async def _on_demand(self) -> float | None:
        if not self.users:
            return None
        wait = self.pacer.wait(time.monotonic())
        if wait > 0:
            return wait
        dn = self.users.popleft()
        assert self._graph is not None
        self.pacer.took(time.monotonic())
        try:
            result = await provision_on_demand(self._graph, self.settings, dn)
        except TransientError as exc:  # throttled or down: this user waits their turn again
            self.users.appendleft(dn)
            self.pacer.blocked_until = time.monotonic() + (exc.retry_after or ON_DEMAND_WINDOW)
            log.info("sync_on_demand_retry", step=STEP, user=dn, reason=exc.reason)
            return 0.0
        except ProvisioningError as exc:
            result = "Failed"
            log.warning("sync_on_demand_failed", step=STEP, user=dn, reason=exc.reason,
                        fix=exc.fix)
        self.queued.discard(dn)
        if result == SUCCESS:
            self.exports.pop(dn, None)
        else:
            self.exports[dn] = result
        self.counts["on_demand"] += 1
        log.info("sync_triggered", step=STEP, user=dn, answer=result, trigger="cloud-sync")
        ref = self.refs.pop(dn, None)
        if ref is not None:  # exported or not, it is known now: the licence step looks
            await self._wake_all([ref])
        return 0.0

    async def close(self) -> None:
        """Stop the task (what it had not sent is left to the schedule)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._connect is not None:
            await asyncio.to_thread(self._connect.close)
