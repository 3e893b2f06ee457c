"""The ledger on Azurite: claims with ETags, so duplicate delivery makes no second change."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from lab.core import Lab
from shared.config import StorageSettings
from shared.store.clients import THREADS, queue_service, table_service
from shared.store.ledger import Ledger, LedgerRow, State, Verdict, now
from shared.store.messages import Step, WorkItem
from shared.store.queues import Queues, Received
from shared.store.records import Audit

pytestmark = pytest.mark.lab
LEASE = dt.timedelta(seconds=30)


@pytest.fixture(scope="module")
def storage(lab: Lab) -> StorageSettings:
    return StorageSettings(_env_file=lab.settings_file)  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def ledger(storage: StorageSettings) -> Ledger:
    return Ledger(table_service(storage))


def test_first_claim_wins_and_a_concurrent_one_is_busy(ledger: Ledger) -> None:
    """Two workers holding copies of one message: exactly one gets the lease."""
    item = WorkItem(user=uuid.uuid4(), step=Step.MAILBOX)
    ledger.enqueued(item)
    verdicts: list[Verdict] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        barrier.wait()
        verdicts.append(ledger.claim(item, LEASE)[0])

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(verdicts) == sorted([Verdict.CLAIMED] + [Verdict.BUSY] * 3)


def test_a_duplicate_after_completion_is_finished(ledger: Ledger) -> None:
    """A second delivery of a message whose step completed does nothing."""
    item = WorkItem(user=uuid.uuid4(), step=Step.LICENSE)
    ledger.enqueued(item)
    verdict, row = ledger.claim(item, LEASE)
    assert verdict is Verdict.CLAIMED and row is not None
    assert ledger.finish(row, State.DONE)
    assert ledger.claim(item, LEASE)[0] is Verdict.FINISHED
    stored = ledger.get(item.user, Step.LICENSE)
    assert stored is not None and (stored.state, stored.attempts) == (State.DONE, 1)


def test_a_superseded_message_is_stale(ledger: Ledger) -> None:
    """After a retry was enqueued, the older message is dropped."""
    first = WorkItem(user=uuid.uuid4(), step=Step.LICENSE)
    ledger.enqueued(first)
    retry = WorkItem(user=first.user, step=Step.LICENSE, correlation_id=first.correlation_id,
                     enqueued_at=first.enqueued_at + dt.timedelta(seconds=1))
    ledger.enqueued(retry)
    assert ledger.claim(first, LEASE)[0] is Verdict.STALE
    assert ledger.claim(retry, LEASE)[0] is Verdict.CLAIMED


def test_an_expired_lease_can_be_taken_over(ledger: Ledger) -> None:
    """A worker that died holding the lease blocks the user only until the lease expires."""
    item = WorkItem(user=uuid.uuid4(), step=Step.MAILBOX)
    ledger.enqueued(item)
    assert ledger.claim(item, dt.timedelta(seconds=-1))[0] is Verdict.CLAIMED
    verdict, row = ledger.claim(item, LEASE)
    assert verdict is Verdict.CLAIMED and row is not None and row.attempts == 2


def test_the_loser_of_a_takeover_cannot_overwrite(ledger: Ledger) -> None:
    """The finish of a worker whose row changed under it is refused by the ETag check."""
    item = WorkItem(user=uuid.uuid4(), step=Step.MAILBOX)
    ledger.enqueued(item)
    _, stale_row = ledger.claim(item, dt.timedelta(seconds=-1))
    ledger.claim(item, LEASE)
    assert stale_row is not None
    assert ledger.finish(stale_row, State.FAILED, error="late") is False
    stored = ledger.get(item.user, Step.MAILBOX)
    assert stored is not None and stored.state is State.WORKING


def test_liveness(ledger: Ledger) -> None:
    """A queued row is live until its message is overdue by the grace period."""
    item = WorkItem(user=uuid.uuid4(), step=Step.MAILBOX)
    ledger.enqueued(item)
    row = ledger.get(item.user, Step.MAILBOX)
    assert row is not None
    grace = dt.timedelta(minutes=10)
    assert row.is_live(now(), grace)
    assert not row.is_live(now() + dt.timedelta(minutes=11), grace)


def test_audit_is_append_only_and_queryable_by_user(storage: StorageSettings) -> None:
    audit = Audit(table_service(storage))
    user = str(uuid.uuid4())
    audit.record(user=user, system="ad", action="add_member", before=[], after=["O365_License"],
                 correlation_id="c" * 8)
    audit.record(user=user, system="ad", action="remove_member", before=["O365_Provision"],
                 after=[], correlation_id="c" * 8)
    assert [e["action"] for e in audit.entries(user=user)] == ["add_member", "remove_member"]


def test_a_step_s_changes_are_one_transaction_in_order(storage: StorageSettings) -> None:
    """A step's changes land together, in the order made; more than a transaction holds
    (100 rows) are split, none lost."""
    audit = Audit(table_service(storage))
    user = str(uuid.uuid4())
    changes = [(f"change {n:03d}", None, n) for n in range(130)]
    audit.record_all(user=user, system="graph", correlation_id="d" * 8, changes=changes)
    entries = audit.entries(user=user)
    assert [e["action"] for e in entries] == [c[0] for c in changes]
    assert {e["after"] for e in entries[:2]} == {"0", "1"}


def test_enqueue_of_an_existing_row_keeps_its_history(ledger: Ledger) -> None:
    """Enqueueing creates the row without reading it first; a second enqueue of the same
    user and step updates the row, keeping its attempts, and a lease a worker holds."""
    first = WorkItem(user=uuid.uuid4(), step=Step.LICENSE)
    ledger.enqueued(first)
    assert ledger.claim(first, LEASE)[0] is Verdict.CLAIMED
    again = WorkItem(user=first.user, step=Step.LICENSE)
    ledger.enqueued(again)
    row = ledger.get(first.user, Step.LICENSE)
    assert row is not None
    assert (row.state, row.attempts, row.live_at) == (State.WORKING, 1, again.enqueued_at)
    assert ledger.claim(first, LEASE)[0] is Verdict.BUSY


def test_delayed_message_stays_invisible(storage: StorageSettings) -> None:
    """A delayed send is not received before its delay: how the licence step waits for sync.
    ``Queues.visible`` says when the last message sent is visible (run --once's pacing)."""
    queues = Queues(queue_service(storage))
    name = f"t{uuid.uuid4().hex[:12]}"
    queues.send(name, "later", delay=30)
    queues.send(name, "now")
    got = queues.receive(name, limit=10, visibility=5)
    assert [m.text for m in got] == ["now"]
    assert queues.depth(name) == 2
    assert 29 < queues.visible[name] - time.monotonic() <= 31


def test_deleting_a_message_received_again_elsewhere_is_not_an_error(
    storage: StorageSettings,
) -> None:
    """A handler that outlived the message's visibility finds it received again: its delete
    says so (False) instead of raising; the second receiver's delete works, once."""
    queues = Queues(queue_service(storage))
    name = f"t{uuid.uuid4().hex[:12]}"
    queues.send(name, "slow")
    (first,) = queues.receive(name, limit=1, visibility=1)
    deadline = time.monotonic() + 10
    again: list[Received] = []
    while not again and time.monotonic() < deadline:
        time.sleep(0.5)
        again = queues.receive(name, limit=1, visibility=30)
    assert [m.text for m in again] == ["slow"]
    assert queues.delete(first) is False
    assert queues.delete(again[0]) is True
    assert queues.delete(again[0]) is False
    assert queues.depth(name) == 0


def test_a_step_s_row_and_records_are_one_transaction(ledger: Ledger,
                                                      storage: StorageSettings) -> None:
    """Finishing a step writes its ledger row, audit rows and outcome together; a worker whose
    lease was taken over writes neither (its caller then writes the records alone)."""
    from shared.store.records import Outcomes, audit_rows, outcome_row

    item = WorkItem(user=uuid.uuid4(), step=Step.LICENSE)
    _, row = ledger.claim(item, LEASE)
    assert row is not None
    stale = LedgerRow.from_entity(ledger.table.get_entity(str(item.user), item.key))
    user = str(item.user)
    records = [*audit_rows(user, user=user, system="graph", correlation_id="c" * 8,
                           changes=[("licenses", None, "ENTERPRISEPACK")]),
               outcome_row(user, "provisioned", {"user": user, "name": "ann"})]
    done = ledger.finish(row, State.DONE, records=records)
    refused = ledger.finish(stale, State.FAILED, records=records)  # an old ETag: refused whole
    audit = Audit(table_service(storage)).entries(user=user)
    provisioned = [r for r in Outcomes(table_service(storage)).since("provisioned", "")
                   if r["user"] == user]
    final = ledger.get(item.user, item.key)
    assert (True, False, ["licenses"], ["ann"], State.DONE) == (
        done, refused, [a["action"] for a in audit], [p["name"] for p in provisioned],
        final.state if final else None)


def test_a_first_claim_creates_the_row_and_a_poll_s_sends_are_one_record(
        ledger: Ledger) -> None:
    """A user's first message at a step is claimed without a ledger row written before it;
    the poll records the users it sent first messages for in one row, which reconcile reads."""
    items = [WorkItem(user=uuid.uuid4(), step=Step.MAILBOX) for _ in range(2500)]  # 4 rows
    before = now() - dt.timedelta(seconds=1)
    ledger.sent(items)
    verdict, row = ledger.claim(items[0], LEASE)
    assert ({i.user for i in items}, Verdict.CLAIMED, 1) == (
        {i.user for i in items} & ledger.sent_since(before), verdict, row.attempts if row else 0)


def test_storage_clients_keep_a_connection_for_each_worker_thread(
    storage: StorageSettings, caplog: pytest.LogCaptureFixture,
) -> None:
    """As many threads as run --once's executor, asking a queue at once, reuse their
    connections: urllib3 throws none away as "Connection pool is full" (requests' default
    pool holds 10)."""
    queues = Queues(queue_service(storage))
    name = f"t{uuid.uuid4().hex[:12]}"
    queues.client(name)
    barrier = threading.Barrier(THREADS)

    def ask(_: int) -> int:
        barrier.wait()
        return queues.depth(name)

    with caplog.at_level(logging.WARNING, "urllib3.connectionpool"), \
            ThreadPoolExecutor(THREADS) as pool:
        assert [0] * THREADS == list(pool.map(ask, range(THREADS)))
    assert [] == [r.getMessage() for r in caplog.records if "pool is full" in r.getMessage()]
