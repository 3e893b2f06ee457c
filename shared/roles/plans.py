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
``ROLES_APPROVAL_HOURS``, and is void once a newer held set supersedes it. What the store
decides (supersede, approval, expiry, the window, the decision rows) is
``shared.roles.planstate``'s, pure and tested fast; this module only reads and writes the
table. Blocking (the storage SDK is synchronous): call it in a thread from async code.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterable
from dataclasses import replace

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared.config import Settings
from shared.errors import PermanentError
from shared.log import get_logger
from shared.roles.model import Decision, Hold, RoleChange
from shared.roles.planstate import (
    LIVE,
    RELEASED_DAYS,
    WINDOWS,
    HeldPlan,
    approval_refusal,
    decision_from_row,
    decision_row,
    held_already,
    held_row,
    latest,
    pair,
    release_verdict,
    released_horizon,
    split_window,
    stamp,
    superseded,
    window_row,
)
from shared.store.clients import table_service

__all__ = ["LIVE", "PLANS_TABLE", "RELEASED_DAYS", "STEP", "WINDOWS", "HeldPlan", "PlanStore",
           "approve_plan", "current_plan"]

log = get_logger(__name__)

PLANS_TABLE = "roleplans"
STEP = "roles approve"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class PlanStore:
    """The ``roleplans`` table; what it decides is ``shared.roles.planstate``'s."""

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
        live = self._table.query_entities("PartitionKey eq 'plan' and (status eq 'held' or "
                                          "status eq 'approved' or status eq 'applied')")
        for other in superseded((str(row["RowKey"]) for row in live), pid):
            self._set(other, status="superseded")
        found = self.get(pid)
        if held_already(found):
            return found
        entity = held_row(held, now or _now())
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
        refusal = approval_refusal(pid, found)
        if refusal is not None:
            raise PermanentError(
                refusal, step=STEP,
                fix="run `python -m shared.cli roles plan` to see the plan id held now")
        assert found is not None  # approval_refusal refuses an unknown plan
        if found.status == "approved":
            return found
        approved = stamp(now or _now())
        self._set(pid, status="approved", approved=approved)
        return replace(found, status="approved", approved=approved)

    def release(self, pid: str, ttl: dt.timedelta, *, now: dt.datetime | None = None) -> bool:
        """True when ``pid`` is approved and the approval is younger than ``ttl``; the plan is
        then applied. Planned again while its changes are still queued, an applied plan is
        released again (each change is idempotent) until its approval expires."""
        found = self.get(pid)
        verdict = release_verdict(found, ttl, now or _now())
        if verdict == "refused":
            return False
        if verdict == "expired":
            self._set(pid, status="expired")
            log.warning("role_plan_approval_expired", plan_id=pid,
                        approved=found.approved if found else "")
            return False
        self._set(pid, status="applied")
        return True

    def latest(self) -> HeldPlan | None:
        return latest(HeldPlan.from_row(r) for r in self._table.query_entities(
            "PartitionKey eq 'plan' and (status eq 'held' or status eq 'approved')"))

    # -- the rolling window of grants and revocations -----------------------------------------
    def spend(self, changes: Iterable[RoleChange], *, now: dt.datetime | None = None) -> None:
        """Count released changes in the window (once per change, however often sent)."""
        for change in changes:
            with contextlib.suppress(ResourceExistsError):
                self._table.create_entity(window_row(change, now or _now()))

    def revoked_since(self, since: dt.datetime) -> frozenset[str]:
        """The keys of the revocations released since ``since``; older rows are dropped."""
        return self._since(WINDOWS["revoke"], since)

    def granted_since(self, since: dt.datetime) -> frozenset[str]:
        """The keys of the grants released since ``since``; older rows are dropped."""
        return self._since(WINDOWS["grant"], since)

    def _since(self, partition: str, since: dt.datetime) -> frozenset[str]:
        recent, old = split_window(
            list(self._table.query_entities(f"PartitionKey eq '{partition}'")), since)
        for key in old:
            self._table.delete_entity(partition, key)
        return recent

    # -- the latest decision per role and principal ---------------------------------------------
    def record_release(self, pid: str, changes: Iterable[RoleChange], *,
                       now: dt.datetime | None = None) -> None:
        """Record that plan ``pid`` released ``changes`` onto the queue: each is now the latest
        decision for its role and principal, and every older message for that pair is stale."""
        at = now or _now()
        for change in changes:
            self._table.upsert_entity(decision_row(pid, change, at), mode=UpdateMode.REPLACE)
        for row in list(self._table.query_entities(
                "PartitionKey eq 'released' and at lt @horizon",
                parameters={"horizon": released_horizon(at)})):
            self._table.delete_entity("released", str(row["RowKey"]))

    def decision(self, role_id: str, principal_id: str) -> Decision | None:
        """The latest released decision for ``role_id`` and ``principal_id``, if any."""
        try:
            row = self._table.get_entity("decision", pair(role_id, principal_id))
        except ResourceNotFoundError:
            return None
        return decision_from_row(row)

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
