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

from shared.messages import QUEUES, Step, poison_queue
from shared.queues import Received
from shared.storage import THREADS

from .handlers import handle, io, log, poisoned
from .service import Service
from .timers import Report, every_timer, report

if TYPE_CHECKING:
    from rich.progress import Progress

MAX_DEQUEUE, WORK_QUEUES = 5, tuple(QUEUES.values())  # as host.json's maxDequeueCount
IDLE_POLL, MAX_IDLE = 0.5, 5.0  # an empty queue is asked again after 0.5 s, doubling to 5 s
POISON_POLL = 30.0  # s between looks at the poison queues while work runs


@dataclass
class Summary:
    outcomes: Counter[str] = field(default_factory=Counter)
    enqueued: int = 0
    report: Report = field(default_factory=lambda: Report(0))
    drained: bool = False
    seconds: float = 0.0


async def run_once(
    svc: Service, *, limit: float, progress: Progress | None = None
) -> Summary:
    """Poll, reconcile and plan roles, then work the queues until drained or ``limit`` s.

    Each queue is a pipeline of its own: a message starts as soon as its queue has a free
    slot, not when a whole batch is done, so one slow Exchange cmdlet holds up nobody. The
    slots: twice ``EXCHANGE_SESSIONS`` for mailboxes (a handler waits for a session only while
    another one's cmdlet runs, and does its storage writes without one), ``GRAPH_CONCURRENCY``
    for licences and roles. An idle queue is asked less and less often, up to every 5 s."""
    started = time.monotonic()
    summary = Summary()
    enqueued, failed = await every_timer(svc)
    summary.enqueued += enqueued
    summary.outcomes["timer-failed"] += failed
    task = progress.add_task("provisioning", total=None) if progress else None
    # Handlers wait on Exchange, LDAP and storage in threads: more threads than the default
    # (cores + 4), or Exchange sessions would starve the storage calls. The storage clients
    # keep a connection for each of them.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(THREADS, "worker"))
    lease = int(svc.settings.service.lease_seconds)
    slots = dict.fromkeys(WORK_QUEUES, svc.settings.graph.concurrency)
    slots[QUEUES[Step.MAILBOX]] = 2 * svc.settings.exchange.sessions
    running: dict[str, set[asyncio.Task[None]]] = {queue: set() for queue in WORK_QUEUES}
    waiting: dict[str, list[Received]] = {queue: [] for queue in WORK_QUEUES}
    quiet_until = dict.fromkeys(WORK_QUEUES, 0.0)  # an empty queue is asked again after this
    empty = dict.fromkeys(WORK_QUEUES, IDLE_POLL)  # ... each queue's own, doubling up to 5 s
    next_poison, idle = 0.0, IDLE_POLL  # as the host's polling interval grows

    async def one(message: Received) -> None:
        try:
            handled = await handle(svc, message.queue, message.raw)
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
            summary.outcomes["crashed"] += 1
            return
        if not await io(svc.queues.delete, message):
            log.info("message_redelivered", queue=message.queue, user=handled.user,
                     why="handled after its visibility ran out; the ledger held the copy")
        summary.outcomes[handled.outcome] += 1
        if progress is not None and task is not None:
            progress.update(task, advance=1, description=_describe(summary))

    while time.monotonic() - started < limit:
        moved = 0  # messages received or parked in this round
        if time.monotonic() >= next_poison:
            # First, so that a parked message's failure is on record before new work starts.
            next_poison = time.monotonic() + POISON_POLL
            moved += await _poisoned(svc, lease)
        for queue in WORK_QUEUES:
            # One receive of up to 32 serves several rounds (they stay invisible for the
            # lease); refill when it is used up and half the slots are free.
            if (not waiting[queue] and time.monotonic() >= quiet_until[queue]
                    and slots[queue] - len(running[queue]) >= max(1, slots[queue] // 2)):
                waiting[queue] = await io(svc.queues.receive, queue, limit=32,
                                          visibility=lease)
                empty[queue] = IDLE_POLL if waiting[queue] else min(MAX_IDLE, empty[queue] * 2)
                quiet_until[queue] = 0.0 if waiting[queue] else time.monotonic() + empty[queue]
                moved += len(waiting[queue])
            while waiting[queue] and len(running[queue]) < slots[queue]:
                started_task = asyncio.create_task(one(waiting[queue].pop(0)))
                running[queue].add(started_task)
                started_task.add_done_callback(running[queue].discard)
        busy = set().union(*running.values())
        if not busy:
            if moved:  # what this round took may have finished already, and sent more
                idle = IDLE_POLL
                continue
            depths = [await io(svc.queues.depth, q)
                      for q in (*WORK_QUEUES, *map(poison_queue, WORK_QUEUES))]
            if not any(depths):
                summary.drained = True
                break
            next_poison = 0.0 if any(depths[len(WORK_QUEUES):]) else next_poison
            await asyncio.sleep(idle)  # only delayed or in-flight messages are left
            idle = min(MAX_IDLE, idle * 2)
            continue
        idle = IDLE_POLL
        await asyncio.wait(busy, timeout=IDLE_POLL, return_when=asyncio.FIRST_COMPLETED)
    for leftover in set().union(*running.values()):  # past the limit: let started work finish
        await leftover
    summary.report = await report(svc)
    summary.seconds = time.monotonic() - started
    await svc.aclose()
    return summary


async def _poisoned(svc: Service, lease: int) -> int:
    """What the *-poison functions do in Azure, for the messages parked now; returns how many."""
    handled = 0
    for queue in WORK_QUEUES:
        for message in await io(svc.queues.receive, poison_queue(queue), limit=32,
                                visibility=lease):
            await poisoned(svc, queue, message.raw, dequeue_count=message.dequeue_count)
            await io(svc.queues.delete, message)
            handled += 1
    return handled


def _describe(summary: Summary) -> str:
    return "provisioning: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.outcomes.items()))
