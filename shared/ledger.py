"""The ledger, the audit trail and the outcomes, in Azure Table storage.

* ``ledger``: one row per user and step (PartitionKey = user, RowKey = ``WorkItem.key``: the
  step, plus the role for a role change): state, attempts,
  last error, timestamps, and a lease. Every write carries the row's ETag, so two workers that
  receive the same message cannot both act: the second one's write fails with 412 and it backs off.
* ``audit``: append-only, one row for every change made in AD, Exchange or Graph
  (what, to whom, before, after, correlation id).
* ``outcomes``: append-only, what the report timer mails: users provisioned, failures, alerts.

The claim rule, which makes duplicate delivery harmless: a message proceeds only if it is the
newest one enqueued for that user and step (``enqueued_at >= live_at``), nobody holds the lease,
and the step has not finished since the message was enqueued.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from .messages import Step, WorkItem

LEDGER, AUDIT, OUTCOMES = "ledger", "audit", "outcomes"
TRANSACTION_ROWS = 100  # Table storage's limit for one entity-group transaction


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

    def rows_in(self, *states: State) -> list[LedgerRow]:
        """The rows in any of ``states`` (a filter the table service applies)."""
        query = " or ".join(f"state eq '{state.value}'" for state in states)
        return [LedgerRow.from_entity(e) for e in self._table.query_entities(query)]

    def rows(self, step: Step | None = None) -> list[LedgerRow]:
        query = f"RowKey eq '{step.value}'" if step else None
        entities = self._table.query_entities(query) if query else self._table.list_entities()
        return [LedgerRow.from_entity(e) for e in entities]

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
        for _ in range(5):
            at = now()
            row = self.get(item.user, item.key)
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
            if self._write(row):
                return Verdict.CLAIMED, row
        return Verdict.BUSY, None

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
    ) -> bool:
        """Release the lease with the step's result; False if another worker took over.

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
        if name:
            row.name = name
        if fingerprint:
            row.fingerprint = fingerprint
        if state in (State.DONE, State.FAILED):
            row.finished_at = now()
        return self._write(row)

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


class Audit:
    """Append-only record of every change made in AD, Exchange or Graph."""

    def __init__(self, tables: TableServiceClient) -> None:
        self._table = tables.create_table_if_not_exists(AUDIT)

    def record(
        self,
        *,
        user: str,
        system: str,
        action: str,
        before: Any,
        after: Any,
        correlation_id: str,
    ) -> None:
        self.record_all(user=user, system=system, correlation_id=correlation_id,
                        changes=[(action, before, after)])

    def record_all(
        self,
        *,
        user: str,
        system: str,
        correlation_id: str,
        changes: Sequence[tuple[str, Any, Any]],
    ) -> None:
        """The changes one step made to ``user``, as (action, before, after), in as few
        requests as Table storage allows: the rows share the day's partition, so they go in
        one entity-group transaction (all or none) of up to 100 rows."""
        at = now()
        stamp = at.isoformat()
        rows = [
            {
                "PartitionKey": at.strftime("%Y-%m-%d"),
                "RowKey": f"{stamp}-{index:03d}-{uuid.uuid4().hex[:8]}",
                "user": user,
                "system": system,
                "action": action,
                "before": json.dumps(before, default=str)[:8000],
                "after": json.dumps(after, default=str)[:8000],
                "correlation_id": correlation_id,
            }
            for index, (action, before, after) in enumerate(changes)
        ]
        if len(rows) == 1:
            self._table.create_entity(rows[0])
            return
        for first in range(0, len(rows), TRANSACTION_ROWS):
            self._table.submit_transaction(
                [("create", row) for row in rows[first:first + TRANSACTION_ROWS]]
            )

    def entries(self, *, user: str | None = None) -> list[dict[str, Any]]:
        rows = [dict(e) for e in self._table.list_entities()]
        return [r for r in rows if user is None or r["user"] == user]


class Outcomes:
    """What the report timer mails: provisioned users, failures, alerts; append-only."""

    def __init__(self, tables: TableServiceClient) -> None:
        self._table = tables.create_table_if_not_exists(OUTCOMES)

    def record(self, kind: str, **fields: Any) -> None:
        at = now()
        self._table.create_entity(
            {
                "PartitionKey": kind,
                "RowKey": f"{at.isoformat()}-{uuid.uuid4().hex[:8]}",
                **{k: ("" if v is None else v) for k, v in fields.items()},
            }
        )

    def update(self, row: dict[str, Any], **fields: Any) -> None:
        self._table.update_entity(
            {"PartitionKey": row["PartitionKey"], "RowKey": row["RowKey"], **fields},
            mode=UpdateMode.MERGE,
        )

    def since(self, kind: str, after: str) -> list[dict[str, Any]]:
        """Rows of ``kind`` recorded after the RowKey ``after`` ("" for all)."""
        query = "PartitionKey eq @kind and RowKey gt @after"
        found = self._table.query_entities(query, parameters={"kind": kind, "after": after})
        return sorted((dict(e) for e in found), key=lambda e: str(e["RowKey"]))
