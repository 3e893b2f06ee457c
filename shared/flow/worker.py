"""The worker of ``python -m shared.cli run --once``: the queues worked as the Functions host
would work them, message by message through the same handlers, until every queue is drained
or a time limit passes."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from azure.core.exceptions import ServiceRequestError, ServiceResponseError

from shared.store.clients import THREADS
from shared.store.messages import QUEUES, Step, poison_queue
from shared.store.pause import HALF_OF_STEP
from shared.store.queues import Received

from .handlers import handle, log, poisoned
from .service import Service, io
from .timers import Report, every_timer, report

if TYPE_CHECKING:
    from rich.progress import Progress

MAX_DEQUEUE, WORK_QUEUES = 5, tuple(QUEUES.values())  # as host.json's maxDequeueCount
RECEIVE = 32  # messages asked for at once: Storage's most
IDLE_POLL, MAX_IDLE = 0.5, 5.0  # an empty queue is asked again after 1 s, doubling to 5 s
PACE = 2.0  # s before a queue whose last receive was not full is asked again
# s at most between depth checks while only delayed messages are left, and between asking a
# queue that came back empty and that only another worker can have filled
RECHECK = 30.0
POISON_POLL = 300.0  # s between looks at poison queues nobody told us about (other workers)


@dataclass
class Asking:
    """When to ask one work queue for messages again, from what its last receive returned."""

    at: float = 0.0  # not before this (time.monotonic())
    wait: float = IDLE_POLL  # after an empty receive: doubling up to MAX_IDLE
    dry: bool = False  # the last receive came back empty
    asked: float = 0.0  # when the last receive was sent
    expected: bool = False  # a depth check found messages no receive has brought since

    def received(self, count: int, asked: float, now: float) -> None:
        """A full receive leaves more behind: ask again as soon as slots are free. One that
        was not full took what there was: the queue is given ``PACE`` to fill up, so the next
        receive brings more than one or two messages (a message waits at most that long). An
        empty one: waits that double, as the host's polling interval grows."""
        self.dry = count == 0
        if count:
            self.wait = IDLE_POLL
            self.at = now if count >= RECEIVE else now + PACE
        else:
            self.wait = min(MAX_IDLE, self.wait * 2)
            self.at = now + self.wait
        self.asked, self.expected = asked, self.expected and not count

    def when(self, visible: float) -> float:
        """When to ask next, given when the last message this worker sent to the queue is
        visible. A queue that came back empty after that, and on which no depth check found
        messages, is asked only every ``RECHECK`` s: only another worker (or an operator) can
        have filled it."""
        if self.dry and not self.expected and self.asked > visible:
            return max(self.at, self.asked + RECHECK)
        return self.at


@dataclass
class Summary:
    outcomes: Counter[str] = field(default_factory=Counter)
    enqueued: int = 0
    report: Report = field(default_factory=lambda: Report(0))
    drained: bool = False
    seconds: float = 0.0
    paused: tuple[str, ...] = ()  # queues left alone: their half is paused


async def run_once(
    svc: Service, *, limit: float, progress: Progress | None = None
) -> Summary:
    """Poll, reconcile and plan roles, then work the queues until drained or ``limit`` s.

    Each queue is a pipeline of its own: a message starts as soon as its queue has a free
    slot, not when a whole batch is done, so one slow Exchange cmdlet holds up nobody. The
    slots: twice ``EXCHANGE_SESSIONS`` for mailboxes (a handler waits for a session only while
    another one's cmdlet runs, and does its storage writes without one), ``GRAPH_CONCURRENCY``
    for licences and roles.

    Every request to Storage counts (issue 17: at most 8 per user, and the user's own work
    takes 8.0), so the loop asks only what it needs to know: a queue whose last receive was
    not full is given ``PACE`` to fill up; an empty one is asked less and less often, up to
    every 5 s, or every ``RECHECK`` once this worker's own messages to it were all visible
    and no depth check found others; the poison queues are looked at first, then after a
    handler parked a message (or every ``POISON_POLL`` for other workers'); and depths only
    once nothing runs and every queue came back empty, one queue at a time until one holds
    messages. Drained means what it always did: no message left on any queue or poison
    queue, visible or not."""
    started = time.monotonic()
    summary = Summary()
    # A paused half's queues are left alone: their messages wait for ``resume``.
    paused = await io(svc.pauses.read)
    summary.paused = tuple(QUEUES[step] for step, half in HALF_OF_STEP.items() if half in paused)
    active = tuple(queue for queue in WORK_QUEUES if queue not in summary.paused)
    if not active:
        summary.drained = True
        summary.seconds = time.monotonic() - started
        await svc.aclose()
        return summary
    enqueued, failed = await every_timer(svc)
    summary.enqueued += enqueued
    summary.outcomes["timer-failed"] += failed
    task = progress.add_task("provisioning", total=None) if progress else None
    # Handlers wait on Exchange, LDAP and storage in threads: more threads than the default
    # (cores + 4), or Exchange sessions would starve the storage calls. The storage clients
    # keep a connection for each of them.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(THREADS, "worker"))
    lease = int(svc.settings.service.lease_seconds)
    slots = dict.fromkeys(active, svc.settings.graph.concurrency)
    slots[QUEUES[Step.MAILBOX]] = 2 * svc.settings.exchange.sessions
    running: dict[str, set[asyncio.Task[None]]] = {queue: set() for queue in active}
    waiting: dict[str, list[Received]] = {queue: [] for queue in active}
    asking = {queue: Asking() for queue in active}
    # Depth checks, queue by queue until one holds messages: the one that did last time first.
    order = [*active, *map(poison_queue, active)]
    # Work queues whose poison twin to look at: all at the start, then where a handler parked.
    parked = set(active)
    next_poison = next_depth = 0.0
    idle = IDLE_POLL  # between depth checks while nothing runs, doubling up to RECHECK

    def visible(queue: str) -> float:  # when the last message this worker sent to it is
        return svc.queues.visible.get(queue, 0.0)

    async def one(message: Received) -> None:
        try:
            handled = await handle(svc, message.queue, message.raw,
                                   inserted_at=message.inserted_on)
        except (ServiceRequestError, ServiceResponseError) as exc:
            # Storage dropped a connection mid-step (a server may close an idle keep-alive
            # connection just as the client reuses it): not a bug. The message comes back
            # after its visibility, and the steps are idempotent.
            log.warning("storage_unreachable", queue=message.queue, reason=str(exc),
                        fix="none needed; the message is retried after its visibility")
            summary.outcomes["retry"] += 1
            return
        except Exception:  # a bug: leave the message for a retry, then the poison queue
            log.exception("handler_crashed", queue=message.queue)
            if message.dequeue_count >= MAX_DEQUEUE:
                await io(svc.queues.to_poison, message.queue, message.raw)
                await io(svc.queues.delete, message)
                parked.add(message.queue)
            summary.outcomes["crashed"] += 1
            return
        if not await io(svc.queues.delete, message):
            log.info("message_redelivered", queue=message.queue, user=handled.user,
                     why="handled after its visibility ran out; the ledger held the copy")
        summary.outcomes[handled.outcome] += 1
        if handled.outcome == "poison":  # handle() parked it
            parked.add(message.queue)
        if progress is not None and task is not None:
            progress.update(task, advance=1, description=_describe(summary))

    while time.monotonic() - started < limit:
        moved = 0  # messages received or parked in this round
        if time.monotonic() >= next_poison:
            parked.update(active)
            next_poison = time.monotonic() + POISON_POLL
        if parked:
            # First, so that a parked message's failure is on record before new work starts.
            due = [queue for queue in active if queue in parked]
            parked.difference_update(due)  # a handler may park another meanwhile
            moved += await _poisoned(svc, lease, due)
        for queue in active:
            # One receive of up to 32 serves several rounds (they stay invisible for the
            # lease); refill when it is used up and half the slots are free.
            asked = time.monotonic()
            if (not waiting[queue] and asked >= asking[queue].when(visible(queue))
                    and slots[queue] - len(running[queue]) >= max(1, slots[queue] // 2)):
                waiting[queue] = await io(svc.queues.receive, queue, limit=RECEIVE,
                                          visibility=lease)
                asking[queue].received(len(waiting[queue]), asked, time.monotonic())
                moved += len(waiting[queue])
            while waiting[queue] and len(running[queue]) < slots[queue]:
                started_task = asyncio.create_task(one(waiting[queue].pop(0)))
                running[queue].add(started_task)
                started_task.add_done_callback(running[queue].discard)
        busy = set().union(*running.values())
        if busy or moved:  # what this round took may have finished already, and sent more
            idle, next_depth = IDLE_POLL, 0.0
            if busy:
                await asyncio.wait(busy, timeout=IDLE_POLL, return_when=asyncio.FIRST_COMPLETED)
            continue
        if all(a.dry for a in asking.values()) and time.monotonic() >= next_depth:
            # Nothing runs and every queue came back empty: drained, unless messages are
            # left that no receive can see yet (delayed, or in another worker's hands), or
            # parked. The depth counts those too.
            left = await _holding(svc, order)
            if left is None:
                summary.drained = True
                break
            order.insert(0, order.pop(order.index(left)))
            if left in asking:
                asking[left].expected = True
            parked.update(q for q in active if left == poison_queue(q))
            next_depth, idle = time.monotonic() + idle, min(RECHECK, idle * 2)
        if not parked:  # wait for the first queue that is due to be asked again
            wake = min(asking[q].when(visible(q)) for q in active)
            await asyncio.sleep(max(0.0, wake - time.monotonic()))
    for leftover in set().union(*running.values()):  # past the limit: let started work finish
        await leftover
    summary.report = await report(svc)
    summary.seconds = time.monotonic() - started
    await svc.aclose()
    return summary


async def _holding(svc: Service, queues: list[str]) -> str | None:
    """The first of ``queues`` that holds any message, visible or not; None if all are empty."""
    for queue in queues:
        if await io(svc.queues.depth, queue):
            return queue
    return None


async def _poisoned(svc: Service, lease: int, queues: list[str]) -> int:
    """What the *-poison functions do in Azure, for the messages parked now on the poison
    twins of ``queues``; returns how many."""
    handled = 0
    for queue in queues:
        batch = RECEIVE
        while batch == RECEIVE:  # a full receive may have left more behind
            messages = await io(svc.queues.receive, poison_queue(queue), limit=RECEIVE,
                                visibility=lease)
            for message in messages:
                await poisoned(svc, queue, message.raw, dequeue_count=message.dequeue_count)
                await io(svc.queues.delete, message)
            handled, batch = handled + len(messages), len(messages)
    return handled


def _describe(summary: Summary) -> str:
    return "provisioning: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.outcomes.items()))
