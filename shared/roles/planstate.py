"""What the role plan store decides, without the table (pure; ``shared.roles.plans`` is the
table I/O around it):

- a held plan's life: which live plans a newly held set supersedes, whether a set is held
  afresh, which plan can be approved (``approval_refusal``), whether an approval still
  releases its plan or has expired (``release_verdict``), the latest live plan;
- the rows the table keeps: a held set, a released decision per (role, principal), its key;
- the rolling window of released grants and revocations: which partition a change counts in,
  which rows are still inside the window and which are dropped.

Times are stored as UTC ISO-8601 strings to the second, so comparing two stamps as strings
compares the moments.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeGuard

from shared.roles.model import Action, Decision, Hold, RoleChange

LIVE = ("held", "approved")  # a plan that can still be approved or released
RELEASABLE = ("approved", "applied")  # a plan whose approval may release it (again)
RELEASED_DAYS = 8  # rows of the former "released" partition are dropped after this
WINDOWS = {"revoke": "revoked", "grant": "granted"}  # the partition each direction counts in
REASON_CHARS = 4000  # a held set's reason, as stored
CHANGES_CHARS = 30000  # its changes' JSON: table properties hold 64 KiB


def stamp(moment: dt.datetime) -> str:
    """``moment`` in UTC, to the second, as the table stores times."""
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


# -- a held plan's life ------------------------------------------------------------------------
def superseded(live: Iterable[str], plan_id: str) -> list[str]:
    """The plans (held, approved or applied) that holding ``plan_id`` supersedes: every other
    one, approvals included, since an approval never outlives its set."""
    return [pid for pid in live if pid != plan_id]


def held_already(found: HeldPlan | None) -> TypeGuard[HeldPlan]:
    """True when the set is held or approved already, so holding it again changes nothing."""
    return found is not None and found.status in LIVE


def held_row(held: Hold, now: dt.datetime) -> dict[str, object]:
    """The table row of ``held``, held afresh at ``now`` (approval needed again)."""
    return {
        "PartitionKey": "plan", "RowKey": held.plan_id, "status": "held", "approved": "",
        "revocations": sum(1 for c in held.changes if c.action is Action.REVOKE),
        "grants": sum(1 for c in held.changes if c.action is Action.GRANT),
        "reason": held.reason[:REASON_CHARS], "created": stamp(now),
        # the operator needs the gist; the plan id is exact
        "changes": json.dumps([c.describe() for c in held.changes])[:CHANGES_CHARS],
    }


def approval_refusal(pid: str, found: HeldPlan | None) -> str | None:
    """Why plan ``pid`` cannot be approved, or None when it is held (or approved) now."""
    if held_already(found):
        return None
    state = "is unknown" if found is None else f"is {found.status}"
    return f"role plan {pid} {state}; only the plan held now can be approved"


def release_verdict(found: HeldPlan | None, ttl: dt.timedelta,
                    now: dt.datetime) -> Literal["refused", "expired", "released"]:
    """Whether the approval of ``found`` releases it at ``now``: refused unless it is approved
    (or applied: planned again while its changes are still queued, it is released again until
    its approval expires), expired once the approval is older than ``ttl``."""
    if found is None or found.status not in RELEASABLE:
        return "refused"
    if now - dt.datetime.fromisoformat(found.approved) > ttl:
        return "expired"
    return "released"


def latest(plans: Iterable[HeldPlan]) -> HeldPlan | None:
    """The plan created last among ``plans``, if any."""
    return max(plans, key=lambda p: p.created, default=None)


# -- the rolling window of grants and revocations ------------------------------------------------
def window(change: RoleChange) -> str:
    """The partition ``change`` counts in: revocations and grants have a window each."""
    return WINDOWS[change.action.value]


def window_row(change: RoleChange, now: dt.datetime) -> dict[str, object]:
    """The row that counts ``change``, released at ``now``, in its window."""
    return {"PartitionKey": window(change), "RowKey": change.key, "at": stamp(now)}


def split_window(rows: Iterable[Mapping[str, object]],
                 since: dt.datetime) -> tuple[frozenset[str], list[str]]:
    """The keys of the rows released at or after ``since``, and those of the older rows (to
    be dropped)."""
    recent: set[str] = set()
    old: list[str] = []
    horizon = stamp(since)
    for row in rows:
        key = str(row["RowKey"])
        if str(row.get("at", "")) >= horizon:
            recent.add(key)
        else:
            old.append(key)
    return frozenset(recent), old


# -- the latest decision per role and principal -------------------------------------------------
def pair(role_id: str, principal_id: str) -> str:
    """The key of a (role, principal) pair: both ids in lower case."""
    return f"{role_id.lower()}:{principal_id.lower()}"


def decision_row(pid: str, change: RoleChange, at: dt.datetime) -> dict[str, object]:
    """The row that makes ``change``, released by plan ``pid`` at ``at``, the latest decision
    for its role and principal."""
    return {"PartitionKey": "decision", "RowKey": pair(change.role_id, change.principal_id),
            "action": change.action.value, "plan": pid, "at": stamp(at)}


def decision_from_row(row: Mapping[str, object]) -> Decision:
    """The decision a ``decision`` row records."""
    return Decision(Action(str(row["action"])), str(row["plan"]))


def released_horizon(at: dt.datetime) -> str:
    """Rows of the former ``released`` partition stamped before this are dropped."""
    return stamp(at - dt.timedelta(days=RELEASED_DAYS))
