"""The role planner's inputs, read for one cycle: the groups in ROLES_OU by the DN found there
and their members (direct ones; nested ones with ROLES_NESTED, only groups under ROLES_OU), in
a thread; the role definitions with isPrivileged, the assignments (or PIM eligibilities) of
the mapped roles and the cloud users behind them, through the Graph role adapter;
ROLES_BREAK_GLASS_IDS resolved to the accounts Entra ID has now; and the revocations already
released in the window (``shared.roles.plans``). ``build_plan`` reads them and plans, changing
nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Protocol

from shared.config import RolesSettings, Settings
from shared.entra import CloudUser, immutable_id
from shared.errors import PermanentError, ProvisioningError, TransientError
from shared.graph.client import GraphClient
from shared.log import redact
from shared.roles.graph import RoleGraph
from shared.roles.model import (
    STEP,
    AdGroup,
    Assignment,
    CycleStopped,
    GroupMembers,
    Guard,
    RoleChange,
    RoleDefinition,
    RolePlan,
)
from shared.roles.planner import BreakGlass, PlanInputs, is_latest, map_groups, plan, stale_reason
from shared.roles.plans import PlanStore


class RoleDirectory(Protocol):
    """The part of ``shared.ad.directory.Directory`` the cycle reads with (blocking)."""

    def groups_in(self, ou_dn: str) -> list[tuple[str, str]]: ...

    def members_of(self, group_dn: str, *, nested: bool = False,
                   within: str | None = None) -> list[uuid.UUID]: ...


class RoleReaders(Protocol):
    """What reading a cycle's inputs needs of ``shared.flow.Service``."""

    @property
    def settings(self) -> Settings: ...

    def directory(self) -> RoleDirectory: ...

    def graph(self) -> GraphClient: ...


def read_directory(directory: RoleDirectory, roles: RolesSettings
                   ) -> tuple[list[AdGroup], dict[str, GroupMembers]]:
    """The groups in the roles OU and their members, keyed by group DN (blocking).

    A failure to list the OU stops the cycle; a failure to read one group marks that group
    incomplete, which the planner turns into a stop if the group maps to a role.
    """
    try:
        groups = [AdGroup(name, dn) for name, dn in directory.groups_in(roles.ou)]
    except Exception as exc:  # any failure: an unread OU is never taken for an empty one
        raise CycleStopped(
            f"the groups of the roles OU could not be read ({_why(exc)}); no role was changed",
            guard=Guard.READ_FAILED, user=roles.ou,
            fix="check ROLES_OU, the domain controller and the service account; the next "
            "cycle retries") from None
    members: dict[str, GroupMembers] = {}
    for group in groups:
        try:
            guids = directory.members_of(group.dn, nested=roles.nested, within=roles.ou)
        except Exception as exc:  # recorded; the planner decides whether it matters
            members[group.dn] = GroupMembers(frozenset(), complete=False, problem=_why(exc))
            continue
        members[group.dn] = GroupMembers(frozenset(immutable_id(g) for g in guids))
    return groups, members


def _why(exc: BaseException) -> str:
    text = exc.reason if isinstance(exc, ProvisioningError) else str(exc)
    return redact(f"{type(exc).__name__}: {text}"[:240])


async def resolve_break_glass(graph: GraphClient, roles: RolesSettings) -> BreakGlass:
    """Every ``ROLES_BREAK_GLASS_IDS`` entry as the object id Entra ID has now; an entry that
    names no user stops the cycle, since the account it means would go unprotected."""
    ids: set[str] = set()
    unknown: list[str] = []
    for entry in sorted(roles.break_glass_object_ids | roles.break_glass_upns):
        user = await graph.user(entry)
        if user is None:
            unknown.append(entry)
        else:
            ids.add(user.id.lower())
    if unknown:
        raise CycleStopped(
            f"ROLES_BREAK_GLASS_IDS names {', '.join(unknown)}, which Entra ID does not know as "
            "a user; no role was changed, since that break-glass account is not protected",
            guard=Guard.BREAK_GLASS_UNKNOWN, user=", ".join(unknown),
            fix="correct ROLES_BREAK_GLASS_IDS to the object ids or UPNs of the break-glass "
            "accounts as they are now")
    return BreakGlass(frozenset(ids), roles.break_glass_upns)


async def read_inputs(svc: RoleReaders, store: PlanStore) -> PlanInputs:
    """Everything ``plan`` needs: the AD side in a thread, the Graph side on the loop."""
    roles = svc.settings.roles
    if not roles.ou:
        raise PermanentError("ROLES_OU is not set", step=STEP,
                             fix="set ROLES_OU to the DN of the OU holding the role groups")
    groups, members = await asyncio.to_thread(read_directory, svc.directory(), roles)
    graph = svc.graph()
    api = RoleGraph(graph)
    glass = await resolve_break_glass(graph, roles)
    definitions = await api.definitions()
    mapped, _ = map_groups(groups, definitions, roles)
    assignments: list[Assignment] = []
    for role_id in sorted({entry.role.id for entry in mapped}):
        assignments += await api.holders(role_id, eligible=roles.mode == "eligible")
    users: dict[str, CloudUser] = {}
    for value in sorted({v for e in mapped for v in members[e.group.dn].immutable_ids}):
        if (found := await graph.user_by_immutable_id(value)) is not None:
            users[found.id.lower()] = found
    for principal in sorted({a.principal_id.lower() for a in assignments} - set(users)):
        if (holder := await graph.user(principal)) is not None:
            users[holder.id.lower()] = holder
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=roles.revocation_window_hours)
    revoked = await asyncio.to_thread(store.revoked_since, since)
    granted = await asyncio.to_thread(store.granted_since, since)
    return PlanInputs(groups, definitions, members, assignments, list(users.values()), glass,
                      revoked, granted)


async def build_plan(svc: RoleReaders, store: PlanStore | None = None) -> RolePlan:
    """Read and plan, changing nothing (``cli roles plan``)."""
    if store is None:
        store = await asyncio.to_thread(PlanStore.open, svc.settings)
    return plan(await read_inputs(svc, store), svc.settings.roles)


async def stale_change(svc: RoleReaders, store: PlanStore, change: RoleChange,
                       plan_id: str) -> str | None:
    """Why the queued ``change`` (naming plan ``plan_id``) is no longer wanted, from what is read
    now, or None when it is (``shared.roles.stale_reason`` decides). Reads the plan store's
    latest decision first: a message for any other decision costs that one read. Then the
    role's definition, the principal, and the members of the AD groups in ROLES_OU mapped to
    the role. Raises ``TransientError`` when a group cannot be read completely."""
    roles = svc.settings.roles
    decision = await asyncio.to_thread(store.decision, change.role_id, change.principal_id)
    glass = BreakGlass(roles.break_glass_object_ids, roles.break_glass_upns)
    if not is_latest(decision, plan_id, change):
        return stale_reason(change, plan_id, decision, None, None, frozenset(), roles, glass)
    graph = svc.graph()
    definitions = await RoleGraph(graph).definitions()
    role = next((d for d in definitions if d.id.lower() == change.role_id.lower()), None)
    user = await graph.user(change.principal_id)
    members = await asyncio.to_thread(_role_members, svc.directory(), roles, definitions,
                                      change)
    return stale_reason(change, plan_id, decision, role, user, members, roles, glass)


def _role_members(directory: RoleDirectory, roles: RolesSettings,
                  definitions: list[RoleDefinition], change: RoleChange) -> frozenset[str]:
    """The immutable ids of the members of the groups in ROLES_OU mapped to ``change``'s role
    (blocking); ``TransientError`` when the OU or one of those groups cannot be read."""
    try:
        groups = [AdGroup(name, dn) for name, dn in directory.groups_in(roles.ou)]
        mapped, _ = map_groups(groups, definitions, roles)
        found: set[str] = set()
        for entry in mapped:
            if entry.role.id.lower() == change.role_id.lower():
                guids = directory.members_of(entry.group.dn, nested=roles.nested,
                                             within=roles.ou)
                found |= {immutable_id(g) for g in guids}
    except Exception as exc:  # any failure: an unread group is never taken for an empty one
        raise TransientError(
            f"the role groups in ROLES_OU could not be read ({_why(exc)}); the "
            f"{change.action.value} of role {change.role_id} for {change.principal_id} waits",
            user=change.principal_id, step=STEP,
            fix="none if it passes; otherwise check the domain controller") from None
    return frozenset(found)
