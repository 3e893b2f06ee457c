"""The ledger, in Azure Table storage (table ``ledger``).

* One row per user and step (PartitionKey = user, RowKey = ``WorkItem.key``: the step, plus the
  role for a role change): state, attempts, last error, timestamps, and a lease. Every write
  carries the row's ETag, so two workers that receive the same message cannot both act: the
  second one's write fails with 412 (or 409 for a row both tried to create) and it backs off.
* In the same partition, the step's records (``shared.store.records``): its audit rows
  (``audit|...``) and its outcome rows (``outcome|<kind>|...``). ``finish`` writes the row and
  them in **one entity-group transaction** (one request, all or nothing): a worker that lost
  its lease writes neither, and its caller writes the records alone (what it changed is still
  audited).
* Partition ``~inflight``: the users each poll sent a first mailbox message for, one row per
  poll (up to 800 users a row, one transaction a poll), so that reconcile knows those
  messages are on their way without a ledger row per user.

The claim rule, which makes duplicate delivery harmless: a message proceeds only if it is the
newest one enqueued for that user and step (``enqueued_at >= live_at``), nobody holds the lease,
and the step has not finished since the message was enqueued. ``enqueued_at`` and ``live_at``
are the storage service's insertion times (``shared.store.messages``), never a message body's. A
claimed message that then fails a check (its user is not a member) is unclaimed: the row is
put back as it was, so a message anyone can write changes no row. A user's first message at a
step finds no row: its claim creates the row (one request, no read; a create that finds the row
there falls back to read and compare).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, TableServiceClient, TableTransactionError, UpdateMode

from shared.store.messages import Step, WorkItem

LEDGER, AUDIT, OUTCOMES = "ledger", "audit", "outcomes"
TRANSACTION_ROWS = 100  # Table storage's limit for one entity-group transaction
INFLIGHT = "~inflight"  # the partition of the polls' records of first messages sent
# GUIDs in one row: 800 × 37 characters; a string property holds 32K characters (64 KB UTF-16).
INFLIGHT_PER_ROW = 800


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class State(StrEnum):
    QUEUED = "queued"  # a message is on the queue (maybe delayed)
    WORKING = "working"  # a worker holds the lease
    WAITING = "waiting"  # transient failure; a delayed message is on the queue
    DONE = "done"
    FAILED = "failed"  # permanent failure, reported; waits for someone to fix the cause


class Verdict(StrEnum):
    CLAIMED = "claimed"
    BUSY = "busy"  # another worker holds the lease: try again after it expires
    STALE = "stale"  # a newer message for this user and step exists: drop this one
    FINISHED = "finished"  # done or failed after this message was enqueued: a duplicate


@dataclass
class LedgerRow:
    user: uuid.UUID
    key: str
    state: State
    attempts: int
    first_attempt_at: dt.datetime | None
    live_at: dt.datetime | None
    lease_until: dt.datetime | None
    finished_at: dt.datetime | None
    last_error: str
    correlation_id: str
    fingerprint: str
    etag: str | None = None
    name: str = ""  # sAMAccountName or UPN, as the step last named the user (for the digest)
    wait: str = ""  # WAITING: what for (a ``shared.results.Wait``); FAILED: "blocked" or ""
    next_at: dt.datetime | None = None  # WAITING: when the delayed retry becomes visible
    # set by ``Ledger.claim``: the row as it was before the claim (None: the claim created it),
    # so that ``Ledger.unclaim`` can put it back exactly
    prior: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def queued(cls, item: WorkItem) -> LedgerRow:
        """The row of a user and step whose first message is ``item``."""
        return cls(item.user, item.key, State.QUEUED, 0, None, item.enqueued_at, None, None, "",
                   item.correlation_id, "")

    @classmethod
    def from_entity(cls, entity: dict[str, Any]) -> LedgerRow:
        meta = getattr(entity, "metadata", {}) or {}
        return cls(
            user=uuid.UUID(entity["PartitionKey"]),
            key=str(entity["RowKey"]),
            state=State(entity["state"]),
            attempts=int(entity.get("attempts", 0)),
            first_attempt_at=_time(entity.get("first_attempt_at")),
            live_at=_time(entity.get("live_at")),
            lease_until=_time(entity.get("lease_until")),
            finished_at=_time(entity.get("finished_at")),
            last_error=str(entity.get("last_error", "")),
            correlation_id=str(entity.get("correlation_id", "")),
            fingerprint=str(entity.get("fingerprint", "")),
            etag=meta.get("etag"),
            name=str(entity.get("name", "")),
            wait=str(entity.get("wait", "")),
            next_at=_time(entity.get("next_at")),
        )

    def to_entity(self) -> dict[str, Any]:
        return {
            "PartitionKey": str(self.user),
            "RowKey": self.key,
            "state": self.state.value,
            "attempts": self.attempts,
            "first_attempt_at": _iso(self.first_attempt_at),
            "live_at": _iso(self.live_at),
            "lease_until": _iso(self.lease_until),
            "finished_at": _iso(self.finished_at),
            "last_error": self.last_error[:4000],
            "correlation_id": self.correlation_id,
            "fingerprint": self.fingerprint,
            "name": self.name,
            "wait": self.wait,
            "next_at": _iso(self.next_at),
        }

    @property
    def step(self) -> Step:
        return Step(self.key.split(":", 1)[0])

    def is_live(self, at: dt.datetime, grace: dt.timedelta) -> bool:
        """Whether a message or a worker is expected to move this row forward soon."""
        if self.state is State.WORKING:
            return self.lease_until is not None and at < self.lease_until + grace
        if self.state in (State.QUEUED, State.WAITING):
            return self.live_at is not None and at < self.live_at + grace
        return False


def _iso(value: dt.datetime | None) -> str:
    return value.isoformat() if value else ""


def _time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromisoformat(str(value))


class Ledger:
    """Per user and step: what happened, and who may act now."""

    def __init__(self, tables: TableServiceClient) -> None:
        self._table: TableClient = tables.create_table_if_not_exists(LEDGER)

    def get(self, user: uuid.UUID, key: str) -> LedgerRow | None:
        """The row for ``user`` and ``key`` (a ``Step`` value, or ``WorkItem.key``)."""
        try:
            return LedgerRow.from_entity(self._table.get_entity(str(user), str(key)))
        except ResourceNotFoundError:
            return None

    @property
    def table(self) -> TableClient:
        """The ledger table (``shared.store.records`` reads the step records in it)."""
        return self._table

    def rows_in(self, *states: State) -> list[LedgerRow]:
        """The rows in any of ``states`` (a filter the table service applies)."""
        query = " or ".join(f"state eq '{state.value}'" for state in states)
        return [LedgerRow.from_entity(e) for e in self._table.query_entities(query)]

    def rows(self, step: Step | None = None) -> list[LedgerRow]:
        """Ledger rows (of one step), without the records and the polls' rows beside them."""
        query = f"RowKey eq '{step.value}'" if step else None
        entities = self._table.query_entities(query) if query else self._table.list_entities()
        return [LedgerRow.from_entity(e) for e in entities if "state" in e]

    def sent(self, items: Sequence[WorkItem]) -> None:
        """Record that these users' first mailbox messages were sent (one poll's): a row per
        800 users in partition ``~inflight``, one transaction; no ledger row per user."""
        if not items:
            return
        stamp = now().isoformat()
        users = [str(item.user) for item in items]
        rows = [{"PartitionKey": INFLIGHT, "RowKey": f"{stamp}-{n:04d}",
                 "users": ",".join(users[first:first + INFLIGHT_PER_ROW])}
                for n, first in enumerate(range(0, len(users), INFLIGHT_PER_ROW))]
        for first in range(0, len(rows), TRANSACTION_ROWS):
            self._table.submit_transaction([("create", r) for r in
                                            rows[first:first + TRANSACTION_ROWS]])

    def sent_since(self, at: dt.datetime) -> set[uuid.UUID]:
        """The users whose first mailbox message a poll sent after ``at``."""
        found = self._table.query_entities(
            "PartitionKey eq @p and RowKey gt @at", parameters={"p": INFLIGHT,
                                                                "at": at.isoformat()})
        return {uuid.UUID(u) for e in found for u in str(e.get("users", "")).split(",") if u}

    def enqueued(self, item: WorkItem) -> None:
        """Record that ``item`` is now the live message for its user and step."""
        for _ in range(5):
            # Most items are a user's first at this step: create the row without reading it.
            if self._write(LedgerRow.queued(item)):
                return
            row = self.get(item.user, item.key)
            if row is None:
                continue  # deleted in between: create it again
            if row.live_at and row.live_at >= item.enqueued_at:
                return  # the message was claimed already (the send comes first), or superseded
            if row.state is not State.WORKING:  # a worker mid-step keeps its lease
                row.state = State.QUEUED
            row.live_at = item.enqueued_at
            row.correlation_id = item.correlation_id
            if self._write(row):
                return
        raise RuntimeError(f"ledger row for {item.user}/{item.key} kept changing under us")

    def claim(self, item: WorkItem, lease: dt.timedelta) -> tuple[Verdict, LedgerRow | None]:
        """Take the lease for ``item``'s user and step, or say why not."""
        first = True
        for _ in range(5):
            at = now()
            # A user's first message at a step finds no row: create it, leased, unread.
            row = None if first else self.get(item.user, item.key)
            first = False
            prior = None if row is None else row.to_entity()
            if row is None:
                row = LedgerRow.queued(item)
            elif row.state is State.WORKING and row.lease_until and at < row.lease_until:
                return Verdict.BUSY, row
            elif row.live_at and item.enqueued_at < row.live_at:
                return Verdict.STALE, row
            elif row.state in (State.DONE, State.FAILED) and (
                row.finished_at and item.enqueued_at <= row.finished_at
            ):
                return Verdict.FINISHED, row
            row.state = State.WORKING
            row.live_at = max(row.live_at or item.enqueued_at, item.enqueued_at)
            row.attempts += 1
            row.first_attempt_at = row.first_attempt_at or at
            row.lease_until = at + lease
            row.correlation_id = item.correlation_id
            row.prior = prior
            if self._write(row):
                return Verdict.CLAIMED, row
        return Verdict.BUSY, None

    def unclaim(self, row: LedgerRow) -> bool:
        """Undo ``claim`` for a message that failed a check: the row as it was before (its
        state and its times), or no row when the claim created it. False when the row changed
        since the claim (another message was enqueued meanwhile): then it is left to its
        lease, which runs out as after any crash."""
        if row.etag is None:
            return False
        kwargs: dict[str, Any] = {"etag": row.etag,
                                  "match_condition": MatchConditions.IfNotModified}
        try:
            if row.prior is None:
                self._table.delete_entity(str(row.user), row.key, **kwargs)
            else:
                self._table.update_entity(row.prior, mode=UpdateMode.REPLACE, **kwargs)
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        except HttpResponseError as exc:
            if exc.status_code not in (409, 412):
                raise
            return False
        return True

    def finish(
        self,
        row: LedgerRow,
        state: State,
        *,
        error: str = "",
        fingerprint: str = "",
        retry_at: dt.datetime | None = None,
        name: str = "",
        wait: str = "",
        next_at: dt.datetime | None = None,
        records: Sequence[dict[str, Any]] = (),
    ) -> bool:
        """Release the lease with the step's result, and write the step's ``records`` (rows in
        the user's partition: ``shared.store.records``) in the same transaction; False if another
        worker took over, and then nothing is written.

        For ``WAITING``, ``retry_at`` is the enqueue time of the delayed retry message, which
        the caller has sent just before (a crash in between leaves the row leased until the
        retry arrives, which is then claimed once the lease has run out).
        """
        row.state = state
        if retry_at is not None:
            row.live_at = retry_at
        row.lease_until = None
        row.last_error = error
        row.wait = wait
        row.next_at = next_at
        if name:
            row.name = name
        if fingerprint:
            row.fingerprint = fingerprint
        if state in (State.DONE, State.FAILED):
            row.finished_at = now()
        if not records or row.etag is None:
            return self._write(row) and self._create_all(records)
        first = list(records[:TRANSACTION_ROWS - 1])
        try:
            result = self._table.submit_transaction([
                ("update", row.to_entity(), {"mode": UpdateMode.REPLACE, "etag": row.etag,
                                             "match_condition": MatchConditions.IfNotModified}),
                *(("create", record) for record in first)])
        except (TableTransactionError, ResourceModifiedError, ResourceExistsError):
            return False
        except HttpResponseError as exc:
            if exc.status_code not in (409, 412):
                raise
            return False
        row.etag = result[0].get("etag")
        return self._create_all(records[TRANSACTION_ROWS - 1:])

    def count_mail(self, user: uuid.UUID, day: dt.date) -> int:
        """Count one more error mail about ``user`` on ``day`` (a row ``mails|<day>`` in the
        user's partition); returns how many that makes, this one included."""
        key = f"mails|{day.isoformat()}"
        for _ in range(5):
            try:
                entity = self._table.get_entity(str(user), key)
            except ResourceNotFoundError:
                try:
                    self._table.create_entity({"PartitionKey": str(user), "RowKey": key,
                                               "count": 1})
                except ResourceExistsError:
                    continue
                return 1
            count = int(entity.get("count", 0)) + 1
            try:
                self._table.update_entity(
                    {"PartitionKey": str(user), "RowKey": key, "count": count},
                    mode=UpdateMode.REPLACE, etag=entity.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified)
            except ResourceModifiedError:
                continue
            return count
        return 1 << 30  # kept changing under us: count it as over any limit

    def write_records(self, records: Sequence[dict[str, Any]]) -> None:
        """The records alone (their ledger row was not ours to write any more)."""
        self._create_all(records)

    def _create_all(self, records: Sequence[dict[str, Any]]) -> bool:
        # Records of one user share a partition: one transaction per 100.
        for first in range(0, len(records), TRANSACTION_ROWS):
            self._table.submit_transaction([("create", r) for r in
                                            records[first:first + TRANSACTION_ROWS]])
        return True

    def _write(self, row: LedgerRow) -> bool:
        entity = row.to_entity()
        try:
            if row.etag is None:
                result = self._table.create_entity(entity)
            else:
                result = self._table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=row.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except (ResourceExistsError, ResourceModifiedError):
            return False
        row.etag = result.get("etag")
        return True


@dataclass(frozen=True)
class Change:
    """One thing a step changed (an attribute, a membership, a licence, a role), for the audit:
    ``before`` and ``after`` are stored as JSON."""

    what: str
    before: object
    after: object
