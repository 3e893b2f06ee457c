"""The role sync's plan store, a storage adapter beside the ledger: table ``roleplans``.

    PartitionKey "plan"     one row per held set of changes, keyed by its plan id:
                            held → approved → applied, or superseded / expired
    PartitionKey "revoked"  one row per revocation released, keyed by the change, with its
                            time: the rolling window ``ROLES_MAX_REVOCATIONS`` counts in
    PartitionKey "granted"  the same for grants: ``ROLES_MAX_GRANTS`` counts in that window
    PartitionKey "state"    the fingerprint of the last alert (a block is alerted once)
    PartitionKey "decision" one row per (role, principal), keyed "<role id>:<principal id>":
                            the latest change a cycle released for that pair and its plan id.
                            A role message is applied only when it names exactly that decision
                            and what decides it still holds now (``shared.roles.stale_reason``):
                            a queue writer can neither invent a change nor replay an old one

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
from shared.roles.model import Action, Decision, Hold, RoleChange
from shared.store.clients import table_service

log = get_logger(__name__)

PLANS_TABLE = "roleplans"
STEP = "roles approve"
LIVE = ("held", "approved")
RELEASED_DAYS = 8  # rows of the former "released" partition are dropped after this
WINDOWS = {"revoke": "revoked", "grant": "granted"}  # the partition each direction counts in


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

    # -- the rolling window of grants and revocations -----------------------------------------
    def spend(self, changes: Iterable[RoleChange], *, now: dt.datetime | None = None) -> None:
        """Count released changes in the window (once per change, however often sent)."""
        for change in changes:
            with contextlib.suppress(ResourceExistsError):
                self._table.create_entity({"PartitionKey": WINDOWS[change.action.value],
                                           "RowKey": change.key, "at": _stamp(now or _now())})

    def revoked_since(self, since: dt.datetime) -> frozenset[str]:
        """The keys of the revocations released since ``since``; older rows are dropped."""
        return self._since("revoked", since)

    def granted_since(self, since: dt.datetime) -> frozenset[str]:
        """The keys of the grants released since ``since``; older rows are dropped."""
        return self._since("granted", since)

    def _since(self, partition: str, since: dt.datetime) -> frozenset[str]:
        recent: set[str] = set()
        for row in list(self._table.query_entities(f"PartitionKey eq '{partition}'")):
            if str(row.get("at", "")) >= _stamp(since):
                recent.add(str(row["RowKey"]))
            else:
                self._table.delete_entity(partition, str(row["RowKey"]))
        return frozenset(recent)

    # -- the latest decision per role and principal ---------------------------------------------
    def record_release(self, pid: str, changes: Iterable[RoleChange], *,
                       now: dt.datetime | None = None) -> None:
        """Record that plan ``pid`` released ``changes`` onto the queue: each is now the latest
        decision for its role and principal, and every older message for that pair is stale."""
        at = now or _now()
        for change in changes:
            self._table.upsert_entity({"PartitionKey": "decision", "RowKey": _pair(change),
                                       "action": change.action.value, "plan": pid,
                                       "at": _stamp(at)}, mode=UpdateMode.REPLACE)
        horizon = _stamp(at - dt.timedelta(days=RELEASED_DAYS))
        for row in list(self._table.query_entities(
                "PartitionKey eq 'released' and at lt @horizon",
                parameters={"horizon": horizon})):
            self._table.delete_entity("released", str(row["RowKey"]))

    def decision(self, role_id: str, principal_id: str) -> Decision | None:
        """The latest released decision for ``role_id`` and ``principal_id``, if any."""
        key = f"{role_id.lower()}:{principal_id.lower()}"
        try:
            row = self._table.get_entity("decision", key)
        except ResourceNotFoundError:
            return None
        return Decision(Action(str(row["action"])), str(row["plan"]))

    # -- alerts ----------------------------------------------------------------------------------
    def last_alert(self) -> str:
        try:
            return str(self._table.get_entity("state", "alert").get("fingerprint", ""))
        except ResourceNotFoundError:
            return ""

    def alerted(self, fingerprint: str) -> None:
        self._table.upsert_entity({"PartitionKey": "state", "RowKey": "alert",
                                   "fingerprint": fingerprint})


def _pair(change: RoleChange) -> str:
    return f"{change.role_id.lower()}:{change.principal_id.lower()}"


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
