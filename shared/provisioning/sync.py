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
from typing import TYPE_CHECKING

from shared.errors import PermanentError, ProvisioningError, TransientError
from shared.exchange.errors import record_error
from shared.log import get_logger

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.exchange.client import ExchangeClient
    from shared.graph.client import GraphClient

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
                 graph: GraphClient | None) -> None:
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
        self.counts = {"sent": 0, "busy": 0, "failed": 0, "on_demand": 0}

    def request(self, dn: str, *, again: bool = False) -> None:
        """A user (by DN) needs a sync; returns at once."""
        if self.mode == "none":
            return
        if self.mode == "connect":
            self.coalescer.request(time.monotonic(), again=again)
        elif dn and dn not in self.queued:
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
        now = time.monotonic()
        if c.next_at is None:
            return None
        if not c.due(now):
            return c.next_at - now
        assert self._connect is not None
        started = time.monotonic()
        try:
            answer = await asyncio.to_thread(connect_answer, self._connect)
        except ProvisioningError as exc:
            answer = Sent.FAILED
            log.warning("sync_trigger_failed", step=STEP, reason=exc.reason, fix=exc.fix,
                        permanent=isinstance(exc, PermanentError))
        c.sent(started, answer, time.monotonic())
        self.counts[answer.value] += 1
        log.info("sync_triggered", step=STEP, answer=answer.value, trigger="connect")
        return 0.0 if c.next_at is not None else None

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
        self.counts["on_demand"] += 1
        log.info("sync_triggered", step=STEP, user=dn, answer=result, trigger="cloud-sync")
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
