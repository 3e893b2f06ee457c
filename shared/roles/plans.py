"""The role sync's plan store, a storage adapter beside the ledger: table ``roleplans``.

    PartitionKey "plan"     one row per held set of changes, keyed by its plan id:
                            held → approved → applied, or superseded / expired
    PartitionKey "revoked"  one row per revocation released, keyed by the change, with its
                            time: the rolling window ``ROLES_MAX_REVOCATIONS`` counts in
    PartitionKey "state"    the fingerprint of the last alert (a block is alerted once)
    PartitionKey "released" one row per change a cycle released onto the queue, keyed by
                            "<plan id>:<change key>": a role message is applied only when the
                            stored plan it names holds its change (a queue writer cannot
                            invent a grant); rows older than ``RELEASED_DAYS`` are dropped

Approval binds to exactly one held set (its plan id is a hash of those changes), lasts
``ROLES_APPROVAL_HOURS``, and is void once a newer held set supersedes it. Blocking (the
storage SDK is synchronous): call it in a thread from async code.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared.config import Settings
from shared.errors import PermanentError
from shared.log import get_logger
from shared.roles.model import Hold, RoleChange
from shared.store.clients import table_service

log = get_logger(__name__)

PLANS_TABLE = "roleplans"
STEP = "roles approve"
LIVE = ("held", "approved")
RELEASED_DAYS = 8  # a queued change is retried for a day or two; a week is ample


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class HeldPlan:
    """A held set of changes, as the table keeps it."""

    plan_id: str
    status: str  # held, approved, applied, superseded, expired
    revocations: int
    grants: int
    reason: str
    created: str
    approved: str = ""
    changes: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> HeldPlan:
        return cls(
            plan_id=str(row["RowKey"]), status=str(row.get("status", "")),
            revocations=int(str(row.get("revocations") or 0)),
            grants=int(str(row.get("grants") or 0)), reason=str(row.get("reason", "")),
            created=str(row.get("created", "")), approved=str(row.get("approved") or ""),
            changes=tuple(json.loads(str(row.get("changes") or "[]"))),
        )


class PlanStore:
    """The ``roleplans`` table."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    @classmethod
    def open(cls, settings: Settings) -> PlanStore:
        return cls(table_service(settings.storage).create_table_if_not_exists(PLANS_TABLE))

    def get(self, pid: str) -> HeldPlan | None:
        try:
            return HeldPlan.from_row(self._table.get_entity("plan", pid))
        except ResourceNotFoundError:
            return None

    def _set(self, pid: str, **values: object) -> None:
        self._table.update_entity({"PartitionKey": "plan", "RowKey": pid, **values},
                                  mode=UpdateMode.MERGE)

    def hold(self, held: Hold, *, now: dt.datetime | None = None) -> HeldPlan:
        """Record ``held`` as held, unless it is held or approved already; every other live
        plan is superseded, approvals included: an approval never outlives its set."""
        pid = held.plan_id
        for row in self._table.query_entities("PartitionKey eq 'plan' and (status eq 'held' or "
                                              "status eq 'approved' or status eq 'applied')"):
            if row["RowKey"] != pid:
                self._set(str(row["RowKey"]), status="superseded")
        found = self.get(pid)
        if found is not None and found.status in LIVE:
            return found
        entity = {
            "PartitionKey": "plan", "RowKey": pid, "status": "held", "approved": "",
            "revocations": sum(1 for c in held.changes if c.action.value == "revoke"),
            "grants": sum(1 for c in held.changes if c.action.value == "grant"),
            "reason": held.reason[:4000], "created": _stamp(now or _now()),
            # Table properties hold 64 KiB; the operator needs the gist, the plan id is exact.
            "changes": json.dumps([c.describe() for c in held.changes])[:30000],
        }
        if found is None:
            with contextlib.suppress(ResourceExistsError):  # another worker was first
                self._table.create_entity(entity)
        else:  # superseded, expired or applied before: held afresh, approval needed again
            self._table.upsert_entity(entity, mode=UpdateMode.REPLACE)
        held_now = self.get(pid)
        assert held_now is not None
        return held_now

    def approve(self, pid: str, *, now: dt.datetime | None = None) -> HeldPlan:
        """Approve the held set ``pid``; ``PermanentError`` unless it is held now."""
        found = self.get(pid)
        if found is None or found.status not in LIVE:
            state = "is unknown" if found is None else f"is {found.status}"
            raise PermanentError(
                f"role plan {pid} {state}; only the plan held now can be approved",
                step=STEP, fix="run `python -m shared.cli roles plan` to see the plan id held now")
        if found.status == "approved":
            return found
        stamp = _stamp(now or _now())
        self._set(pid, status="approved", approved=stamp)
        return replace(found, status="approved", approved=stamp)

    def release(self, pid: str, ttl: dt.timedelta, *, now: dt.datetime | None = None) -> bool:
        """True when ``pid`` is approved and the approval is younger than ``ttl``; the plan is
        then applied. Planned again while its changes are still queued, an applied plan is
        released again (each change is idempotent) until its approval expires."""
        found = self.get(pid)
        if found is None or found.status not in ("approved", "applied"):
            return False
        if (now or _now()) - dt.datetime.fromisoformat(found.approved) > ttl:
            self._set(pid, status="expired")
            log.warning("role_plan_approval_expired", plan_id=pid, approved=found.approved)
            return False
        self._set(pid, status="applied")
        return True

    def latest(self) -> HeldPlan | None:
        rows = [HeldPlan.from_row(r) for r in self._table.query_entities(
            "PartitionKey eq 'plan' and (status eq 'held' or status eq 'approved')")]
        return max(rows, key=lambda r: r.created) if rows else None

    # -- the revocation window -----------------------------------------------------------------
    def spend(self, revocations: Iterable[RoleChange], *, now: dt.datetime | None = None) -> None:
        """Count released revocations in the window (once per change, however often sent)."""
        for change in revocations:
            with contextlib.suppress(ResourceExistsError):
                self._table.create_entity({"PartitionKey": "revoked", "RowKey": change.key,
                                           "at": _stamp(now or _now())})

    def revoked_since(self, since: dt.datetime) -> frozenset[str]:
        """The keys of the revocations released since ``since``; older rows are dropped."""
        recent: set[str] = set()
        for row in list(self._table.query_entities("PartitionKey eq 'revoked'")):
            if str(row.get("at", "")) >= _stamp(since):
                recent.add(str(row["RowKey"]))
            else:
                self._table.delete_entity("revoked", str(row["RowKey"]))
        return frozenset(recent)

    # -- released changes -----------------------------------------------------------------------
    def record_release(self, pid: str, changes: Iterable[RoleChange], *,
                       now: dt.datetime | None = None) -> None:
        """Record that plan ``pid`` released ``changes`` onto the queue."""
        at = now or _now()
        for change in changes:
            self._table.upsert_entity({"PartitionKey": "released",
                                       "RowKey": f"{pid}:{change.key}", "at": _stamp(at)})
        horizon = _stamp(at - dt.timedelta(days=RELEASED_DAYS))
        for row in list(self._table.query_entities(
                "PartitionKey eq 'released' and at lt @horizon",
                parameters={"horizon": horizon})):
            self._table.delete_entity("released", str(row["RowKey"]))

    def holds(self, pid: str, change: RoleChange) -> bool:
        """Whether plan ``pid`` released ``change``."""
        try:
            self._table.get_entity("released", f"{pid}:{change.key}")
        except ResourceNotFoundError:
            return False
        return True

    # -- alerts ----------------------------------------------------------------------------------
    def last_alert(self) -> str:
        try:
            return str(self._table.get_entity("state", "alert").get("fingerprint", ""))
        except ResourceNotFoundError:
            return ""

    def alerted(self, fingerprint: str) -> None:
        self._table.upsert_entity({"PartitionKey": "state", "RowKey": "alert",
                                   "fingerprint": fingerprint})


def approve_plan(settings: Settings, plan_id: str) -> HeldPlan:
    """Approve the held set ``plan_id`` (``cli roles approve``). The next cycle releases it
    only if it holds the very same set within ROLES_APPROVAL_HOURS; raises
    ``PermanentError`` when that set is not held now."""
    approved = PlanStore.open(settings).approve(plan_id.strip())
    log.warning("role_plan_approved", plan_id=approved.plan_id,
                revocations=approved.revocations, grants=approved.grants)
    return approved


def current_plan(settings: Settings) -> HeldPlan | None:
    """The plan held (or approved and not yet applied) most recently, if any."""
    return PlanStore.open(settings).latest()
