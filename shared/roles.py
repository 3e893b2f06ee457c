"""Admin-role sync, the deciding half: which AD group is which Entra role, what to grant and
revoke, and which guard refuses what. Pure: no I/O, tested in memory (``tests/test_roles_plan.py``).
The adapters that read AD and Graph and carry the plan out are in ``shared.rolesync``.

How a cycle is decided::

    AD groups in ROLES_OU ──map_groups──▶ group → unifiedRoleDefinition   (unknown names reported)
    group members (objectGUID, base64) ─┐
    cloud users (onPremisesImmutableId) ├─plan──▶ RolePlan
    roleAssignments at scope "/"      ──┘          changes  (grant / revoke, sorted, plan_id)
                                                   blocked  (break-glass, role not allowed)
                                                   held     (revocation threshold)
                                                   skipped  (AD member not synced yet)

Guards, as identity engineers expect them:

- break-glass accounts (``ROLES_BREAK_GLASS_IDS``) appear in no change; one in an AD group is
  *blocked* and alerted, one holding a role is left alone;
- a role outside the allow-list (``ROLES_ALLOW_LIST``; the privileged roles only with
  ``ROLES_PRIVILEGED_OPT_IN``) is never changed: its would-be changes are *blocked*;
- only principals that are synced users (``onPremisesSyncEnabled`` true) are ever revoked;
  cloud-only users, groups and service principals holding a role are left alone;
- revocations above ``ROLES_MAX_REVOCATIONS`` or above ``ROLES_MAX_REVOCATION_SHARE`` of the
  synced role members *hold* the whole plan until an operator approves that plan id;
- a group whose membership read did not complete is a ``SafetyStop`` for the whole cycle:
  an unread group is never taken for an empty one.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from .config import PRIVILEGED_ROLES, RolesSettings
from .errors import SafetyStop

STEP = "role sync"
DIRECTORY_SCOPE = "/"

# Template ids of the built-in roles that can take over the tenant (learn.microsoft.com,
# "Microsoft Entra built-in roles"). Checked by id as well as by name, so that an explicit
# group map naming the template id cannot slip past the allow-list.
PRIVILEGED_TEMPLATE_IDS = frozenset(
    {
        "62e90394-69f5-4237-9190-012177145e10",  # Global Administrator
        "e8611ab8-c189-46e8-94e1-60213ab1f814",  # Privileged Role Administrator
        "7be44c8a-adaf-4e2a-84d6-ab2649e08a13",  # Privileged Authentication Administrator
    }
)


class Action(StrEnum):
    GRANT = "grant"
    REVOKE = "revoke"


class Guard(StrEnum):
    """Why a change was refused or held."""

    BREAK_GLASS = "break-glass"
    NOT_ALLOWED = "role-not-allowed"
    THRESHOLD = "revocation-threshold"
    READ_FAILED = "directory-read-failed"


# -- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdGroup:
    """A group found in the roles OU."""

    name: str
    dn: str


@dataclass(frozen=True)
class RoleDefinition:
    """A ``unifiedRoleDefinition``: ``id`` is what assignments name; for built-in roles it
    equals ``template_id``."""

    id: str
    display_name: str
    template_id: str = ""


@dataclass(frozen=True)
class CloudUser:
    """The fields of an Entra user the planner needs."""

    id: str
    user_principal_name: str
    display_name: str = ""
    on_premises_immutable_id: str | None = None
    on_premises_sync_enabled: bool | None = None

    @property
    def synced(self) -> bool:
        return self.on_premises_sync_enabled is True


@dataclass(frozen=True)
class Assignment:
    """A ``unifiedRoleAssignment`` (or an eligibility schedule, in PIM mode)."""

    id: str
    role_definition_id: str
    principal_id: str
    directory_scope_id: str = DIRECTORY_SCOPE


@dataclass(frozen=True)
class GroupMembers:
    """The members of one AD group, as ``onPremisesImmutableId`` values (base64 objectGUID).

    ``complete`` is False when the read failed, timed out or was truncated: the planner then
    refuses the whole cycle instead of reading the group as empty.
    """

    immutable_ids: frozenset[str]
    complete: bool = True
    problem: str = ""


# -- outputs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MappedGroup:
    group: AdGroup
    role: RoleDefinition
    allowed: bool
    how: str  # "name" or "map"


@dataclass(frozen=True, order=True)
class RoleChange:
    """One grant or revocation. Ordering and equality use only the ids: the plan id is
    a hash of exactly these."""

    action: Action
    role_id: str
    principal_id: str
    role_name: str = field(default="", compare=False)
    user: str = field(default="", compare=False)  # UPN, for people
    display_name: str = field(default="", compare=False)
    group: str = field(default="", compare=False)  # the AD group that asked for it

    @property
    def key(self) -> str:
        return f"{self.action.value}:{self.role_id.lower()}:{self.principal_id.lower()}"

    @property
    def principal(self) -> uuid.UUID:
        """The principal as a queue message names it (``WorkItem.user``)."""
        return uuid.UUID(self.principal_id)

    @property
    def role(self) -> str:
        """The role definition id, as a queue message carries it (``WorkItem.role``)."""
        return self.role_id

    def describe(self) -> str:
        verb = "grant" if self.action is Action.GRANT else "revoke"
        prep = "to" if self.action is Action.GRANT else "from"
        who = self.user or self.principal_id
        via = f" (AD group '{self.group}')" if self.group else ""
        return f"{verb} '{self.role_name or self.role_id}' {prep} {who}{via}"


@dataclass(frozen=True)
class Blocked:
    """A guard's refusal, with what an operator needs to act on it."""

    guard: Guard
    reason: str
    fix: str
    role_name: str = ""
    group: str = ""
    user: str = ""
    principal_id: str = ""
    would_grant: int = 0
    would_revoke: int = 0

    @property
    def key(self) -> str:
        return f"{self.guard.value}:{self.role_name}:{self.principal_id or self.group}"

    def error(self) -> SafetyStop:
        return SafetyStop(self.reason, user=self.user or self.group, step=STEP, fix=self.fix)


@dataclass(frozen=True)
class Skipped:
    """A change that cannot be made yet and is not a guard's doing."""

    reason: str
    role_name: str = ""
    group: str = ""
    user: str = ""


@dataclass(frozen=True)
class RolePlan:
    """What one cycle would do. ``held`` is set when the threshold guard holds the plan."""

    changes: tuple[RoleChange, ...]
    blocked: tuple[Blocked, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    mapped: tuple[MappedGroup, ...] = ()
    unknown_groups: tuple[str, ...] = ()
    kept: int = 0  # role holders left alone: cloud-only, break-glass, non-user principals
    current_members: int = 0  # synced principals holding a mapped, allowed role
    held: Blocked | None = None

    @property
    def plan_id(self) -> str:
        return plan_id(self.changes)

    @property
    def grants(self) -> tuple[RoleChange, ...]:
        return tuple(c for c in self.changes if c.action is Action.GRANT)

    @property
    def revocations(self) -> tuple[RoleChange, ...]:
        return tuple(c for c in self.changes if c.action is Action.REVOKE)


def plan_id(changes: Iterable[RoleChange]) -> str:
    """A stable id of a set of changes: the same changes give the same id, in any order."""
    text = "\n".join(sorted(change.key for change in changes))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# -- mapping --------------------------------------------------------------------------------


def _fold(text: str) -> str:
    return text.strip().casefold()


def is_allowed(role: RoleDefinition, settings: RolesSettings) -> bool:
    """Whether the allow-list (with the privileged opt-in) lets the sync change ``role``."""
    allowed = {_fold(name) for name in settings.allowed_roles}
    if _fold(role.display_name) not in allowed:
        return False
    if (role.template_id or role.id).lower() in PRIVILEGED_TEMPLATE_IDS:
        # The name is on the list; a privileged role must also be opted in by name.
        opted = {_fold(name) for name in settings.allowed_roles if name in PRIVILEGED_ROLES}
        return _fold(role.display_name) in opted
    return True


def map_groups(
    groups: Sequence[AdGroup],
    definitions: Sequence[RoleDefinition],
    settings: RolesSettings,
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
    for group in sorted(groups, key=lambda g: _fold(g.name)):
        role: RoleDefinition | None
        if _fold(group.name) in explicit:
            role, how = by_template.get(explicit[_fold(group.name)]), "map"
        else:
            role, how = by_name.get(_fold(group.name)), "name"
        if role is None:
            unknown.append(group.name)
            continue
        mapped.append(MappedGroup(group, role, is_allowed(role, settings), how))
    return mapped, unknown


# -- the planner ----------------------------------------------------------------------------


def plan(
    groups: Sequence[AdGroup],
    definitions: Sequence[RoleDefinition],
    members: Mapping[str, GroupMembers],
    assignments: Sequence[Assignment],
    users: Sequence[CloudUser],
    settings: RolesSettings,
) -> RolePlan:
    """Decide the grants and revocations that make role membership follow AD group membership.

    ``members`` is keyed by group name. ``assignments`` are the current assignments (or
    eligibilities, in PIM mode) of any role; only those at directory scope ``/`` count.
    Raises ``SafetyStop`` when a mapped group's membership was not read completely.
    """
    mapped, unknown = map_groups(groups, definitions, settings)
    for entry in mapped:
        read = members.get(entry.group.name)
        if read is None or not read.complete:
            problem = read.problem if read is not None else "its members were not read"
            raise SafetyStop(
                f"the members of AD group '{entry.group.name}' could not be read completely "
                f"({problem}); no role was changed this cycle, since an unread group is not "
                "an empty one",
                user=entry.group.name,
                step=STEP,
                fix="check the domain controller and the service account's read access; "
                "the next cycle retries",
            )

    break_glass = settings.break_glass
    users_by_id = {u.id.lower(): u for u in users}
    synced_by_immutable = {
        u.on_premises_immutable_id: u for u in users if u.synced and u.on_premises_immutable_id
    }

    # Several groups may map to one role (its own name and an explicit map): union them.
    per_role: dict[str, list[MappedGroup]] = {}
    for entry in mapped:
        per_role.setdefault(entry.role.id.lower(), []).append(entry)

    changes: list[RoleChange] = []
    blocked: list[Blocked] = []
    skipped: list[Skipped] = []
    kept = 0
    current_members = 0

    for role_key, entries in sorted(per_role.items()):
        role = entries[0].role
        allowed = entries[0].allowed
        desired: dict[str, tuple[CloudUser, str]] = {}  # principal id → (user, group)
        for entry in entries:
            for immutable_id in sorted(members[entry.group.name].immutable_ids):
                user = synced_by_immutable.get(immutable_id)
                if user is None:
                    skipped.append(
                        Skipped(
                            f"AD member {immutable_id} of '{entry.group.name}' has no synced "
                            "cloud user yet",
                            role_name=role.display_name,
                            group=entry.group.name,
                            user=immutable_id,
                        )
                    )
                    continue
                if user.id.lower() in break_glass:
                    blocked.append(_break_glass(user, role, entry.group.name))
                    continue
                desired.setdefault(user.id.lower(), (user, entry.group.name))

        holders: dict[str, Assignment] = {}
        for assignment in assignments:
            if (
                assignment.role_definition_id.lower() == role_key
                and assignment.directory_scope_id == DIRECTORY_SCOPE
            ):
                holders.setdefault(assignment.principal_id.lower(), assignment)

        role_changes: list[RoleChange] = []
        for principal, (user, group) in desired.items():
            if principal not in holders:
                role_changes.append(_change(Action.GRANT, role, user, group))
        for principal in holders:
            holder = users_by_id.get(principal)
            if principal in break_glass or holder is None or not holder.synced:
                kept += 1  # cloud-only, break-glass, group or service principal: not ours
                continue
            if allowed:
                current_members += 1
            if principal not in desired:
                group = entries[0].group.name
                role_changes.append(_change(Action.REVOKE, role, holder, group))

        if allowed:
            changes.extend(role_changes)
        elif role_changes:
            # Nothing to refuse when the role already matches its group: no alert then, but
            # ``mapped`` still shows the group as not allowed (``cli roles plan``).
            blocked.append(_not_allowed(role, entries, role_changes))

    ordered = tuple(sorted(changes))
    held = _threshold(ordered, current_members, settings)
    return RolePlan(
        changes=ordered,
        blocked=tuple(blocked),
        skipped=tuple(skipped),
        mapped=tuple(mapped),
        unknown_groups=tuple(unknown),
        kept=kept,
        current_members=current_members,
        held=held,
    )


def _change(
    action: Action,
    role: RoleDefinition,
    user: CloudUser,
    group: str,
) -> RoleChange:
    return RoleChange(
        action=action,
        role_id=role.id,
        principal_id=user.id,
        role_name=role.display_name,
        user=user.user_principal_name,
        display_name=user.display_name,
        group=group,
    )


def _break_glass(user: CloudUser, role: RoleDefinition, group: str) -> Blocked:
    return Blocked(
        guard=Guard.BREAK_GLASS,
        reason=f"break-glass account {user.user_principal_name} is a member of AD group "
        f"'{group}'; role '{role.display_name}' was not granted to it",
        fix=f"remove the account from AD group '{group}'; break-glass accounts are managed "
        "in the cloud only",
        role_name=role.display_name,
        group=group,
        user=user.user_principal_name,
        principal_id=user.id,
        would_grant=1,
    )


def _not_allowed(
    role: RoleDefinition, entries: Sequence[MappedGroup], would: Sequence[RoleChange]
) -> Blocked:
    grants = sum(1 for c in would if c.action is Action.GRANT)
    revokes = len(would) - grants
    names = ", ".join(f"'{e.group.name}'" for e in entries)
    privileged = (role.template_id or role.id).lower() in PRIVILEGED_TEMPLATE_IDS
    fix = (
        f"name '{role.display_name}' in ROLES_PRIVILEGED_OPT_IN (and ROLES_ALLOW_LIST) if this "
        "role is really to follow AD, or remove the group from the roles OU"
        if privileged
        else f"add '{role.display_name}' to ROLES_ALLOW_LIST, or remove the group from the "
        "roles OU"
    )
    return Blocked(
        guard=Guard.NOT_ALLOWED,
        reason=f"AD group {names} maps to role '{role.display_name}', which is not on the "
        f"allow-list; {grants} grant(s) and {revokes} revocation(s) were not made",
        fix=fix,
        role_name=role.display_name,
        group=entries[0].group.name,
        would_grant=grants,
        would_revoke=revokes,
    )


def _threshold(
    changes: Sequence[RoleChange], current_members: int, settings: RolesSettings
) -> Blocked | None:
    """Hold the plan when its revocations exceed the count or the share threshold.

    Either limit suffices, as an emptied small group is as suspicious as a large purge.
    """
    revocations = sum(1 for c in changes if c.action is Action.REVOKE)
    if revocations == 0:
        return None
    share = revocations / current_members if current_members else 1.0
    over_count = revocations > settings.max_revocations
    over_share = share > settings.max_revocation_share
    if not (over_count or over_share):
        return None
    pid = plan_id(changes)
    limits = (
        f"ROLES_MAX_REVOCATIONS={settings.max_revocations}, "
        f"ROLES_MAX_REVOCATION_SHARE={settings.max_revocation_share:g}"
    )
    return Blocked(
        guard=Guard.THRESHOLD,
        reason=f"plan {pid} revokes {revocations} of {current_members} synced role member(s) "
        f"({share:.0%}), above the threshold ({limits}); it is held and nothing was changed",
        fix=f"check the AD groups, then run `python -m shared.cli roles approve {pid}`, "
        "or raise the threshold",
        would_revoke=revocations,
    )
