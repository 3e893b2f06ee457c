"""run --once's worker loop (``shared.flow.worker``) on queues in memory: when it stops (drained
means no message left anywhere, delayed ones included), that it handles what a handler parks,
and which Storage requests it makes while it waits. The handlers, timers and report are
stand-ins; the lab tests (test_flow.py, test_queues.py) run the real ones."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from shared.flow import worker
from shared.flow.timers import Report
from shared.flow.transitions import Handled
from shared.queues import Received


@dataclass
class Stored:
    raw: str
    visible_at: float
    message_id: str
    pop_receipt: str = ""
    dequeue_count: int = 0


@dataclass
class MemoryQueues:
    """Storage queues as the worker uses them: visibility, pop receipts, approximate count
    (the invisible messages included), and every request counted by kind and queue."""

    stored: dict[str, list[Stored]] = field(default_factory=dict)
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    ids: itertools.count[int] = field(default_factory=itertools.count)
    visible: dict[str, float] = field(default_factory=dict)  # as ``Queues.visible``

    def send(self, queue: str, raw: str, delay: float = 0.0) -> None:
        self.requests["send", queue] += 1
        self.stored.setdefault(queue, []).append(
            Stored(raw, time.monotonic() + delay, str(next(self.ids))))
        self.visible[queue] = max(self.visible.get(queue, 0.0), time.monotonic() + delay + 1)

    def to_poison(self, queue: str, raw: str) -> None:
        self.send(f"{queue}-poison", raw)

    def receive(self, queue: str, *, limit: int, visibility: int) -> list[Received]:
        self.requests["receive", queue] += 1
        now = time.monotonic()
        taken = [m for m in self.stored.get(queue, []) if m.visible_at <= now][:limit]
        for message in taken:
            message.visible_at, message.dequeue_count = now + visibility, message.dequeue_count + 1
            message.pop_receipt = str(next(self.ids))
        return [Received(queue, m.raw, m.raw, m.dequeue_count, m.message_id, m.pop_receipt)
                for m in taken]

    def delete(self, message: Received) -> bool:
        self.requests["delete", message.queue] += 1
        stored = self.stored.get(message.queue, [])
        mine = [m for m in stored if (m.message_id, m.pop_receipt) ==
                (message.message_id, message.pop_receipt)]
        for m in mine:
            stored.remove(m)
        return bool(mine)

    def depth(self, queue: str) -> int:
        self.requests["depth", queue] += 1
        return len(self.stored.get(queue, []))

    def asked(self, kind: str) -> Counter[str]:
        return Counter({q: n for (k, q), n in self.requests.items() if k == kind})


@pytest.fixture
def queues(monkeypatch: pytest.MonkeyPatch) -> MemoryQueues:
    """The worker's waits scaled down tenfold, its timers and report stubbed."""
    for name, value in (("IDLE_POLL", 0.05), ("MAX_IDLE", 0.5), ("PACE", 0.2),
                        ("RECHECK", 3.0)):
        monkeypatch.setattr(worker, name, value)

    async def no_timers(svc: Any) -> tuple[int, int]:
        return 0, 0

    async def no_report(svc: Any) -> Report:
        return Report(0)

    monkeypatch.setattr(worker, "every_timer", no_timers)
    monkeypatch.setattr(worker, "report", no_report)
    return MemoryQueues()


def _service(queues: MemoryQueues) -> Any:
    async def aclose() -> None:
        return None

    settings = SimpleNamespace(service=SimpleNamespace(lease_seconds=30),
                               graph=SimpleNamespace(concurrency=8),
                               exchange=SimpleNamespace(sessions=4))
    return SimpleNamespace(settings=settings, queues=queues, aclose=aclose)


def _handlers(monkeypatch: pytest.MonkeyPatch, queues: MemoryQueues,
              follow_delay: float = 0.0) -> tuple[list[tuple[str, str]], list[str]]:
    """A mailbox message sends its licence message after ``follow_delay`` s; a message that
    reads ``bad`` is parked, as ``handle`` parks what it cannot decode."""
    handled: list[tuple[str, str]] = []
    parked: list[str] = []

    async def handle(svc: Any, queue: str, raw: str) -> Handled:
        handled.append((queue, raw))
        if raw == "bad":
            queues.to_poison(queue, raw)
            return Handled("poison")
        if queue == "mailbox":
            queues.send("license", raw, delay=follow_delay)
        return Handled("done", raw)

    async def poisoned(svc: Any, queue: str, raw: str, *, dequeue_count: int = 0) -> Handled:
        parked.append(raw)
        return Handled("poison")

    monkeypatch.setattr(worker, "handle", handle)
    monkeypatch.setattr(worker, "poisoned", poisoned)
    return handled, parked


def test_run_once_waits_for_a_delayed_message_then_ends_drained(
    queues: MemoryQueues, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A licence message sent with a delay is invisible to every receive for that time; the
    run does not call itself drained meanwhile (the depth counts it), handles it when it
    shows, and then stops with nothing left on any queue."""
    handled, _ = _handlers(monkeypatch, queues, follow_delay=1.0)
    for n in range(40):
        queues.send("mailbox", f"u{n}")
    began = time.monotonic()
    summary = asyncio.run(worker.run_once(_service(queues), limit=30))
    assert (True, Counter(done=80)) == (summary.drained, +summary.outcomes)
    assert {f"u{n}" for n in range(40)} == {raw for q, raw in handled if q == "license"}
    assert 1.0 <= time.monotonic() - began < 5.0
    assert {} == {q: m for q, m in queues.stored.items() if m}


def test_a_message_a_handler_parks_is_handled_before_the_run_ends(
    queues: MemoryQueues, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``handle`` parks an undecodable message on the poison queue: the run looks at that
    poison queue again at once (not only every ``POISON_POLL``) and ends drained. The 40
    messages parked before the run are all handled too, more than one receive brings."""
    _, parked = _handlers(monkeypatch, queues)
    for n in range(40):
        queues.send("license-poison", f"old{n}")
    queues.send("mailbox", "bad")
    summary = asyncio.run(worker.run_once(_service(queues), limit=30))
    assert (True, Counter(poison=1)) == (summary.drained, +summary.outcomes)
    assert ["bad", *(f"old{n}" for n in range(40))] == sorted(parked, key=len)
    # at the start (license-poison: twice, 32 + 8), and mailbox-poison once it was parked
    assert Counter({"mailbox-poison": 2, "license-poison": 2, "roles-poison": 1}) == Counter(
        {q: n for q, n in queues.asked("receive").items() if q.endswith("-poison")})
    assert {} == {q: m for q, m in queues.stored.items() if m}


def test_waiting_for_delayed_messages_asks_storage_little(
    queues: MemoryQueues, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While only a delayed message is left (sent before the run, by another worker), the
    depth is asked of one queue at a time, the one holding it, not of all six; that queue is
    asked for messages at the usual pace (the depth said it holds some), the two that came
    back empty and that nobody here sent to only every ``RECHECK``; the poison queues are
    received from once, at the start, and their depth asked in the last check only."""
    _handlers(monkeypatch, queues)
    queues.send("license", "later", delay=2.0)
    queues.visible.clear()  # not this worker's
    summary = asyncio.run(worker.run_once(_service(queues), limit=30))
    assert summary.drained
    depths, receives = queues.asked("depth"), queues.asked("receive")
    assert Counter({"mailbox-poison": 1, "license-poison": 1, "roles-poison": 1}) == Counter(
        {q: n for q, n in depths.items() if q.endswith("-poison")})
    assert 1 == receives["license-poison"]
    # 2 s: the licence queue asked at 0.1, 0.2, 0.4, 0.5 s apart (MAX_IDLE scaled) until
    # the message shows, then once more; the others once (RECHECK scaled: 3 s)
    assert (1, 1) == (receives["mailbox"], receives["roles"])
    assert receives["license"] <= 9
    assert depths["license"] <= receives["license"]
    # mailbox: in the first check (before license) and the last; roles: in the last only
    assert (2, 1) == (depths["mailbox"], depths["roles"])


def test_asking_a_queue_again_depends_on_what_it_returned() -> None:
    """A full receive: again at once; one that was not full: after PACE; empty ones: after
    waits that double from 1 s up to MAX_IDLE."""
    asking = worker.Asking()
    asking.received(worker.RECEIVE, 99.9, 100.0)
    assert (100.0, False) == (asking.when(100.0), asking.dry)
    asking.received(3, 99.9, 100.0)
    assert (100.0 + worker.PACE, False) == (asking.when(100.0), asking.dry)
    waits = []
    for _ in range(5):
        asking.received(0, 99.9, 100.0)
        waits.append(asking.when(100.0) - 100.0)
    assert ([1.0, 2.0, 4.0, 5.0, 5.0], True) == (waits, asking.dry)
    asking.received(1, 99.9, 100.0)
    asking.received(0, 99.9, 100.0)
    assert 1.0 == asking.when(100.0) - 100.0


def test_an_empty_queue_nobody_here_sent_to_is_asked_every_recheck() -> None:
    """Empty since this worker's last message to it was visible: asked again after RECHECK,
    not MAX_IDLE. A message it sent that is visible only later, or a depth check that found
    messages (until a receive brings some), puts it back to the usual waits."""
    asking = worker.Asking()
    asking.received(0, 100.0, 100.1)
    assert 100.0 + worker.RECHECK == asking.when(visible=99.0)
    assert 101.1 == asking.when(visible=100.5)  # sent during the receive: maybe not seen
    asking.expected = True
    assert 101.1 == asking.when(visible=99.0)
    asking.received(0, 102.0, 102.1)
    assert 104.1 == asking.when(visible=99.0)  # still expected: nothing came yet
    asking.received(2, 104.0, 104.1)
    asking.received(0, 106.0, 106.1)
    assert 106.0 + worker.RECHECK == asking.when(visible=99.0)
