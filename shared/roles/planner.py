"""Admin-role sync, the planner: which AD group is which Entra role, what to grant and revoke,
and every guard. Pure: no I/O, tested in memory (``tests/test_roles_plan.py``); the values
it reads and decides are in ``shared.roles.model``.

The guards live here and only here: the cycle (``shared.roles.cycle.run_cycle``) plans with them,
and the queue handler checks each queued change with ``stale_reason`` (is it still wanted, now,
by the latest decision?) before it claims the work, and ``shared.roles.cycle.apply_change``
checks it again with the same ``check_change`` right before it acts.

How a cycle is decided::

    AD groups in ROLES_OU ──map_groups──▶ group → unifiedRoleDefinition  (unknown names reported)
    members of each group, by its DN ─┐
    cloud users, role assignments      ├─plan─▶ RolePlan
    break-glass (resolved), the        │         changes  grants and revocations the guards pass
    revocations of the window ─────────┘         blocked  refused: break-glass, role not allowed
                                                  held     what a limit holds for approval
                                                  skipped  AD member not synced yet

Guards, as identity engineers expect them:

- break-glass accounts (``ROLES_BREAK_GLASS_IDS``: object ids and UPNs, resolved every cycle)
  appear in no change; one in an AD group is *blocked* and alerted, one holding a role is left
  alone;
- a role changes only when ``ROLES_ALLOW_LIST`` names it; a role the tenant marks privileged
  (the definition's ``isPrivileged``; unknown counts as privileged, and the three roles that
  can take over the tenant always are) only when ``ROLES_PRIVILEGED_OPT_IN`` names it;
- only synced users (``onPremisesSyncEnabled``) are granted or revoked; cloud-only users, groups
  and service principals holding a role are left alone;
- limits: grants that take the last ``ROLES_REVOCATION_WINDOW_HOURS`` above
  ``ROLES_MAX_GRANTS`` hold the grants; revocations that take the same window above
  ``ROLES_MAX_REVOCATIONS``, or (from ``ROLES_SHARE_MIN_REVOCATIONS`` revocations of one role
  on) above ``ROLES_MAX_REVOCATION_SHARE`` of that role's synced members, hold the
  revocations. A hold keeps back only what its limit covers,
  until an operator approves exactly that held set; every other change goes on;
- a group whose membership read did not complete is a ``SafetyStop`` for the whole cycle:
  an unread group is never taken for an empty one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from shared.config import RolesSettings
from shared.entra import CloudUser
from shared.roles.model import (
    DIRECTORY_SCOPE,
    Action,
    AdGroup,
    Assignment,
    Blocked,
    CycleStopped,
    Decision,
    GroupMembers,
    Guard,
    Hold,
    MappedGroup,
    RoleChange,
    RoleDefinition,
    RolePlan,
    Skipped,
)

# Template ids of the built-in roles that can take over the tenant (learn.microsoft.com,
# "Microsoft Entra built-in roles"): privileged whatever a definition read says.
PRIVILEGED_TEMPLATE_IDS = frozenset({
    "62e90394-69f5-4237-9190-012177145e10",  # Global Administrator
    "e8611ab8-c189-46e8-94e1-60213ab1f814",  # Privileged Role Administrator
    "7be44c8a-adaf-4e2a-84d6-ab2649e08a13",  # Privileged Authentication Administrator
})


@dataclass(frozen=True)
class BreakGlass:
    """``ROLES_BREAK_GLASS_IDS``: object ids (lower case) and UPNs (case-folded). The cycle
    resolves every entry to an object id first; the queue handler matches both."""

    ids: frozenset[str] = frozenset()
    upns: frozenset[str] = frozenset()

    def covers(self, principal_id: str, upn: str = "") -> bool:
        return principal_id.lower() in self.ids or (bool(upn) and upn.casefold() in self.upns)


@dataclass(frozen=True)
class PlanInputs:
    """Everything one cycle is decided from. ``members`` is keyed by group DN."""

    groups: Sequence[AdGroup]
    definitions: Sequence[RoleDefinition]
    members: Mapping[str, GroupMembers]
    assignments: Sequence[Assignment]
    users: Sequence[CloudUser]
    break_glass: BreakGlass = BreakGlass()
    # keys of the revocations released within ROLES_REVOCATION_WINDOW_HOURS
    revoked: frozenset[str] = frozenset()
    # keys of the grants released within the same window (ROLES_MAX_GRANTS counts in it)
    granted: frozenset[str] = frozenset()


# -- the guards -----------------------------------------------------------------------------
def _fold(text: str) -> str:
    return text.strip().casefold()


def _named(role: RoleDefinition, names: Iterable[str]) -> bool:
    folded = {_fold(name) for name in names}
    return bool({_fold(role.display_name), role.id.lower(),
                 (role.template_id or role.id).lower()} & folded)


def is_privileged(role: RoleDefinition) -> bool:
    """Whether the tenant marks ``role`` privileged; not knowing counts as privileged."""
    takeover = (role.template_id or role.id).lower() in PRIVILEGED_TEMPLATE_IDS
    return role.privileged is not False or takeover


def is_allowed(role: RoleDefinition, settings: RolesSettings) -> bool:
    """Whether the sync may change ``role``: a privileged role only when opted in by name or
    template id, any other when the allow-list names it."""
    if is_privileged(role):
        return _named(role, settings.opted_in_roles)
    return _named(role, settings.allowed_roles | settings.opted_in_roles)


def check_change(change: RoleChange, role: RoleDefinition, user: CloudUser | None,
                 settings: RolesSettings, break_glass: BreakGlass) -> Blocked | None:
    """The guards one change must pass, when it is planned and again right before it is
    carried out: break-glass, the allow-list with the privileged opt-in, synced users only.
    None when it may go ahead. A revocation from a principal that no longer exists passes:
    its assignments went with it."""
    if break_glass.covers(change.principal_id, user.upn if user else change.user):
        return _break_glass(change, role)
    if not is_allowed(role, settings):
        return _not_allowed(role, [change.group], [change])
    if user is None and change.action is Action.GRANT:
        reason = f"principal {change.principal_id} is not a user"
    elif user is not None and not user.synced:
        reason = f"{user.upn or user.id} is not a synced user (cloud-only)"
    else:
        return None
    return Blocked(Guard.NOT_SYNCED, reason, "nothing was changed; the sync manages synced "
                   "users only", role_name=role.display_name, user=change.user,
                   principal_id=change.principal_id)


def _break_glass(change: RoleChange, role: RoleDefinition) -> Blocked:
    done = "granted to" if change.action is Action.GRANT else "revoked from"
    if change.group:
        where = f" is a member of AD group '{change.group}'"
        fix = (f"remove the account from AD group '{change.group}'; break-glass accounts are "
               "managed in the cloud only")
    else:  # a queued change checked again before it is carried out: no group to name
        where = " was named by a queued change"
        fix = ("none: nothing was changed; break-glass accounts are managed in the cloud only, "
               "so find out who queued a change for one")
    return Blocked(
        guard=Guard.BREAK_GLASS,
        reason=f"break-glass account {change.user or change.principal_id}{where}; role "
        f"'{role.display_name}' was not {done} it",
        fix=fix, role_name=role.display_name, group=change.group,
        user=change.user, principal_id=change.principal_id,
        would_grant=int(change.action is Action.GRANT),
        would_revoke=int(change.action is Action.REVOKE),
    )


def _not_allowed(role: RoleDefinition, groups: Sequence[str],
                 would: Sequence[RoleChange]) -> Blocked:
    grants = sum(1 for c in would if c.action is Action.GRANT)
    names = ", ".join(f"'{g}'" for g in groups if g)
    # A queued change checked again before it is carried out names no group.
    source = f"AD group {names} maps to" if names else "a queued change names"
    if is_privileged(role):
        kind, fix = "privileged (isPrivileged) and not opted in", (
            f"name '{role.display_name}' in ROLES_PRIVILEGED_OPT_IN if this privileged role is "
            "really to follow AD, or remove the group from the roles OU")
    else:
        kind, fix = "not on the allow-list", (
            f"add '{role.display_name}' to ROLES_ALLOW_LIST, or remove the group from the "
            "roles OU")
    return Blocked(
        guard=Guard.NOT_ALLOWED,
        reason=f"{source} role '{role.display_name}', which is {kind}; "
        f"{grants} grant(s) and {len(would) - grants} revocation(s) were not made",
        fix=fix, role_name=role.display_name, group=groups[0] if groups else "",
        would_grant=grants, would_revoke=len(would) - grants,
    )


def hold(changes: Sequence[RoleChange], members: Mapping[str, int], revoked: Iterable[str],
         settings: RolesSettings, granted: Iterable[str] = ()) -> Hold | None:
    """What the limits hold back: all grants when they take the window above
    ``ROLES_MAX_GRANTS``; all revocations when they take the window above
    ``ROLES_MAX_REVOCATIONS`` or, in any one role (from ``ROLES_SHARE_MIN_REVOCATIONS`` of its
    revocations on), above ``ROLES_MAX_REVOCATION_SHARE`` of that role's synced members.
    ``members`` is keyed by role id (lower case); ``revoked`` and ``granted`` are the keys
    released in the window; one planned again (still queued) counts once."""
    grants = [c for c in changes if c.action is Action.GRANT]
    revokes = [c for c in changes if c.action is Action.REVOKE]
    revoked_recently = len(set(revoked) - {c.key for c in revokes})
    granted_recently = len(set(granted) - {c.key for c in grants})
    held: list[RoleChange] = []
    reasons: list[str] = []
    if grants and granted_recently + len(grants) > settings.max_grants:
        held += grants
        after = (f" after {granted_recently} in the last {settings.revocation_window_hours:g} h"
                 if granted_recently else "")
        reasons.append(f"{len(grants)} grants{after}, above "
                       f"ROLES_MAX_GRANTS={settings.max_grants}")
    over_count = revoked_recently + len(revokes) > settings.max_revocations
    if revokes and over_count:
        reasons.append(
            f"{len(revokes)} revocation(s) after {revoked_recently} in the last "
            f"{settings.revocation_window_hours:g} h, above "
            f"ROLES_MAX_REVOCATIONS={settings.max_revocations}")
    per_role: dict[str, list[RoleChange]] = {}
    for change in revokes:
        per_role.setdefault(change.role_id.lower(), []).append(change)
    over_share = False
    for role_id, taken in sorted(per_role.items()):
        current = members.get(role_id, 0)
        share = len(taken) / current if current else 1.0
        if len(taken) >= settings.share_min_revocations and share > settings.max_revocation_share:
            over_share = True
            name = taken[0].role_name or role_id
            reasons.append(
                f"{len(taken)} of {current} synced member(s) of '{name}' revoked ({share:.0%}), "
                f"above ROLES_MAX_REVOCATION_SHARE={settings.max_revocation_share:g}")
    if over_count or over_share:
        held += revokes
    return Hold(tuple(sorted(held)), tuple(reasons)) if held else None


def is_latest(decision: Decision | None, plan_id: str, change: RoleChange) -> bool:
    """Whether a message naming ``change`` under plan ``plan_id`` carries the latest released
    ``decision`` for its role and principal."""
    return (decision is not None and decision.plan_id == plan_id
            and decision.action is change.action)


def stale_reason(change: RoleChange, plan_id: str, decision: Decision | None,
                 role: RoleDefinition | None, user: CloudUser | None,
                 members: frozenset[str], settings: RolesSettings,
                 break_glass: BreakGlass) -> str | None:
    """Why a queued role change is no longer wanted, or None when it is: the message names the
    work, what is read now decides it. ``decision`` is the plan store's latest released
    decision for the change's role and principal (the message must carry exactly it),
    ``members`` the ``onPremisesImmutableId`` values of the AD groups mapped to the role, read
    now; then the guards of ``check_change``. A grant is wanted only for a synced member, a
    revocation only for a principal who is not one."""
    if not is_latest(decision, plan_id, change):
        latest = (f"the latest is a {decision.action.value} of plan {decision.plan_id}"
                  if decision is not None else "no cycle released one")
        return f"plan {plan_id} is not the latest decision for this role and principal ({latest})"
    if role is None:
        return f"role definition {change.role_id} does not exist"
    member = (user is not None and user.synced and user.immutable_id is not None
              and user.immutable_id in members)
    if change.action is Action.GRANT and not member:
        return "the principal is not a synced member of the role's AD group now"
    if change.action is Action.REVOKE and member:
        return "the principal is a member of the role's AD group again"
    refused = check_change(change, role, user, settings, break_glass)
    return refused.reason if refused is not None else None


# -- mapping and planning -------------------------------------------------------------------
def map_groups(
    groups: Sequence[AdGroup], definitions: Sequence[RoleDefinition], settings: RolesSettings,
) -> tuple[list[MappedGroup], list[str]]:
    """Map each group to the role it names, or to the role ``ROLES_GROUP_MAP`` gives it.

    Returns the mapped groups and the names of groups that map to no role (reported, never
    guessed: a near-miss name such as "Helpdesk Admins" is not Helpdesk Administrator).
    """
    by_name = {_fold(d.display_name): d for d in definitions}
    by_template: dict[str, RoleDefinition] = {}
    for definition in definitions:
        by_template.setdefault((definition.template_id or definition.id).lower(), definition)
        by_template.setdefault(definition.id.lower(), definition)
    explicit = {_fold(group): template.lower() for group, template in settings.group_map.items()}
    mapped: list[MappedGroup] = []
    unknown: list[str] = []
    for group in sorted(groups, key=lambda g: (_fold(g.name), g.dn)):
        role: RoleDefinition | None
        if _fold(group.name) in explicit:
            role, how = by_template.get(explicit[_fold(group.name)]), "map"
        else:
            role, how = by_name.get(_fold(group.name)), "name"
        if role is None:
            unknown.append(group.name)
            continue
        mapped.append(MappedGroup(group, role, is_allowed(role, settings), how,
                                  is_privileged(role)))
    return mapped, unknown


def _unread(entry: MappedGroup, read: GroupMembers | None) -> CycleStopped:
    problem = read.problem if read is not None else "its members were not read"
    return CycleStopped(
        f"the members of AD group '{entry.group.name}' could not be read completely "
        f"({problem}); no role was changed this cycle, since an unread group is not an "
        "empty one", guard=Guard.READ_FAILED, user=entry.group.name,
        fix="check the domain controller and the service account's read access; the next "
        "cycle retries",
    )


def plan(inputs: PlanInputs, settings: RolesSettings) -> RolePlan:
    """Decide the grants and revocations that make role membership follow AD group membership.

    Only assignments at directory scope ``/`` count. Raises ``SafetyStop`` when a mapped
    group's membership was not read completely.
    """
    mapped, unknown = map_groups(inputs.groups, inputs.definitions, settings)
    for entry in mapped:
        read = inputs.members.get(entry.group.dn)
        if read is None or not read.complete:
            raise _unread(entry, read)
    glass = inputs.break_glass
    users_by_id = {u.id.lower(): u for u in inputs.users}
    synced = {u.immutable_id: u for u in inputs.users if u.synced and u.immutable_id}
    per_role: dict[str, list[MappedGroup]] = {}  # several groups may name one role: a union
    for entry in mapped:
        per_role.setdefault(entry.role.id.lower(), []).append(entry)

    changes: list[RoleChange] = []
    blocked: list[Blocked] = []
    skipped: list[Skipped] = []
    kept = 0
    members_of: dict[str, int] = {}  # role id → synced principals holding it
    for role_key, entries in sorted(per_role.items()):
        role = entries[0].role
        desired: dict[str, RoleChange] = {}  # principal id → the grant it would get
        for entry in entries:
            for immutable in sorted(inputs.members[entry.group.dn].immutable_ids):
                user = synced.get(immutable)
                if user is None:
                    skipped.append(Skipped(
                        f"AD member {immutable} of '{entry.group.name}' has no synced cloud "
                        "user yet", role.display_name, entry.group.name, immutable))
                    continue
                grant = _change(Action.GRANT, role, user, entry.group.name)
                if glass.covers(user.id, user.upn):
                    blocked.append(_break_glass(grant, role))
                    continue
                desired.setdefault(user.id.lower(), grant)
        holders = {a.principal_id.lower() for a in inputs.assignments
                   if a.role_definition_id.lower() == role_key
                   and a.directory_scope_id == DIRECTORY_SCOPE}
        wanted = [c for p, c in desired.items() if p not in holders]
        for principal in sorted(holders):
            holder = users_by_id.get(principal)
            if holder is None or not holder.synced or glass.covers(principal, holder.upn):
                kept += 1  # cloud-only, break-glass, group or service principal: not ours
                continue
            members_of[role_key] = members_of.get(role_key, 0) + entries[0].allowed
            if principal not in desired:
                wanted.append(_change(Action.REVOKE, role, holder, entries[0].group.name))
        refused: list[RoleChange] = []
        for change in wanted:
            user = users_by_id.get(change.principal_id.lower())
            found = check_change(change, role, user, settings, glass)
            if found is None:
                changes.append(change)
            elif found.guard is Guard.NOT_ALLOWED:
                refused.append(change)
            else:
                blocked.append(found)
        if refused:  # one alert per role, not one per member
            blocked.append(_not_allowed(role, [e.group.name for e in entries], refused))

    ordered = tuple(sorted(changes))
    return RolePlan(
        changes=ordered, blocked=tuple(blocked), skipped=tuple(skipped), mapped=tuple(mapped),
        unknown_groups=tuple(unknown), kept=kept, current_members=sum(members_of.values()),
        held=hold(ordered, members_of, inputs.revoked, settings, inputs.granted),
    )


def _change(action: Action, role: RoleDefinition, user: CloudUser, group: str) -> RoleChange:
    return RoleChange(action, role.id, user.id, role.display_name, user.upn, user.display_name,
                      group)
