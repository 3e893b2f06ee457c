"""The leavers cycle (issue 27): who starts this cycle, and the plan held over the daily limit
(the step that takes one leaver through is ``leaver_step``).

    leavers_cycle   members of LEAVERS_GROUP (and, with LEAVERS_DISABLED_ACCOUNTS, provisioned
                    users whose account is disabled: one subtree search on userAccountControl)
                    ──▶ ``planner.cycle`` ──▶ queue ``leavers``, or one held plan and an alert
    approve         ``leavers approve <plan-id>``: the held plan released on the next cycle

What the cycle remembers between runs (since when a user leaves, the starts of the rolling
24 h, the held plan and the approvals) is one JSON cursor (``CursorStore``, ``leavers-state``),
written by this timer (a singleton in Functions) and by ``leavers approve``.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shared.errors import PermanentError
from shared.leavers import planner
from shared.leavers.planner import Candidate, Held, Seen
from shared.log import get_logger
from shared.store.ledger import State, now
from shared.store.messages import Step, WorkItem
from shared.store.pause import Half

from .handlers import enqueue
from .leaver_step import rules_of
from .service import io

if TYPE_CHECKING:
    from shared.ad.directory import DirectoryUser

    from .service import Service

log = get_logger("shared.flow")
STATE_CURSOR = "leavers-state"


# -- what the cycle remembers -----------------------------------------------------------------


@dataclass
class Memory:
    seen: dict[str, Seen] = field(default_factory=dict)
    starts: dict[str, dt.datetime] = field(default_factory=dict)
    held: Held | None = None
    held_at: str = ""
    approved: set[str] = field(default_factory=set)

    @classmethod
    def decode(cls, raw: bytes | None) -> Memory:
        if not raw:
            return cls()
        data = json.loads(raw)
        held = data.get("held")
        return cls(
            seen={u: Seen(dt.datetime.fromisoformat(v[0]), bool(v[1]))
                  for u, v in data.get("seen", {}).items()},
            starts={u: dt.datetime.fromisoformat(v) for u, v in data.get("starts", {}).items()},
            held=Held(held["plan_id"], tuple(held["users"]), int(held["count"]),
                      int(held["limit"])) if held else None,
            held_at=str(data.get("held_at", "")),
            approved=set(data.get("approved", [])),
        )

    def encode(self) -> bytes:
        held = self.held
        return json.dumps({
            "seen": {u: [s.since.isoformat(), s.was_disabled] for u, s in self.seen.items()},
            "starts": {u: at.isoformat() for u, at in self.starts.items()},
            "held": {"plan_id": held.plan_id, "users": list(held.users), "count": held.count,
                     "limit": held.limit} if held else None,
            "held_at": self.held_at,
            "approved": sorted(self.approved),
        }).encode()


async def load_memory(svc: Service) -> Memory:
    return Memory.decode(await io(svc.cursors.get, STATE_CURSOR))


# -- the cycle ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CycleResult:
    plan: planner.CyclePlan
    enqueued: tuple[WorkItem, ...] = ()


async def candidates(svc: Service) -> list[Candidate]:
    """The members of LEAVERS_GROUP and (when configured) the provisioned users whose AD
    account is disabled, as the planner reads them."""
    s = svc.settings.leavers
    directory = await svc.adirectory()
    provisioned = {row.user for row in await io(svc.ledger.rows, Step.LICENSE)
                   if row.state is State.DONE}
    rows = {row.user: row for row in await io(svc.ledger.rows, Step.LEAVER)}
    users: dict[uuid.UUID, tuple[DirectoryUser, bool]] = {}
    try:
        members = await io(directory.group_members, s.leavers_group)
    except PermanentError as exc:  # no such group: leavers not set up; nobody is a leaver
        if "was not found" not in exc.reason:
            raise
        log.warning("leavers_group_missing", group=s.leavers_group, reason=exc.reason,
                    fix=f"create the group {s.leavers_group} (docs/permissions.md) or set "
                        "LEAVERS_GROUP to the leavers group")
        members = []
    for guid in members:
        users[guid] = (await io(directory.user, guid), True)
    if s.leavers_disabled_accounts:
        for user in await io(directory.disabled_users):
            if user.guid in provisioned and user.guid not in users:
                users[user.guid] = (user, False)
    # Started: a leaver row, unless finished and back in the group (a new hand-off).
    return [Candidate(str(guid), user.sam, (user.upn or "").lower(), in_group=member,
                      enabled=user.enabled, provisioned=guid in provisioned,
                      started=guid in rows and not (rows[guid].state is State.DONE and member))
            for guid, (user, member) in users.items()]


async def decide(svc: Service, at: dt.datetime | None = None
                 ) -> tuple[planner.CyclePlan, Memory]:
    """The next cycle's plan and the memory it was made from; changes nothing (``plan``)."""
    at = at or now()
    memory = await load_memory(svc)
    found = await candidates(svc)
    plan = planner.cycle(memory.seen, found, at, rules_of(svc.settings),
                         started=len(planner.rolling(memory.starts, at)),
                         approved=frozenset(memory.approved))
    return plan, memory


async def leavers_cycle(svc: Service, at: dt.datetime | None = None) -> CycleResult:
    """Decide, then enqueue the leavers who start, or hold the lot and alert once per plan.
    Nothing while the provisioning half is paused (``python -m shared.cli pause``)."""
    if await io(svc.pauses.paused, Half.PROVISIONING) is not None:
        log.info("timer_paused", timer="leavers", half=Half.PROVISIONING.value,
                 fix="python -m shared.cli resume when the service should work again")
        return CycleResult(planner.CyclePlan((), {}))
    at = at or now()
    plan, memory = await decide(svc, at)
    sent: list[WorkItem] = []
    for decision in plan.decisions:
        if decision.verdict is planner.Verdict.START:
            item = WorkItem(user=uuid.UUID(decision.user), step=Step.LEAVER)
            await enqueue(svc, item)
            sent.append(item)
            memory.starts[decision.user] = at
            log.info("leaver_planned", user=decision.user, name=decision.name,
                     correlation_id=item.correlation_id)
    released = planner.plan_id(plan.start)
    if plan.start and released in memory.approved:
        log.warning("leavers_approved", plan_id=released, count=len(sent))
        memory.approved.discard(released)
    if plan.held is not None and (memory.held is None
                                  or memory.held.plan_id != plan.held.plan_id):
        await _hold(svc, plan.held)
        memory.held_at = at.isoformat()
    memory.held = plan.held
    memory.seen = plan.seen
    memory.starts = planner.rolling(memory.starts, at)
    await io(svc.cursors.put, STATE_CURSOR, memory.encode())
    log.info("leavers_cycle_done", started=len(sent),
             held=plan.held.count if plan.held else 0)
    return CycleResult(plan, tuple(sent))


async def _hold(svc: Service, held: Held) -> None:
    """A plan over the limit: one outcome row, one event and one alert mail."""
    from shared.mail.reports import render_alert

    from .alerts import deliver

    await io(svc.outcomes.record, "leaver_held", plan_id=held.plan_id, count=held.count,
             limit=held.limit)
    log.warning("leavers_held", plan_id=held.plan_id, count=held.count, limit=held.limit)
    mail = render_alert(
        f"{held.count} leavers held for approval",
        f"The leavers cycle would start {held.count} leavers, more than LEAVERS_MAX_PER_DAY "
        f"({held.limit}) in 24 hours; none of them was touched.",
        columns=("objectGUID",), rows=[(u,) for u in held.users],
        fix=f"check the list; if it is right: python -m shared.cli leavers approve "
            f"{held.plan_id}", severity="warning")
    await deliver(svc, mail, plan_id=held.plan_id)


def approve(svc: Service, plan_id: str) -> Held:
    """Record the operator's approval of the held plan ``plan_id``; the next cycle starts it
    if it holds the same leavers. PermanentError when no such plan is held."""
    memory = Memory.decode(svc.cursors.get(STATE_CURSOR))
    if memory.held is None or memory.held.plan_id != plan_id:
        held = memory.held.plan_id if memory.held else "none"
        raise PermanentError(f"no held leavers plan {plan_id} (held now: {held})",
                             step="leavers approve",
                             fix="run python -m shared.cli plan to see the plan held now")
    memory.approved.add(plan_id)
    svc.cursors.put(STATE_CURSOR, memory.encode())
    log.warning("leavers_approve_recorded", plan_id=plan_id, count=memory.held.count)
    return memory.held


def describe(plan: planner.CyclePlan) -> list[tuple[str, str, str]]:
    """The plan's lines for ``python -m shared.cli plan``: user, verdict, why."""
    return [(d.name or d.user, d.verdict.value, d.why) for d in plan.decisions]

