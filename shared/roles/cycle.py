"""Admin-role sync, the handlers: the ``roles`` timer's cycle and the ``roles`` queue's change.

    timer roles ─▶ run_cycle(svc)
                    ├─ planner inputs (``shared.roles.inputs``): AD groups in ROLES_OU and
                    │  their members by group DN, role definitions with isPrivileged,
                    │  assignments, cloud users, break-glass accounts resolved, the
                    │  revocations of the window
                    ├─ plan (``shared.roles.planner``): the guards; limits hold what they cover
                    ├─ a held set: released when approved, else stored for approval
                    ├─ audit rows and log events for every planned, skipped, blocked change
                    ├─ notification (``shared.roles.notification``) when something changed or a new
                    │  block appeared (a block already alerted is not alerted again)
                    └─ returns the released changes, one message each on queue ``roles``
    queue roles ─▶ stale(svc, item): still wanted now? (the latest decision for the role and
                    principal, the role group's members, break-glass, the opt-in), read
                    before the work is claimed; a stale message changes nothing
                 ─▶ apply_change(settings, graph, item): the guards of
                    ``shared.roles.planner`` again, then one idempotent Graph call
                    (``shared.roles.graph``)

Modes (``ROLES_MODE``): ``active`` uses ``roleAssignments`` at directory scope ``/``;
``eligible`` uses PIM ``roleEligibilityScheduleRequests`` (adminAssign / adminRemove) with
``ROLES_PIM_JUSTIFICATION`` and, when ``ROLES_PIM_DURATION_DAYS`` is set, an expiry.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import uuid
from collections.abc import Iterable
from typing import Protocol

from shared.config import Settings
from shared.errors import PermanentError, ProvisioningError, SafetyStop
from shared.graph.client import GraphClient
from shared.log import get_logger
from shared.roles.graph import RoleGraph
from shared.roles.inputs import RoleReaders, build_plan, stale_change
from shared.roles.model import STEP, Action, Blocked, CycleStopped, RoleChange, RolePlan
from shared.roles.notification import MailSender, notify
from shared.roles.outcome import AuditEvent, AuditWriter, ChangeResult, CycleResult
from shared.roles.planner import BreakGlass, check_change
from shared.roles.plans import PlanStore

log = get_logger(__name__)


# -- what the handlers need from their peers ----------------------------------------------------
class RoleService(RoleReaders, Protocol):
    """The part of ``shared.flow.Service`` a role cycle uses."""

    @property
    def audit(self) -> AuditWriter | None: ...

    def mailer(self) -> MailSender: ...


class RoleMessage(Protocol):
    """A ``roles`` queue message (``shared.store.messages.WorkItem``): ids only."""

    @property
    def user(self) -> uuid.UUID: ...

    @property
    def role(self) -> str | None: ...

    @property
    def action(self) -> str | None: ...

    @property
    def plan(self) -> str | None: ...

    @property
    def correlation_id(self) -> str: ...


# -- one cycle ----------------------------------------------------------------------------------
async def run_cycle(svc: RoleService, *, apply: bool = False,
                    correlation_id: str | None = None) -> CycleResult:
    """Plan one role cycle with its guards; return the changes to enqueue.

    ``apply=True`` applies them directly, one at a time, instead (tests; no queue needed).
    Audit rows go through ``svc.audit`` when the service has one; the notification goes
    through ``svc.mailer()`` when the cycle changed or newly blocked something.
    """
    roles = svc.settings.roles
    result = CycleResult(correlation_id=correlation_id or uuid.uuid4().hex)
    note, cid = result.log, result.correlation_id
    note("INFO", "role sync started (mode {mode}, OU {ou})", mode=roles.mode, ou=roles.ou)
    store = await asyncio.to_thread(PlanStore.open, svc.settings)
    try:
        role_plan = await build_plan(svc, store)
    except SafetyStop as stop:
        result.stopped = stop
        guard = stop.guard.value if isinstance(stop, CycleStopped) else "stopped"
        note("ERROR", "{stop}", stop=stop)
        log.error("role_cycle_stopped", guard=guard, user=stop.user, reason=stop.reason,
                  correlation_id=cid)
        result.audit.append(AuditEvent("blocked", stop.user, "cycle", {"reason": stop.reason}))
        await _finish(svc, store, result, fingerprint=_fingerprint([guard, stop.user]))
        return result
    result.plan = role_plan
    _note_plan(result, role_plan)

    release = list(role_plan.released)
    held = role_plan.held
    if held is not None:
        ttl = dt.timedelta(hours=roles.approval_hours)
        if await asyncio.to_thread(store.release, held.plan_id, ttl):
            note("WARNING", "held plan {pid} was approved; its changes go ahead", pid=held.plan_id)
            log.warning("role_plan_released", plan_id=held.plan_id, correlation_id=cid)
            release += held.changes
        else:
            result.held = await asyncio.to_thread(store.hold, held)
            _blocked(result, Blocked(held.guard, held.reason, held.fix,
                                     would_grant=sum(c.action is Action.GRANT
                                                     for c in held.changes),
                                     would_revoke=sum(c.action is Action.REVOKE
                                                      for c in held.changes)))
    result.to_enqueue = sorted(release)
    if release and not apply:
        await asyncio.to_thread(store.record_release, role_plan.plan_id, release)
    if release:  # both directions count in the window (ROLES_MAX_GRANTS, _REVOCATIONS)
        await asyncio.to_thread(store.spend, release)
    if apply:
        await _apply_all(svc, result)
    elif release:
        note("INFO", "{n} change(s) queued on 'roles' (plan {pid})", n=len(release),
             pid=role_plan.plan_id)
    keys = [b.key for b in role_plan.blocked] + list(role_plan.unknown_groups)
    if result.held is not None:
        keys.append(f"held:{result.held.plan_id}")
    await _finish(svc, store, result, fingerprint=_fingerprint(keys), changed=bool(release))
    return result


def _note_plan(result: CycleResult, role_plan: RolePlan) -> None:
    note, cid, pid = result.log, result.correlation_id, role_plan.plan_id
    for name in role_plan.unknown_groups:
        note("WARNING", "AD group '{group}' matches no Entra role; it was ignored", group=name)
        log.warning("role_group_unmapped", group=name, correlation_id=cid)
    for skip in role_plan.skipped:
        note("WARNING", "skipped: {reason}", reason=skip.reason)
        log.info("role_change_skipped", user=skip.user, role=skip.role_name, group=skip.group,
                 reason=skip.reason, correlation_id=cid)
        result.audit.append(AuditEvent("skipped", skip.user, "grant",
                                       {"role": skip.role_name, "reason": skip.reason}))
    for blocked in role_plan.blocked:
        _blocked(result, blocked)
    for change in role_plan.changes:
        note("INFO", "planned: {change}", change=change.describe())
        log.info("role_change_planned", user=change.user, principal=change.principal_id,
                 role=change.role_name, action=change.action.value, group=change.group,
                 plan_id=pid, correlation_id=cid)
        result.audit.append(_event("planned", change, pid))


async def _apply_all(svc: RoleService, result: CycleResult) -> None:
    for change in result.to_enqueue:
        try:
            outcome = await apply_change(svc.settings, svc.graph(), change,
                                         correlation_id=result.correlation_id)
        except ProvisioningError as exc:
            result.log("ERROR", "{error}", error=exc)
            result.applied.append(ChangeResult(change, "failed", str(exc)))
            continue
        result.log("INFO", "{outcome}: {change}", outcome=outcome.outcome,
                   change=change.describe())
        result.applied.append(outcome)
        kind = "applied" if outcome.outcome == "applied" else "skipped"
        result.audit.append(_event(kind, outcome.change))


def _blocked(result: CycleResult, blocked: Blocked) -> None:
    result.log("ERROR", "blocked ({guard}): {reason}. Fix: {fix}", guard=blocked.guard.value,
               reason=blocked.reason, fix=blocked.fix)
    log.warning("role_change_blocked", guard=blocked.guard.value, user=blocked.user,
                principal=blocked.principal_id, role=blocked.role_name, group=blocked.group,
                reason=blocked.reason, correlation_id=result.correlation_id)
    result.audit.append(AuditEvent(
        "blocked", blocked.user or blocked.group or blocked.role_name, blocked.guard.value,
        {"role": blocked.role_name, "reason": blocked.reason, "fix": blocked.fix,
         "would_grant": blocked.would_grant, "would_revoke": blocked.would_revoke},
    ))


def _event(kind: str, change: RoleChange, pid: str = "") -> AuditEvent:
    after: dict[str, object] = {"role": change.role_name, "role_id": change.role_id,
                                "principal": change.principal_id, "group": change.group,
                                "plan_id": pid}
    return AuditEvent(kind, change.user or change.principal_id, change.action.value, after)


def _fingerprint(keys: Iterable[str]) -> str:
    text = "\n".join(sorted(keys))
    return hashlib.sha256(text.encode()).hexdigest()[:16] if text else ""


async def _finish(svc: RoleService, store: PlanStore, result: CycleResult, *,
                  fingerprint: str, changed: bool = False) -> None:
    """Write the audit rows, and mail when something changed or a new block appeared."""
    audit = svc.audit
    if audit is not None:
        def write(sink: AuditWriter = audit) -> None:
            for event in result.audit:
                event.write(sink, result.correlation_id)

        await asyncio.to_thread(write)
    last = await asyncio.to_thread(store.last_alert)
    new_block = bool(fingerprint) and fingerprint != last
    result.log("INFO", "role sync finished")
    if (changed or new_block) and svc.settings.mail.transport != "none":
        result.notified = await notify(svc.mailer(), result)
        if result.notified:
            await asyncio.to_thread(store.alerted, fingerprint)
    elif not fingerprint and last:
        await asyncio.to_thread(store.alerted, "")  # the blocks cleared: the next one alerts


async def stale(svc: RoleReaders, item: RoleMessage) -> str | None:
    """Why the queued role change ``item`` is no longer wanted now, or None when it is: the
    message names the work, the latest decision and what decides it are read again
    (``shared.roles.inputs.stale_change``). Called before the work is claimed, so that a message
    that fails changes no ledger row."""
    change = change_from(item)
    store = await asyncio.to_thread(PlanStore.open, svc.settings)
    reason = await stale_change(svc, store, change, item.plan or "")
    if reason is not None:
        log.warning("role_change_stale", principal=change.principal_id, role=change.role_id,
                    action=change.action.value, plan_id=item.plan or "", reason=reason,
                    correlation_id=item.correlation_id)
    return reason


# -- one change ---------------------------------------------------------------------------------
def change_from(item: RoleChange | RoleMessage) -> RoleChange:
    """A ``RoleChange`` from a queue message (ids only) or from a plan."""
    if isinstance(item, RoleChange):
        return item
    if not item.role or item.action not in ("grant", "revoke"):
        raise PermanentError("the role message names no role or direction", step=STEP,
                             user=str(item.user), fix="nothing to redo; the next cycle replans")
    return RoleChange(Action(item.action), item.role, str(item.user))


async def apply_change(settings: Settings, graph: GraphClient, item: RoleChange | RoleMessage,
                       *, correlation_id: str = "") -> ChangeResult:
    """Carry out one grant or revocation, idempotently, after ``shared.roles.planner.check_change``.

    An assignment that already exists, or is already gone, is success (``outcome="already"``).
    Raises ``SafetyStop`` when a guard refuses (break-glass, role not allowed or privileged
    without the opt-in, principal not a synced user), ``TransientError`` when Graph is busy
    or down, ``PermanentError`` otherwise.
    """
    change = change_from(item)
    roles = settings.roles
    cid = correlation_id or ("" if isinstance(item, RoleChange) else item.correlation_id)
    api = RoleGraph(graph)
    role = await api.definition(change.role_id)
    if role is None:
        raise PermanentError(f"role definition {change.role_id} does not exist", step=STEP,
                             user=change.principal_id, fix="check ROLES_GROUP_MAP")
    user = await graph.user(change.principal_id)
    change = RoleChange(change.action, role.id, change.principal_id, role.display_name,
                        user.upn if user else change.principal_id,
                        user.display_name if user else "", change.group)
    glass = BreakGlass(roles.break_glass_object_ids, roles.break_glass_upns)
    refused = check_change(change, role, user, roles, glass)
    if refused is not None:
        log.warning("role_change_blocked", guard=refused.guard.value, user=change.user,
                    principal=change.principal_id, role=role.display_name,
                    action=change.action.value, reason=refused.reason, correlation_id=cid)
        raise SafetyStop(f"{change.describe()} was refused: {refused.reason}",
                         user=change.user, step=STEP, fix=refused.fix)
    if user is None:  # the user was deleted: its assignments went with it
        return _applied(change, "already", "the principal no longer exists", cid)
    if roles.mode == "eligible":
        verb = "adminAssign" if change.action is Action.GRANT else "adminRemove"
        done = await api.eligibility(verb, role.id, user.id, roles.pim_justification,
                                     roles.pim_duration_days)
    elif change.action is Action.GRANT:
        done = await api.assign(role.id, user.id)
    else:
        done = await api.unassign(role.id, user.id)
    return _applied(change, "applied" if done else "already", roles.mode, cid)


def _applied(change: RoleChange, outcome: str, detail: str, cid: str) -> ChangeResult:
    event = "role_change_applied" if outcome == "applied" else "role_change_skipped"
    log.info(event, user=change.user, principal=change.principal_id, role=change.role_name,
             action=change.action.value, outcome=outcome, detail=detail, correlation_id=cid)
    after = {"role": change.role_name, "role_id": change.role_id,
             "principal": change.principal_id, "outcome": outcome, "detail": detail}
    kind = "applied" if outcome == "applied" else "skipped"
    return ChangeResult(change, outcome, detail,
                        changes=[(f"role_change_{kind}:{change.action.value}", None, after)])
