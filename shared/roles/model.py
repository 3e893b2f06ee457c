"""The role sync's values, shared by the planner (``shared.roles.planner``), the Graph role adapter,
the plan store and the handlers: what is read (groups, role definitions, assignments, group
members) and what is decided (changes, refusals, holds, the plan). No logic but identity:
a plan id is a hash of exactly the changes it names.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from shared.errors import SafetyStop

STEP = "role sync"
DIRECTORY_SCOPE = "/"


class Action(StrEnum):
    GRANT = "grant"
    REVOKE = "revoke"


class Guard(StrEnum):
    """Why a change was refused or held."""

    BREAK_GLASS = "break-glass"
    NOT_ALLOWED = "role-not-allowed"
    NOT_SYNCED = "not-a-synced-user"
    THRESHOLD = "revocation-threshold"
    GRANT_LIMIT = "grant-limit"
    READ_FAILED = "directory-read-failed"
    BREAK_GLASS_UNKNOWN = "break-glass-unresolved"


class CycleStopped(SafetyStop):
    """A guard stopped the whole cycle before anything was planned; nothing was changed."""

    def __init__(self, reason: str, *, guard: Guard, user: str = "", fix: str = "") -> None:
        super().__init__(reason, user=user, step=STEP, fix=fix)
        self.guard = guard


# -- inputs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdGroup:
    """A group found in the roles OU: its cn and the DN its members are read by."""

    name: str
    dn: str


@dataclass(frozen=True)
class RoleDefinition:
    """A ``unifiedRoleDefinition``: ``id`` is what assignments name (for built-in roles, the
    template id); ``privileged`` is the tenant's ``isPrivileged``, None when it was not read."""

    id: str
    display_name: str
    template_id: str = ""
    privileged: bool | None = None


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
    ``complete`` is False when the read failed: the planner then refuses the whole cycle."""

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
    privileged: bool = False


@dataclass(frozen=True, order=True)
class RoleChange:
    """One grant or revocation. Ordering and equality use only the ids: plan ids hash these."""

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
        prep = "to" if self.action is Action.GRANT else "from"
        via = f" (AD group '{self.group}')" if self.group else ""
        who = self.user or self.principal_id
        return f"{self.action.value} '{self.role_name or self.role_id}' {prep} {who}{via}"


@dataclass(frozen=True)
class Decision:
    """The latest change a cycle released for one role and principal (the plan store keeps
    one per pair): a queued message for any other is stale."""

    action: Action
    plan_id: str


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


def plan_id(changes: Iterable[RoleChange]) -> str:
    """A stable id of a set of changes: the same changes give the same id, in any order."""
    text = "\n".join(sorted(change.key for change in changes))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Hold:
    """The changes a limit holds back until an operator approves exactly this set."""

    changes: tuple[RoleChange, ...]
    reasons: tuple[str, ...]

    @property
    def plan_id(self) -> str:
        return plan_id(self.changes)

    @property
    def guard(self) -> Guard:
        revokes = any(c.action is Action.REVOKE for c in self.changes)
        return Guard.THRESHOLD if revokes else Guard.GRANT_LIMIT

    @property
    def reason(self) -> str:
        return f"plan {self.plan_id} holds {len(self.changes)} change(s): {'; '.join(self.reasons)}"

    @property
    def fix(self) -> str:
        return (f"check the AD groups, then run `python -m shared.cli roles approve "
                f"{self.plan_id}` (the approval lasts ROLES_APPROVAL_HOURS), or raise the limits")


@dataclass(frozen=True)
class RolePlan:
    """What one cycle would do: ``changes`` passed every guard; ``held`` names those of them
    a limit holds back; ``released`` is what goes ahead now."""

    changes: tuple[RoleChange, ...]
    blocked: tuple[Blocked, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    mapped: tuple[MappedGroup, ...] = ()
    unknown_groups: tuple[str, ...] = ()
    kept: int = 0  # role holders left alone: cloud-only, break-glass, non-user principals
    current_members: int = 0  # synced principals holding a mapped, allowed role
    held: Hold | None = None

    @property
    def plan_id(self) -> str:
        return plan_id(self.changes)

    @property
    def released(self) -> tuple[RoleChange, ...]:
        held = set(self.held.changes) if self.held is not None else set()
        return tuple(c for c in self.changes if c not in held)

    @property
    def grants(self) -> tuple[RoleChange, ...]:
        return tuple(c for c in self.changes if c.action is Action.GRANT)

    @property
    def revocations(self) -> tuple[RoleChange, ...]:
        return tuple(c for c in self.changes if c.action is Action.REVOKE)
