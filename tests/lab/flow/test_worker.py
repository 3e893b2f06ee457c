"""run --once's worker loop (``shared.flow.worker``): when it stops (drained means no message
left anywhere, delayed ones included), that it handles what a handler parks, and which Storage
requests it makes while it waits.

The loop runs against the lab's Azurite through the real ``Queues`` of a real ``flow.Service``,
with the real ``handle``, ``poisoned`` and ``report``; the requests are counted where requests'
HTTP adapter sends them (as ``bench/e2e.py``'s ``StorageMeter`` does), so each one counted went
to Azurite. The messages are ones whose real handling is cheap: undecodable ones (parked, then
recorded with an alert), and licence messages the ledger says another worker holds or a newer
message replaced (sent back delayed, or dropped). Only ``every_timer`` is a stand-in (see
``service``). The ``Asking`` tests at the end are pure logic and need no peer."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from requests.adapters import HTTPAdapter

from shared import flow
from shared.config import Settings
from shared.flow import worker
from shared.store.clients import queue_service
from shared.store.ledger import State, Verdict, now
from shared.store.messages import Step, WorkItem, poison_queue
from shared.store.queues import Queues

QUEUES = (*worker.WORK_QUEUES, *map(poison_queue, worker.WORK_QUEUES))


class StorageRequests:
    """The queue requests this process sends to Storage, by kind and queue, counted as
    requests' adapter sends them (the storage clients' sessions are requests sessions)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint.rstrip("/") + "/"
        self.counts: Counter[tuple[str, str]] = Counter()
        self.delays: list[int] = []  # of the messages sent, in s (visibilitytimeout)
        self.lock = threading.Lock()  # the worker's threads send at once

    def count(self, method: str, url: str) -> None:
        if not url.startswith(self.endpoint):
            return  # tables, Graph, ...
        parts = urlsplit(url)
        path = url[len(self.endpoint):].split("?", 1)[0].split("/")
        query = parse_qs(parts.query)
        queue, messages = path[0], path[1:2] == ["messages"]
        if messages and method == "GET":
            kind = "peek" if query.get("peekonly") == ["true"] else "receive"
        elif messages and method == "POST":
            kind = "send"
        elif messages and method == "DELETE":
            kind = "delete" if len(path) > 2 else "clear"
        elif not messages and method == "GET" and query.get("comp") == ["metadata"]:
            kind = "depth"
        else:
            kind = f"{method} {'/'.join(path)}"
        with self.lock:
            self.counts[kind, queue] += 1
            if kind == "send":
                self.delays.append(int(query.get("visibilitytimeout", ["0"])[0]))

    def asked(self, kind: str) -> Counter[str]:
        return Counter({q: n for (k, q), n in self.counts.items() if k == kind})

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()
            self.delays.clear()


@pytest.fixture
def requests_sent(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> StorageRequests:
    """Every queue request of this process, counted (and then sent as usual)."""
    assert settings.storage.connection is not None  # the lab's Azurite
    fields = dict(part.split("=", 1) for part in
                  settings.storage.connection.get_secret_value().split(";") if "=" in part)
    meter = StorageRequests(fields["QueueEndpoint"])
    send = HTTPAdapter.send

    def counted(adapter: HTTPAdapter, request: Any, *args: Any, **kwargs: Any) -> Any:
        meter.count(str(request.method), str(request.url))
        return send(adapter, request, *args, **kwargs)

    monkeypatch.setattr(HTTPAdapter, "send", counted)
    return meter


@pytest.fixture
def service(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[flow.Service]:
    """A worker's service from the lab's settings, its six queues emptied before and after.

    The worker's waits are scaled down (MAX_IDLE 0.5 s, PACE 0.2 s, RECHECK 5 s). The timers
    are a stand-in that finds nothing: the real ones poll and reconcile the lab's AD groups,
    which every lab test shares, and would enqueue whatever other tests left there (and plan
    roles against Graph): other work on the queues these tests count. test_flow.py and
    test_queues.py run them for real."""
    for name, value in (("IDLE_POLL", 0.05), ("MAX_IDLE", 0.5), ("PACE", 0.2),
                        ("RECHECK", 5.0)):
        monkeypatch.setattr(worker, name, value)

    async def no_timers(svc: flow.Service) -> tuple[int, int]:
        return 0, 0

    monkeypatch.setattr(worker, "every_timer", no_timers)
    svc = flow.Service.build(settings)
    for queue in QUEUES:
        svc.queues.client(queue).clear_messages()
    yield svc
    for queue in QUEUES:
        svc.queues.client(queue).clear_messages()
    svc.close()


@pytest.fixture
def other_worker(settings: Settings) -> Queues:
    """The queues as another worker (or the Functions host) writes to them: sends of its own,
    which this worker's ``Queues.visible`` knows nothing about."""
    return Queues(queue_service(settings.storage))


def _depths(svc: flow.Service) -> dict[str, int]:
    return {queue: n for queue in QUEUES if (n := svc.queues.depth(queue))}


def _replaced(svc: flow.Service, sender: Queues, *, delay: float = 0.0,
              held_until: dt.datetime | None = None) -> WorkItem:
    """A licence message, sent by ``sender``, of a user with no AD account whose ledger row
    already names a newer message: the real handler drops it as stale, touching nothing but
    the ledger. "Newer" is by the storage service's insertion time, never the body's: the newer
    message is recorded as stored ten minutes after this one, so that this message, and every
    copy the handler sends back while a lease lasts (each stored anew, a few seconds later),
    stays the older one. With ``held_until``, another worker holds that user's lease until
    then: the handler sends the message back, delayed until the lease ends (at least 1 s),
    instead."""
    old = WorkItem(user=uuid.uuid4(), step=Step.LICENSE)
    inserted = sender.send_item(old, delay=delay)
    newer = WorkItem(user=old.user, step=Step.LICENSE,
                     enqueued_at=inserted + dt.timedelta(minutes=10))
    if held_until is None:
        svc.ledger.enqueued(newer)
    else:
        verdict, _ = svc.ledger.claim(newer, held_until - now())
        assert Verdict.CLAIMED is verdict
    return old


@pytest.mark.lab
def test_run_once_waits_for_a_delayed_message_then_ends_drained(
    service: flow.Service, other_worker: Queues, requests_sent: StorageRequests,
) -> None:
    """40 licence messages of users another worker holds for 4 s more: the handler sends each
    back with a delay (Storage's whole seconds, 1 s at least) until the lease has ended, then
    drops it (a newer message replaced it). A delayed message is invisible to every receive
    for that time; the run does not call itself drained meanwhile (the depth counts it),
    handles it when it shows, and then stops with nothing left on any queue."""
    held_until = now() + dt.timedelta(seconds=4)
    items = [_replaced(service, other_worker, held_until=held_until) for _ in range(40)]
    requests_sent.reset()
    began, lease_left = time.monotonic(), (held_until - now()).total_seconds()
    summary = asyncio.run(worker.run_once(service, limit=60))
    took = time.monotonic() - began
    handled = summary.outcomes["skipped"]
    assert (True, Counter(skipped=handled)) == (summary.drained, +summary.outcomes)
    # Each message: sent back delayed at least once while the lease lasted, then dropped.
    assert handled >= 2 * len(items)
    assert ([handled - len(items)], True) == (
        list(requests_sent.asked("send").values()), all(d >= 1 for d in requests_sent.delays))
    assert Counter(license=handled) == requests_sent.asked("delete")
    # The last ones show at most 1 s after the lease ended, and are asked for within 0.5 s.
    assert lease_left <= took < lease_left + 3.0, (lease_left, took)
    assert {} == _depths(service)
    rows = [service.ledger.get(item.user, Step.LICENSE) for item in items]
    assert {(State.WORKING, 1)} == {(r.state, r.attempts) for r in rows if r}  # not ours


@pytest.mark.lab
def test_a_message_the_handler_parks_is_handled_before_the_run_ends(
    service: flow.Service, other_worker: Queues, requests_sent: StorageRequests,
) -> None:
    """``handle`` parks a message that is not base64 on mailbox-poison: the run looks at that
    poison queue again at once (not only every ``POISON_POLL``, nor when a depth check finds
    it) and ends drained. The 40 undecodable messages parked on license-poison before the run
    are all handled too, more than one receive brings. ``poisoned`` records each (and
    alerts)."""
    tag = uuid.uuid4().hex
    old = [f"not base64 {tag} {n}" for n in range(40)]
    for raw in old:
        other_worker.send_raw("license-poison", raw)
    other_worker.send_raw("mailbox", f"not base64 {tag}")
    requests_sent.reset()
    summary = asyncio.run(worker.run_once(service, limit=60))
    assert (True, Counter(poison=1)) == (summary.drained, +summary.outcomes)
    records = [(r["queue"], r["message"], r["reason"])
               for r in service.outcomes.since("poison", "") if tag in str(r.get("message"))]
    assert sorted([("mailbox", f"not base64 {tag}", "not base64"),
                   *(("license", raw, "not base64") for raw in old)]) == sorted(records)
    # At the start: license-poison twice (32, then 8); mailbox-poison again once the message
    # was parked. Each receive is one request, a short one too (the first page only).
    assert Counter({"mailbox-poison": 1 + 1, "license-poison": 1 + 1, "roles-poison": 1,
                    "leavers-poison": 1}) == \
        Counter({q: n for q, n in requests_sent.asked("receive").items() if "-poison" in q})
    # Depths in the last check only: no depth check had to find a parked message.
    assert Counter(dict.fromkeys(QUEUES, 1)) == requests_sent.asked("depth")
    assert {} == _depths(service)


@pytest.mark.lab
def test_waiting_for_delayed_messages_asks_storage_little(
    service: flow.Service, other_worker: Queues, requests_sent: StorageRequests,
) -> None:
    """While only a delayed message is left (sent before the run, by another worker), the
    depth is asked of one queue at a time, the one holding it, not of all six; that queue is
    asked for messages at the usual pace (the depth said it holds some), the two that came
    back empty and that nobody here sent to only every ``RECHECK``; the poison queues are
    received from once, at the start, and their depth asked in the last check only. The
    message, when it shows, is dropped (replaced by a newer one): one delete, no send."""
    _replaced(service, other_worker, delay=2)
    requests_sent.reset()
    summary = asyncio.run(worker.run_once(service, limit=60))
    assert (True, Counter(skipped=1)) == (summary.drained, +summary.outcomes)
    depths, receives = requests_sent.asked("depth"), requests_sent.asked("receive")
    assert {"depth", "receive", "delete"} == {kind for kind, _ in requests_sent.counts}
    assert Counter(license=1) == requests_sent.asked("delete")
    assert Counter(dict.fromkeys(map(poison_queue, worker.WORK_QUEUES), 1)) == Counter(
        {q: n for q, n in depths.items() if q.endswith("-poison")})
    assert Counter(dict.fromkeys(map(poison_queue, worker.WORK_QUEUES), 1)) == Counter(
        {q: n for q, n in receives.items() if q.endswith("-poison")})
    # 2 s: the licence queue asked every 0.5 s (MAX_IDLE scaled) until the message shows,
    # then once more after PACE: 6 requests, 7 if one more fitted in; the others once
    # (RECHECK scaled: 5 s)
    assert (1, 1) == (receives["mailbox"], receives["roles"])
    assert receives["license"] <= 7
    assert depths["license"] <= receives["license"]
    # mailbox: in the first check (before license) and the last; roles: in the last only
    assert (2, 1) == (depths["mailbox"], depths["roles"])
    assert {} == _depths(service)


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
