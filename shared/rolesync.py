"""Admin-role sync, the acting half: read AD and Graph, plan (``shared.roles``), hold or release
the plan, apply one change, log, audit and notify.

    timer roles ─▶ run_cycle(svc)
                    ├─ read: AD groups in ROLES_OU and their members (nested, in a thread)
                    │        Graph role definitions, assignments (or PIM eligibilities) per role,
                    │        the cloud users of group members and of role holders
                    ├─ plan ─▶ guards: read failure → SafetyStop; threshold → held plan
                    │          (table ``roleplans``; ``approve_plan`` releases exactly that id)
                    ├─ audit rows + log events for every planned / skipped / blocked change
                    ├─ notification with the cycle log attached, when something changed or was
                    │  blocked (a blocked state already alerted is not alerted again)
                    └─ returns the changes to enqueue, one message each on queue ``roles``
    queue roles ─▶ apply_change(settings, graph, item): re-checks the guards, then one
                    idempotent Graph call (already there / already gone is success)

Modes (``ROLES_MODE``): ``active`` uses ``roleAssignments`` at directory scope ``/``;
``eligible`` uses PIM ``roleEligibilityScheduleRequests`` (adminAssign / adminRemove) with
``ROLES_PIM_JUSTIFICATION`` and, when ``ROLES_PIM_DURATION_DAYS`` is set, an expiry.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from .config import RolesSettings, Settings
from .errors import PermanentError, ProvisioningError, SafetyStop, TransientError
from .log import get_logger, redact
from .roles import (
    STEP,
    Action,
    AdGroup,
    Assignment,
    Blocked,
    CloudUser,
    GroupMembers,
    RoleChange,
    RoleDefinition,
    RolePlan,
    is_allowed,
    plan,
)
from .storage import table_service

if TYPE_CHECKING:
    from .messages import WorkItem

log = get_logger(__name__)

PLANS_TABLE = "roleplans"
USER_FIELDS = ["id", "userPrincipalName", "displayName", "onPremisesImmutableId",
               "onPremisesSyncEnabled"]
CONFLICT = "A conflicting object"


def immutable_id(object_guid: uuid.UUID) -> str:
    """The ``onPremisesImmutableId`` Entra Connect gives a user: base64 of the objectGUID bytes
    in AD's (little-endian) order."""
    return base64.b64encode(object_guid.bytes_le).decode("ascii")


# -- what the adapters need from their peers -------------------------------------------------


class DirectoryReader(Protocol):
    """The part of ``shared.directory.Directory`` the role sync reads with."""

    def groups_in(self, ou_dn: str) -> list[tuple[str, str]]: ...

    def group_members(self, group: str, *, nested: bool = False) -> list[uuid.UUID]: ...


class RoleService(Protocol):
    """The part of ``shared.flow.Service`` a role cycle uses."""

    settings: Settings

    def directory(self) -> Any: ...

    def graph(self) -> Any: ...

    def mailer(self) -> Any: ...


# -- Graph, role side ------------------------------------------------------------------------


def _sdk(graph: Any) -> Any:
    """The msgraph ``GraphServiceClient`` behind ``graph`` (ours wraps it; tests may pass it)."""
    for name in ("sdk", "client", "_client", "_sdk"):
        inner = getattr(graph, name, None)
        if inner is not None and hasattr(inner, "role_management"):
            return inner
    if hasattr(graph, "role_management"):
        return graph
    raise TypeError("role sync needs a Graph client with role_management")


class GraphAnswer(PermanentError):
    """Graph refused a role call; ``status`` and ``code`` let the caller decide whether the
    answer means "already done"."""

    def __init__(self, reason: str, *, status: int, code: str, user: str = "") -> None:
        super().__init__(reason, user=user, step=STEP, fix=(
            "check the Graph permissions RoleManagement.ReadWrite.Directory (or, for PIM, "
            "RoleEligibilitySchedule.ReadWrite.Directory) and the request Graph names"))
        self.status = status
        self.code = code


def _classify(exc: Exception, action: str, user: str) -> ProvisioningError:
    status = int(getattr(exc, "response_status_code", 0) or 0)
    error = getattr(exc, "error", None)
    code = str(getattr(error, "code", "") or "unknown")
    message = str(getattr(error, "message", "") or "").rstrip(".")
    reason = f"Graph answered {status} {code} to {action}: {message}"
    if status == 429 or status >= 500:
        return TransientError(reason, user=user, step=STEP, fix="none needed; retried later")
    return GraphAnswer(reason, status=status, code=code, user=user)


class RoleGraph:
    """The role endpoints of Graph, through msgraph-sdk. Errors it cannot decide on propagate
    as ``TransientError`` (429/5xx/network) or ``PermanentError`` (anything else)."""

    def __init__(self, graph: Any) -> None:
        self._client = _sdk(graph)

    @property
    def _directory(self) -> Any:
        return self._client.role_management.directory

    async def _pages(self, builder: Any, query: Any, headers: dict[str, str] | None = None
                     ) -> list[Any]:
        from kiota_abstractions.base_request_configuration import RequestConfiguration

        config = RequestConfiguration(query_parameters=query)
        for name, value in (headers or {}).items():
            config.headers.add(name, value)
        items: list[Any] = []
        page = await self._call(builder.get(request_configuration=config))
        while page is not None:
            items.extend(page.value or [])
            link = getattr(page, "odata_next_link", None)
            if not link:
                break
            page = await self._call(builder.with_url(link).get())
        return items

    async def _call(self, awaitable: Any, action: str = "a role call", user: str = "") -> Any:
        from msgraph.generated.models.o_data_errors.o_data_error import ODataError

        try:
            return await awaitable
        except ODataError as exc:
            raise _classify(exc, action, user) from None
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise TransientError(f"Graph did not answer {action} ({type(exc).__name__})",
                                 user=user, step=STEP, fix="none needed; retried later",
                                 retry_after=30) from None

    async def definitions(self) -> list[RoleDefinition]:
        builder = self._directory.role_definitions
        query = builder.RoleDefinitionsRequestBuilderGetQueryParameters(
            select=["id", "displayName", "templateId"])
        return [RoleDefinition(str(d.id), str(d.display_name), str(d.template_id or d.id))
                for d in await self._pages(builder, query)]

    async def definition(self, role_id: str) -> RoleDefinition | None:
        try:
            found = await self._call(
                self._directory.role_definitions.by_unified_role_definition_id(role_id).get())
        except GraphAnswer as exc:
            if exc.status == 404:
                return None
            raise
        return RoleDefinition(str(found.id), str(found.display_name),
                              str(found.template_id or found.id))

    async def holders(self, role_id: str, *, eligible: bool, principal_id: str | None = None
                      ) -> list[Assignment]:
        """Assignments (or, with ``eligible``, eligibility schedules) of one role at any scope."""
        text = f"roleDefinitionId eq '{_quote(role_id)}'"
        if principal_id:
            text += f" and principalId eq '{_quote(principal_id)}'"
        if eligible:
            builder = self._directory.role_eligibility_schedules
            query = builder.RoleEligibilitySchedulesRequestBuilderGetQueryParameters(filter=text)
        else:
            builder = self._directory.role_assignments
            query = builder.RoleAssignmentsRequestBuilderGetQueryParameters(filter=text)
        return [
            Assignment(str(a.id), str(a.role_definition_id), str(a.principal_id),
                       str(a.directory_scope_id or ""))
            for a in await self._pages(builder, query)
        ]

    async def user_by_immutable_id(self, value: str) -> CloudUser | None:
        builder = self._client.users
        query = builder.UsersRequestBuilderGetQueryParameters(
            filter=f"onPremisesImmutableId eq '{_quote(value)}'", select=USER_FIELDS, count=True)
        found = await self._pages(builder, query, {"ConsistencyLevel": "eventual"})
        return _cloud_user(found[0]) if found else None

    async def user(self, principal_id: str) -> CloudUser | None:
        """The user ``principal_id`` names, or None when it is no user (a group, an app)."""
        from kiota_abstractions.base_request_configuration import RequestConfiguration

        builder = self._client.users.by_user_id(principal_id)
        query = builder.UserItemRequestBuilderGetQueryParameters(select=USER_FIELDS)
        try:
            found = await self._call(
                builder.get(request_configuration=RequestConfiguration(query_parameters=query)))
        except GraphAnswer as exc:
            if exc.status == 404:
                return None
            raise
        return _cloud_user(found)

    async def assign(self, role_id: str, principal_id: str) -> bool:
        """Create an active assignment at ``/``; False when it was already there."""
        from msgraph.generated.models.unified_role_assignment import UnifiedRoleAssignment

        body = UnifiedRoleAssignment(role_definition_id=role_id, principal_id=principal_id,
                                     directory_scope_id="/")
        try:
            await self._call(self._directory.role_assignments.post(body))
        except GraphAnswer as exc:
            # Graph answers a duplicate with a generic 400; confirm by reading, not by text.
            if exc.status in (400, 409) and await self._active(role_id, principal_id):
                return False
            raise
        return True

    async def unassign(self, role_id: str, principal_id: str) -> bool:
        """Delete the active assignment at ``/``; False when it was already gone."""
        found = await self._active(role_id, principal_id)
        if found is None:
            return False
        try:
            await self._call(
                self._directory.role_assignments.by_unified_role_assignment_id(found.id).delete())
        except GraphAnswer as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def _active(self, role_id: str, principal_id: str) -> Assignment | None:
        for item in await self.holders(role_id, eligible=False, principal_id=principal_id):
            if item.directory_scope_id == "/":
                return item
        return None

    async def eligibility(self, action: str, role_id: str, principal_id: str,
                          justification: str, days: int | None) -> bool:
        """adminAssign / adminRemove a PIM eligibility at ``/``; False when already so."""
        from msgraph.generated.models.expiration_pattern import ExpirationPattern
        from msgraph.generated.models.expiration_pattern_type import ExpirationPatternType
        from msgraph.generated.models.request_schedule import RequestSchedule
        from msgraph.generated.models.unified_role_eligibility_schedule_request import (
            UnifiedRoleEligibilityScheduleRequest,
        )
        from msgraph.generated.models.unified_role_schedule_request_actions import (
            UnifiedRoleScheduleRequestActions,
        )

        body = UnifiedRoleEligibilityScheduleRequest(
            action=UnifiedRoleScheduleRequestActions(action),
            role_definition_id=role_id,
            principal_id=principal_id,
            directory_scope_id="/",
            justification=justification,
        )
        if action == "adminAssign":
            start = dt.datetime.now(dt.UTC).replace(microsecond=0)
            expiration = (
                ExpirationPattern(type=ExpirationPatternType.AfterDateTime,
                                  end_date_time=start + dt.timedelta(days=days))
                if days else ExpirationPattern(type=ExpirationPatternType.NoExpiration)
            )
            body.schedule_info = RequestSchedule(start_date_time=start, expiration=expiration)
        try:
            await self._call(self._directory.role_eligibility_schedule_requests.post(body))
        except GraphAnswer as exc:
            already = ("RoleAssignmentExists", "RoleAssignmentDoesNotExist")
            if exc.status == 400 and exc.code in already:
                return False
            raise
        return True


def _quote(value: str) -> str:
    return value.replace("'", "''")


def _cloud_user(found: Any) -> CloudUser:
    return CloudUser(
        id=str(found.id),
        user_principal_name=str(found.user_principal_name or ""),
        display_name=str(found.display_name or ""),
        on_premises_immutable_id=found.on_premises_immutable_id,
        on_premises_sync_enabled=found.on_premises_sync_enabled,
    )


# -- reading one cycle's inputs --------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    groups: list[AdGroup]
    definitions: list[RoleDefinition]
    members: dict[str, GroupMembers]
    assignments: list[Assignment]
    users: list[CloudUser]


def read_directory(directory: DirectoryReader, ou: str) -> tuple[list[AdGroup], dict[str,
                                                                                  GroupMembers]]:
    """The groups in the roles OU and their members (blocking: call it in a thread).

    A failure to list the OU is a ``SafetyStop``; a failure to read one group marks that group
    incomplete, which the planner turns into a ``SafetyStop`` if the group maps to a role.
    """
    try:
        groups = [AdGroup(name, dn) for name, dn in directory.groups_in(ou)]
    except Exception as exc:
        raise SafetyStop(
            f"the groups of the roles OU could not be read ({_why(exc)}); no role was changed",
            user=ou, step=STEP,
            fix="check ROLES_OU, the domain controller and the service account; the next "
            "cycle retries",
        ) from None
    members: dict[str, GroupMembers] = {}
    for group in groups:
        try:
            guids = directory.group_members(group.name, nested=True)
        except Exception as exc:
            members[group.name] = GroupMembers(frozenset(), complete=False, problem=_why(exc))
            continue
        members[group.name] = GroupMembers(frozenset(immutable_id(g) for g in guids))
    return groups, members


def _why(exc: BaseException) -> str:
    text = exc.reason if isinstance(exc, ProvisioningError) else str(exc)
    return redact(f"{type(exc).__name__}: {text}"[:240])


async def read_inputs(settings: Settings, directory: DirectoryReader, graph: Any) -> Inputs:
    """Everything ``plan`` needs: AD side in a thread, Graph side on the loop."""
    roles = settings.roles
    if not roles.ou:
        raise PermanentError("ROLES_OU is not set", step=STEP,
                             fix="set ROLES_OU to the DN of the OU holding the role groups")
    groups, members = await asyncio.to_thread(read_directory, directory, roles.ou)
    api = RoleGraph(graph)
    definitions = await api.definitions()
    by_name = {d.display_name.casefold(): d for d in definitions}
    by_template = {d.template_id.lower(): d for d in definitions}
    wanted: dict[str, RoleDefinition] = {}
    mapped = {k.casefold(): v.lower() for k, v in roles.group_map.items()}
    for group in groups:
        role = (by_template.get(mapped[group.name.casefold()])
                if group.name.casefold() in mapped else by_name.get(group.name.casefold()))
        if role is not None:
            wanted[role.id] = role
    eligible = roles.mode == "eligible"
    assignments: list[Assignment] = []
    for role_id in sorted(wanted):
        assignments.extend(await api.holders(role_id, eligible=eligible))

    users: dict[str, CloudUser] = {}
    for read in members.values():
        for value in sorted(read.immutable_ids):
            user = await api.user_by_immutable_id(value)
            if user is not None:
                users[user.id.lower()] = user
    for assignment in assignments:
        if assignment.principal_id.lower() not in users:
            holder = await api.user(assignment.principal_id)
            if holder is not None:
                users[holder.id.lower()] = holder
    return Inputs(groups, definitions, members, assignments, list(users.values()))


async def build_plan(settings: Settings, directory: DirectoryReader, graph: Any) -> RolePlan:
    """Read and plan, changing nothing (``cli roles plan``)."""
    inputs = await read_inputs(settings, directory, graph)
    return plan(inputs.groups, inputs.definitions, inputs.members, inputs.assignments,
                inputs.users, settings.roles)


# -- held plans ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldPlan:
    """A plan the threshold held, as the ``roleplans`` table keeps it."""

    plan_id: str
    status: str  # held, approved, applied, superseded
    revocations: int
    grants: int
    reason: str
    created: str
    changes: tuple[str, ...] = ()


class PlanStore:
    """Table ``roleplans``: PartitionKey ``plan`` rows by plan id, and ``state`` rows."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    @classmethod
    def open(cls, settings: Settings) -> PlanStore:
        service = table_service(settings.storage)
        return cls(service.create_table_if_not_exists(PLANS_TABLE))

    def get(self, pid: str) -> HeldPlan | None:
        try:
            row = self._table.get_entity("plan", pid)
        except ResourceNotFoundError:
            return None
        return _held(row)

    def hold(self, result: RolePlan) -> HeldPlan:
        """Record ``result`` as held (idempotent); older held plans become superseded."""
        assert result.held is not None
        pid = result.plan_id
        for row in self._table.query_entities("PartitionKey eq 'plan' and status eq 'held'"):
            if row["RowKey"] != pid:
                self._table.update_entity({"PartitionKey": "plan", "RowKey": row["RowKey"],
                                           "status": "superseded"}, mode=UpdateMode.MERGE)
        entity = {
            "PartitionKey": "plan",
            "RowKey": pid,
            "status": "held",
            "revocations": len(result.revocations),
            "grants": len(result.grants),
            "reason": result.held.reason,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            # Table properties hold 64 KiB; the operator needs the gist, the plan id is exact.
            "changes": json.dumps([c.describe() for c in result.changes])[:30000],
        }
        # Held (or approved) already: keep its status and time.
        with contextlib.suppress(ResourceExistsError):
            self._table.create_entity(entity)
        found = self.get(pid)
        assert found is not None
        return found

    def approve(self, pid: str) -> HeldPlan:
        found = self.get(pid)
        if found is None or found.status not in ("held", "approved"):
            state = "is unknown" if found is None else f"is {found.status}"
            raise PermanentError(
                f"role plan {pid} {state}; only a held plan can be approved",
                step="roles approve",
                fix="run `python -m shared.cli roles plan` to see the plan id held now",
            )
        self._table.update_entity({"PartitionKey": "plan", "RowKey": pid,
                                   "status": "approved"}, mode=UpdateMode.MERGE)
        return HeldPlan(**{**found.__dict__, "status": "approved"})

    def mark(self, pid: str, status: str) -> None:
        self._table.update_entity({"PartitionKey": "plan", "RowKey": pid, "status": status},
                                  mode=UpdateMode.MERGE)

    def latest(self) -> HeldPlan | None:
        rows = [_held(r) for r in self._table.query_entities(
            "PartitionKey eq 'plan' and (status eq 'held' or status eq 'approved')")]
        return max(rows, key=lambda r: r.created) if rows else None

    def last_alert(self) -> str:
        try:
            return str(self._table.get_entity("state", "alert").get("fingerprint", ""))
        except ResourceNotFoundError:
            return ""

    def alerted(self, fingerprint: str) -> None:
        self._table.upsert_entity({"PartitionKey": "state", "RowKey": "alert",
                                   "fingerprint": fingerprint})


def _held(row: Any) -> HeldPlan:
    return HeldPlan(
        plan_id=str(row["RowKey"]),
        status=str(row.get("status", "")),
        revocations=int(row.get("revocations", 0)),
        grants=int(row.get("grants", 0)),
        reason=str(row.get("reason", "")),
        created=str(row.get("created", "")),
        changes=tuple(json.loads(row.get("changes") or "[]")),
    )


def approve_plan(settings: Settings, plan_id: str) -> HeldPlan:
    """Approve the held plan ``plan_id`` (``cli roles approve``). The next cycle applies it only
    if it computes the very same plan id; raises ``PermanentError`` when no such plan is held."""
    approved = PlanStore.open(settings).approve(plan_id.strip())
    log.warning("role_plan_approved", plan_id=approved.plan_id,
                revocations=approved.revocations, grants=approved.grants)
    return approved


def current_plan(settings: Settings) -> HeldPlan | None:
    """The plan held (or approved and not yet applied) most recently, if any."""
    return PlanStore.open(settings).latest()


# -- one cycle -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditEvent:
    """One audit row: ``kind`` is planned, applied, skipped or blocked."""

    kind: str
    user: str
    action: str
    before: Any
    after: Any

    def record_args(self, correlation_id: str) -> dict[str, Any]:
        """Keyword arguments for ``shared.ledger.Audit.record``."""
        return {"user": self.user, "system": "entra", "action": f"role_change_{self.kind}",
                "before": self.before, "after": {"what": self.action, **self.after},
                "correlation_id": correlation_id}


@dataclass
class ChangeResult:
    """What ``apply_change`` did. ``changes`` are (action, before, after) for the audit."""

    change: RoleChange
    outcome: str  # applied, already, blocked
    detail: str = ""
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)


@dataclass
class CycleResult:
    """One role cycle: the plan, what to enqueue, and what was logged, audited and mailed."""

    correlation_id: str
    plan: RolePlan | None = None
    to_enqueue: list[RoleChange] = field(default_factory=list)
    held: HeldPlan | None = None
    stopped: SafetyStop | None = None
    applied: list[ChangeResult] = field(default_factory=list)
    audit: list[AuditEvent] = field(default_factory=list)
    log_lines: list[str] = field(default_factory=list)
    notified: bool = False

    @property
    def log_text(self) -> str:
        return "\n".join(self.log_lines) + "\n"


class _CycleLog:
    """The cycle's log file, in the shape the PowerShell script's log had: time, level, text."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def __call__(self, level: str, text: str) -> None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        self.lines.append(f"{stamp} [{level}] {text}")


async def run_cycle(svc: RoleService, *, apply: bool = False,
                    correlation_id: str | None = None) -> CycleResult:
    """Plan one role cycle, apply the guards, and return the changes to enqueue.

    ``apply=True`` applies them directly, one at a time, instead (tests; no queue needed).
    Audit rows are written through ``svc.audit`` when the service has one; the notification
    goes through ``svc.mailer()`` when the cycle changed or blocked something.
    """
    settings = svc.settings
    result = CycleResult(correlation_id=correlation_id or uuid.uuid4().hex)
    note = _CycleLog(result.log_lines)
    cid = result.correlation_id
    note("INFO", f"role sync started (mode {settings.roles.mode}, OU {settings.roles.ou})")
    store = PlanStore.open(settings)
    try:
        role_plan = await build_plan(settings, svc.directory(), svc.graph())
    except SafetyStop as stop:
        result.stopped = stop
        note("ERROR", str(stop))
        log.error("role_change_blocked", guard="directory-read-failed", user=stop.user,
                  reason=stop.reason, correlation_id=cid)
        result.audit.append(AuditEvent("blocked", stop.user, "cycle", None,
                                       {"reason": stop.reason}))
        await _finish(svc, store, result, fingerprint=_fingerprint(["read", stop.user]))
        return result
    result.plan = role_plan
    pid = role_plan.plan_id
    for name in role_plan.unknown_groups:
        note("WARNING", f"AD group '{name}' matches no Entra role; it was ignored")
        log.warning("role_group_unmapped", group=name, correlation_id=cid)
    for skip in role_plan.skipped:
        note("WARNING", f"skipped: {skip.reason}")
        log.info("role_change_skipped", user=skip.user, role=skip.role_name, group=skip.group,
                 reason=skip.reason, correlation_id=cid)
        result.audit.append(AuditEvent("skipped", skip.user, "grant", None,
                                       {"role": skip.role_name, "reason": skip.reason}))
    for blocked in role_plan.blocked:
        _blocked(note, result, blocked, cid)
    for change in role_plan.changes:
        note("INFO", f"planned: {change.describe()}")
        log.info("role_change_planned", user=change.user, principal=change.principal_id,
                 role=change.role_name, action=change.action.value, group=change.group,
                 plan_id=pid, correlation_id=cid)
        result.audit.append(_event("planned", change, pid))

    release = role_plan.changes
    if role_plan.held is not None:
        stored = store.get(pid)
        if stored is not None and stored.status == "approved":
            note("WARNING", f"plan {pid} is above the threshold and was approved; applying it")
            log.warning("role_plan_released", plan_id=pid, correlation_id=cid)
            store.mark(pid, "applied")
        else:
            result.held = store.hold(role_plan)
            release = ()
            _blocked(note, result, role_plan.held, cid)

    result.to_enqueue = list(release)
    if apply:
        for change in release:
            try:
                outcome = await apply_change(settings, svc.graph(), change, correlation_id=cid)
            except ProvisioningError as exc:
                note("ERROR", str(exc))
                result.applied.append(ChangeResult(change, "failed", str(exc)))
                continue
            note("INFO", f"{outcome.outcome}: {change.describe()}")
            result.applied.append(outcome)
            kind = "applied" if outcome.outcome == "applied" else "skipped"
            result.audit.append(_event(kind, outcome.change, pid))
    elif release:
        note("INFO", f"{len(release)} change(s) queued on 'roles' (plan {pid})")

    keys = [b.key for b in role_plan.blocked] + list(role_plan.unknown_groups)
    if role_plan.held is not None and result.held is not None:
        keys.append(f"held:{pid}")
    await _finish(svc, store, result, fingerprint=_fingerprint(keys),
                  changed=bool(release))
    return result


def _blocked(note: _CycleLog, result: CycleResult, blocked: Blocked, cid: str) -> None:
    note("ERROR", f"blocked ({blocked.guard.value}): {blocked.reason}. Fix: {blocked.fix}")
    log.warning("role_change_blocked", guard=blocked.guard.value, user=blocked.user,
                principal=blocked.principal_id, role=blocked.role_name, group=blocked.group,
                reason=blocked.reason, correlation_id=cid)
    result.audit.append(AuditEvent(
        "blocked", blocked.user or blocked.group or blocked.role_name, blocked.guard.value, None,
        {"role": blocked.role_name, "reason": blocked.reason, "fix": blocked.fix,
         "would_grant": blocked.would_grant, "would_revoke": blocked.would_revoke},
    ))


def _event(kind: str, change: RoleChange, pid: str = "") -> AuditEvent:
    after = {"role": change.role_name, "role_id": change.role_id,
             "principal": change.principal_id, "group": change.group, "plan_id": pid}
    return AuditEvent(kind, change.user or change.principal_id, change.action.value, None, after)


def _fingerprint(keys: Iterable[str]) -> str:
    text = "\n".join(sorted(keys))
    return hashlib.sha256(text.encode()).hexdigest()[:16] if text else ""


async def _finish(svc: RoleService, store: PlanStore, result: CycleResult, *,
                  fingerprint: str, changed: bool = False) -> None:
    """Write the audit rows, and mail when something changed or a new block appeared."""
    audit = getattr(svc, "audit", None)
    if audit is not None:
        for event in result.audit:
            audit.record(**event.record_args(result.correlation_id))
    last = store.last_alert()
    new_block = bool(fingerprint) and fingerprint != last
    note = _CycleLog(result.log_lines)
    note("INFO", "role sync finished")
    if changed or new_block:
        result.notified = await notify(svc, result)
        if result.notified:
            store.alerted(fingerprint)
    elif not fingerprint and last:
        store.alerted("")  # the blocks cleared: the next one alerts again


async def notify(svc: RoleService, result: CycleResult) -> bool:
    """Mail the cycle's notification with its log attached as ``rolesync-<time>.log``, as the
    PowerShell script did; True when it went out (a mail failure is logged, not raised, so
    that a mail outage never stops the role sync itself)."""
    from .mail import Attachment
    from .reports import render_alert

    if svc.settings.mail.transport == "none":
        return False
    title, summary, fix = _summary(result)
    rows = [(c.action.value, c.role_name, c.user, c.group) for c in _done(result)]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    mail = render_alert(
        title,
        summary,
        columns=("action", "role", "user", "AD group") if rows else (),
        rows=rows,
        fix=fix,
        severity="error" if (result.stopped or result.held or _blocked_any(result))
        else "info",
        attachments=[Attachment(f"rolesync-{stamp}.log", result.log_text.encode("utf-8"),
                                "text/plain")],
    )
    try:
        await svc.mailer().send(mail)
    except ProvisioningError as exc:
        log.error("role_notification_failed", reason=str(exc),
                  correlation_id=result.correlation_id)
        return False
    log.info("role_notification_sent", title=title, correlation_id=result.correlation_id)
    return True


def _done(result: CycleResult) -> list[RoleChange]:
    if result.applied:
        return [r.change for r in result.applied if r.outcome == "applied"]
    return list(result.to_enqueue)


def _blocked_any(result: CycleResult) -> bool:
    return bool(result.plan and result.plan.blocked)


def _summary(result: CycleResult) -> tuple[str, list[str], str]:
    """Title, summary paragraphs and the fix of the cycle's notification."""
    if result.stopped is not None:
        return ("Role sync stopped: nothing was changed", [result.stopped.reason],
                result.stopped.fix)
    role_plan = result.plan
    assert role_plan is not None
    lines: list[str] = []
    fixes: list[str] = []
    done = _done(result)
    if done:
        verb = "made" if result.applied else "queued"
        lines.append(f"{len(done)} role change(s) {verb}; the log is attached.")
    failed = [r for r in result.applied if r.outcome == "failed"]
    lines += [f"failed: {r.detail}" for r in failed]
    for blocked in role_plan.blocked:
        lines.append(f"blocked: {blocked.reason}.")
        fixes.append(blocked.fix)
    if result.held is not None and role_plan.held is not None:
        lines.append(f"held: {role_plan.held.reason}.")
        fixes.append(role_plan.held.fix)
    lines += [f"ignored: AD group '{n}' matches no Entra role." for n in role_plan.unknown_groups]
    if result.held is not None:
        title = f"Role sync held plan {result.held.plan_id}: approval needed"
    elif role_plan.blocked:
        title = "Role sync blocked changes"
    else:
        title = f"Role sync: {len(done)} change(s)"
    return title, lines, "; ".join(fixes)


# -- one change ------------------------------------------------------------------------------


def change_from(item: RoleChange | WorkItem) -> RoleChange:
    """A ``RoleChange`` from a queue work item (ids only) or from a plan."""
    if isinstance(item, RoleChange):
        return item
    if not item.role or item.action not in ("grant", "revoke"):
        raise PermanentError("the role message names no role or direction", step=STEP,
                             user=str(item.user), fix="nothing to redo; the next cycle replans")
    return RoleChange(Action(item.action), item.role, str(item.user))


async def apply_change(settings: Settings, graph: Any, item: RoleChange | WorkItem, *,
                       correlation_id: str = "") -> ChangeResult:
    """Carry out one grant or revocation, idempotently, after checking the guards again.

    An assignment that already exists, or is already gone, is success (``outcome="already"``).
    Raises ``SafetyStop`` when a guard refuses (break-glass, role not allowed, principal not a
    synced user), ``TransientError`` when Graph is busy or down, ``PermanentError`` otherwise.
    """
    change = change_from(item)
    roles = settings.roles
    cid = correlation_id or getattr(item, "correlation_id", "")
    api = RoleGraph(graph)
    role = await api.definition(change.role_id)
    if role is None:
        raise PermanentError(f"role definition {change.role_id} does not exist", step=STEP,
                             user=change.principal_id, fix="check ROLES_GROUP_MAP")
    user = await api.user(change.principal_id)
    who = user.user_principal_name if user else change.principal_id
    change = RoleChange(change.action, role.id, change.principal_id, role.display_name, who,
                        user.display_name if user else "", change.group)
    _guard(change, role, user, roles)
    if user is None:  # the user was deleted: its assignments went with it
        return _applied(change, "already", "the principal no longer exists", cid)

    eligible = roles.mode == "eligible"
    if eligible:
        verb = "adminAssign" if change.action is Action.GRANT else "adminRemove"
        done = await api.eligibility(verb, role.id, user.id, roles.pim_justification,
                                     roles.pim_duration_days)
    elif change.action is Action.GRANT:
        done = await api.assign(role.id, user.id)
    else:
        done = await api.unassign(role.id, user.id)
    return _applied(change, "applied" if done else "already", roles.mode, cid)


def _guard(change: RoleChange, role: RoleDefinition, user: CloudUser | None,
           roles: RolesSettings) -> None:
    refusal = ""
    if change.principal_id.lower() in roles.break_glass:
        refusal = "the principal is a break-glass account"
    elif not is_allowed(role, roles):
        refusal = f"role '{role.display_name}' is not on the allow-list"
    elif user is not None and not user.synced:
        refusal = f"{user.user_principal_name} is not a synced user (cloud-only)"
    elif user is None and change.action is Action.GRANT:
        refusal = "the principal is not a user"
    if refusal:
        log.warning("role_change_blocked", user=change.user, principal=change.principal_id,
                    role=role.display_name, action=change.action.value, reason=refusal)
        raise SafetyStop(f"{change.describe()} was refused: {refusal}", user=change.user,
                         step=STEP, fix="nothing was changed; check the AD group and the "
                         "ROLES_* settings")


def _applied(change: RoleChange, outcome: str, detail: str, cid: str) -> ChangeResult:
    event = "role_change_applied" if outcome == "applied" else "role_change_skipped"
    log.info(event, user=change.user, principal=change.principal_id, role=change.role_name,
             action=change.action.value, outcome=outcome, detail=detail, correlation_id=cid)
    after = {"role": change.role_name, "role_id": change.role_id,
             "principal": change.principal_id, "outcome": outcome, "detail": detail}
    kind = "applied" if outcome == "applied" else "skipped"
    return ChangeResult(change, outcome, detail,
                        changes=[(f"role_change_{kind}:{change.action.value}", None, after)])


# -- the CLI's view --------------------------------------------------------------------------


def describe_plan(svc: RoleService, console: Any) -> RolePlan | None:
    """Print the role plan and what the guards hold, changing nothing (``cli roles plan``)."""
    from rich.table import Table

    settings = svc.settings

    async def read() -> RolePlan:
        # The Graph client belongs to the loop it is made on: make it inside this one.
        return await build_plan(settings, svc.directory(), svc.graph())

    try:
        role_plan = asyncio.run(read())
    except SafetyStop as stop:
        console.print(f"[red]{stop}[/red]")
        return None
    table = Table(title=f"role plan {role_plan.plan_id} ({settings.roles.mode})")
    for column in ("action", "role", "user", "AD group"):
        table.add_column(column)
    for change in role_plan.changes:
        table.add_row(change.action.value, change.role_name, change.user, change.group)
    console.print(table)
    for entry in role_plan.mapped:
        state = "allowed" if entry.allowed else "[red]not allowed[/red]"
        console.print(f"group '{entry.group.name}' → {entry.role.display_name} ({state})")
    for name in role_plan.unknown_groups:
        console.print(f"[yellow]group '{name}' matches no Entra role[/yellow]")
    for blocked in role_plan.blocked:
        console.print(f"[red]blocked[/red]: {blocked.reason}. Fix: {blocked.fix}")
    if role_plan.held is not None:
        console.print(f"[red]held[/red]: {role_plan.held.reason}. Fix: {role_plan.held.fix}")
    held = current_plan(settings)
    if held is not None:
        console.print(f"stored plan {held.plan_id}: {held.status} since {held.created}")
    return role_plan

