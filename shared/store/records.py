"""What the steps leave behind besides their ledger row: the audit trail and the outcomes.

A step's records live in its user's partition of the ``ledger`` table, beside the ledger row,
so that ``Ledger.finish`` writes the row and its records in one transaction:

* ``audit|<time>-<n>-<rand>``: one row for every change made in AD, Exchange or Graph (what,
  to whom, before, after, correlation id);
* ``outcome|<kind>|<time>-<rand>``: what the report timer mails (users provisioned, failures,
  alerts).

Records that belong to no step (the role cycle's audit, a poisoned message's outcome) keep
their tables, ``audit`` (by day) and ``outcomes`` (by kind). ``Audit.entries`` and
``Outcomes.since`` read both places; reading the step records of every user is a query across
partitions, which the table service answers by scanning: fine for a daily report.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from azure.data.tables import TableServiceClient, UpdateMode

from shared.store.ledger import AUDIT, LEDGER, OUTCOMES, TRANSACTION_ROWS, now

AUDIT_KEY, OUTCOME_KEY = "audit|", "outcome|"
_END = "~"  # sorts after every character a key holds here


def _json(value: Any) -> str:
    return json.dumps(value, default=str)[:8000]


def audit_rows(partition: str, *, user: str, system: str, correlation_id: str,
               changes: Sequence[tuple[str, Any, Any]], prefix: str = AUDIT_KEY
               ) -> list[dict[str, Any]]:
    """Audit rows for ``changes`` (action, before, after), in ``partition``."""
    stamp = now().isoformat()
    return [{"PartitionKey": partition,
             "RowKey": f"{prefix}{stamp}-{index:03d}-{uuid.uuid4().hex[:8]}",
             "user": user, "system": system, "action": action, "before": _json(before),
             "after": _json(after), "correlation_id": correlation_id}
            for index, (action, before, after) in enumerate(changes)]


def outcome_row(user: str, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    """An outcome row of ``kind`` in ``user``'s partition of the ledger table."""
    return {"PartitionKey": user,
            "RowKey": f"{OUTCOME_KEY}{kind}|{now().isoformat()}-{uuid.uuid4().hex[:8]}",
            **{k: ("" if v is None else v) for k, v in fields.items()}}


class Audit:
    """Append-only record of every change made in AD, Exchange or Graph."""

    def __init__(self, tables: TableServiceClient) -> None:
        self._table = tables.create_table_if_not_exists(AUDIT)
        self._ledger = tables.get_table_client(LEDGER)

    def record(self, *, user: str, system: str, action: str, before: Any, after: Any,
               correlation_id: str) -> None:
        self.record_all(user=user, system=system, correlation_id=correlation_id,
                        changes=[(action, before, after)])

    def record_all(self, *, user: str, system: str, correlation_id: str,
                   changes: Sequence[tuple[str, Any, Any]]) -> None:
        """Changes made outside a step (the role cycle's), in the day's partition of the
        ``audit`` table: one entity-group transaction of up to 100 rows."""
        rows = audit_rows(now().strftime("%Y-%m-%d"), user=user, system=system,
                          correlation_id=correlation_id, changes=changes, prefix="")
        for first in range(0, len(rows), TRANSACTION_ROWS):
            self._table.submit_transaction(
                [("create", row) for row in rows[first:first + TRANSACTION_ROWS]])

    def entries(self, *, user: str | None = None) -> list[dict[str, Any]]:
        """Every audit row (of ``user``), oldest first: the steps' and the others'."""
        rows = [dict(e) for e in self._table.list_entities()]
        rows = [r for r in rows if user is None or r["user"] == user]
        query = "RowKey gt @low and RowKey lt @high"
        params = {"low": AUDIT_KEY, "high": AUDIT_KEY + _END}
        if user is not None:
            query += " and PartitionKey eq @user"
            params["user"] = user
        steps = [dict(e) for e in self._ledger.query_entities(query, parameters=params)]
        return sorted(rows + steps, key=lambda r: str(r["RowKey"]).removeprefix(AUDIT_KEY))


class Outcomes:
    """What the report timer mails: provisioned users, failures, alerts; append-only."""

    def __init__(self, tables: TableServiceClient) -> None:
        self._table = tables.create_table_if_not_exists(OUTCOMES)
        self._ledger = tables.get_table_client(LEDGER)

    def record(self, kind: str, **fields: Any) -> None:
        """An outcome of no step (a poisoned message), in the ``outcomes`` table."""
        self._table.create_entity({
            "PartitionKey": kind, "RowKey": f"{now().isoformat()}-{uuid.uuid4().hex[:8]}",
            **{k: ("" if v is None else v) for k, v in fields.items()}})

    def update(self, row: dict[str, Any], **fields: Any) -> None:
        self._table.update_entity(
            {"PartitionKey": row["PartitionKey"], "RowKey": row["RowKey"], **fields},
            mode=UpdateMode.MERGE,
        )

    def of_user(self, user: str, kind: str) -> list[dict[str, Any]]:
        """The step outcomes of ``kind`` in ``user``'s partition, oldest first."""
        prefix = f"{OUTCOME_KEY}{kind}|"
        return [dict(e) for e in self._ledger.query_entities(
            "PartitionKey eq @user and RowKey gt @low and RowKey lt @high",
            parameters={"user": user, "low": prefix, "high": prefix + _END})]

    def since(self, kind: str, after: str) -> list[dict[str, Any]]:
        """Rows of ``kind`` recorded after ``after`` (a RowKey these rows return; "" for all),
        oldest first. Step outcomes come back with the ``outcomes`` table's keys: PartitionKey
        the kind, RowKey the time and a random suffix."""
        query = "PartitionKey eq @kind and RowKey gt @after"
        found = [dict(e) for e in self._table.query_entities(
            query, parameters={"kind": kind, "after": after})]
        prefix = f"{OUTCOME_KEY}{kind}|"
        for entity in self._ledger.query_entities(
                "RowKey gt @low and RowKey lt @high",
                parameters={"low": prefix + after, "high": prefix + _END}):
            row = dict(entity)
            row["user"] = row.get("user") or row["PartitionKey"]
            row["PartitionKey"], row["RowKey"] = kind, str(row["RowKey"])[len(prefix):]
            found.append(row)
        return sorted(found, key=lambda e: str(e["RowKey"]))
