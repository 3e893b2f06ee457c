"""The role planner's guarantees, for any AD membership and cloud state (hypothesis): it never
touches a cloud-only, non-user or break-glass principal, never changes a privileged role
without the opt-in, plans only what the groups ask for, and a plan applied leaves nothing to
plan. The oracles below read the generated tenant, never the planner's own helpers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from shared.config import RolesSettings
from shared.entra import CloudUser, immutable_id
from shared.roles.model import Action, AdGroup, Assignment, GroupMembers, RoleDefinition, RolePlan
from shared.roles.planner import BreakGlass, PlanInputs, plan

OU = "OU=Admin Roles,DC=lab,DC=test"
# Global Administrator, Privileged Role Administrator, Privileged Authentication Administrator.
TAKEOVER = {"62e90394-69f5-4237-9190-012177145e10", "e8611ab8-c189-46e8-94e1-60213ab1f814",
            "7be44c8a-adaf-4e2a-84d6-ab2649e08a13"}
# (id, display name, template id): built-in roles have id == template id; the last is a
# tenant's copy of a takeover role, whose id differs from its template id.
ROLE_POOL = [
    ("29232cdf-9323-42fd-ade2-1d097af3e4de", "Exchange Administrator",
     "29232cdf-9323-42fd-ade2-1d097af3e4de"),
    ("4d6ac14f-3453-41d0-bef9-a3e0c569773a", "License Administrator",
     "4d6ac14f-3453-41d0-bef9-a3e0c569773a"),
    ("729827e3-9c14-49f7-bb1b-9608f156bbb8", "Helpdesk Administrator",
     "729827e3-9c14-49f7-bb1b-9608f156bbb8"),
    ("62e90394-69f5-4237-9190-012177145e10", "Global Administrator",
     "62e90394-69f5-4237-9190-012177145e10"),
    ("0d6c5b4a-3928-4716-a5b4-c3d2e1f00918", "Privileged Role Administrator",
     "e8611ab8-c189-46e8-94e1-60213ab1f814"),
]
NAMES = [name for _, name, _ in ROLE_POOL]


@dataclass(frozen=True)
class Person:
    """A generated principal: a user (synced or cloud-only) or another kind of principal."""

    user: CloudUser | None
    principal_id: str
    anchor: str  # the AD objectGUID's source anchor; AD members are named by it
    break_glass_by: str  # "", "id" or "upn"


@dataclass(frozen=True)
class Case:
    people: tuple[Person, ...]
    roles: tuple[RoleDefinition, ...]
    members: dict[str, frozenset[str]]  # role display name → anchors of its group's members
    assignments: tuple[Assignment, ...]
    settings: RolesSettings

    @property
    def inputs(self) -> PlanInputs:
        groups = [AdGroup(name, f"CN={name},{OU}") for name in self.members]
        reads = {f"CN={name},{OU}": GroupMembers(anchors)
                 for name, anchors in self.members.items()}
        glass = BreakGlass(
            frozenset(p.principal_id.lower() for p in self.people if p.break_glass_by == "id"),
            frozenset(p.user.upn.casefold() for p in self.people
                      if p.break_glass_by == "upn" and p.user is not None))
        users = [p.user for p in self.people if p.user is not None]
        return PlanInputs(groups, list(self.roles), reads, list(self.assignments), users,
                          break_glass=glass)

    def person(self, principal_id: str) -> Person:
        return next(p for p in self.people if p.principal_id == principal_id)

    def role(self, role_id: str) -> RoleDefinition:
        return next(r for r in self.roles if r.id == role_id)


@st.composite
def people(draw: st.DrawFn) -> tuple[Person, ...]:
    found = []
    for i in range(draw(st.integers(0, 7))):
        kind = draw(st.sampled_from(["synced"] * 4 + ["cloud-only", "detached", "principal"]))
        principal = str(uuid.UUID(int=i + 1))
        anchor = immutable_id(uuid.UUID(int=1000 + i))
        upn = f"{draw(st.sampled_from(['ann', 'Ben', 'cy']))}{i}@lab.test"
        user = None if kind == "principal" else CloudUser(
            principal, upn, f"Person {i}",
            # a detached user was synced once: it keeps the anchor, sync is off
            immutable_id=anchor if kind in ("synced", "detached") else None,
            sync_enabled=kind == "synced")
        glass = draw(st.sampled_from([""] * 5 + ["id", "upn"])) if user else ""
        found.append(Person(user, principal, anchor, glass))
    return tuple(found)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    crowd = draw(people())
    roles = tuple(RoleDefinition(rid, name, template,
                                 draw(st.sampled_from([False, False, True, None])))
                  for rid, name, template in ROLE_POOL)
    anchors = [p.anchor for p in crowd] + [immutable_id(uuid.UUID(int=9999))]  # one unsynced
    grouped = draw(st.lists(st.sampled_from(NAMES), unique=True, min_size=1))
    members = {name: frozenset(draw(st.lists(st.sampled_from(anchors), max_size=6)))
               for name in grouped}
    holders = [p.principal_id for p in crowd] or [str(uuid.UUID(int=1))]
    assignments = tuple(
        Assignment(f"a{n}", role.id if draw(st.booleans()) else role.id.upper(), holder, scope)
        for n, (role, holder, scope) in enumerate(draw(st.lists(st.tuples(
            st.sampled_from(roles), st.sampled_from(holders),
            st.sampled_from(["/", "/", "/", "/administrativeUnits/au1"])), max_size=14))))
    allow = draw(st.one_of(st.just(NAMES), st.lists(st.sampled_from(NAMES), unique=True)))
    opt_in = draw(st.lists(st.sampled_from(NAMES + [r.template_id.upper() for r in roles]),
                           unique=True, max_size=2))
    settings = RolesSettings(  # type: ignore[call-arg]
        _env_file=None, allow_list=",".join(allow), privileged_opt_in=",".join(opt_in),
        max_grants=draw(st.integers(0, 12)), max_revocations=draw(st.integers(0, 12)),
        max_revocation_share=draw(st.sampled_from([0.0, 0.25, 1.0])))
    return Case(crowd, roles, members, assignments, settings)


def _privileged(role: RoleDefinition) -> bool:
    return role.privileged is not False or role.template_id.lower() in TAKEOVER


def _names(role: RoleDefinition) -> set[str]:
    return {role.display_name.casefold(), role.id.lower(), role.template_id.lower()}


def _opted_in(role: RoleDefinition, settings: RolesSettings) -> bool:
    return bool(_names(role) & {n.strip().casefold() for n in settings.opted_in_roles})


def _allowed(role: RoleDefinition, settings: RolesSettings) -> bool:
    return bool(_names(role) & {n.strip().casefold() for n in settings.allowed_roles})


def _holds(assignments: tuple[Assignment, ...], role: RoleDefinition, principal: str) -> bool:
    return any(a.role_definition_id.lower() == role.id.lower()
               and a.principal_id.lower() == principal.lower() and a.directory_scope_id == "/"
               for a in assignments)


def _apply(case: Case, result: RolePlan) -> Case:
    """The tenant after every planned change (held ones too, as an approval would) is made."""
    assignments = list(case.assignments)
    for n, change in enumerate(result.changes):
        if change.action is Action.GRANT:
            assignments.append(Assignment(f"new{n}", change.role_id, change.principal_id))
        else:
            assignments = [a for a in assignments if not (
                a.role_definition_id.lower() == change.role_id.lower()
                and a.principal_id.lower() == change.principal_id.lower()
                and a.directory_scope_id == "/")]
    return Case(case.people, case.roles, case.members, tuple(assignments), case.settings)


@given(cases())
def test_no_change_touches_a_cloud_only_non_user_or_break_glass_principal(case: Case) -> None:
    """Every planned grant or revocation names a synced user that is not a break-glass
    account (by object id or by UPN)."""
    touched = [case.person(c.principal_id) for c in plan(case.inputs, case.settings).changes]
    assert [] == [p for p in touched
                  if p.user is None or not p.user.sync_enabled or p.break_glass_by]


@given(cases())
def test_no_privileged_role_changes_without_the_opt_in(case: Case) -> None:
    """A role the tenant marks privileged (or does not say, or a takeover role) changes only
    when ROLES_PRIVILEGED_OPT_IN names it; any other role only when the allow-list or the
    opt-in names it."""
    roles = {case.role(c.role_id) for c in plan(case.inputs, case.settings).changes}
    refused = [r.display_name for r in roles
               if not (_opted_in(r, case.settings) if _privileged(r)
                       else _allowed(r, case.settings) or _opted_in(r, case.settings))]
    assert [] == refused


@given(cases())
def test_every_change_is_one_the_groups_ask_for(case: Case) -> None:
    """A grant goes to a member of a group naming the role who does not hold it at directory
    scope; a revocation takes the role from a holder who is in no group naming it."""
    wrong = []
    for change in plan(case.inputs, case.settings).changes:
        role, person = case.role(change.role_id), case.person(change.principal_id)
        member = person.anchor in case.members.get(role.display_name, frozenset())
        holds = _holds(case.assignments, role, change.principal_id)
        asked = (Action.GRANT if member and not holds
                 else Action.REVOKE if holds and not member else None)
        if change.action is not asked:
            wrong.append(change.describe())
    assert [] == wrong


@given(cases())
def test_a_plan_applied_leaves_nothing_to_plan(case: Case) -> None:
    """Planning again after every planned change was made plans no change: the sync converges
    in one cycle, and a second run changes nothing."""
    first = plan(case.inputs, case.settings)
    again = plan(_apply(case, first).inputs, case.settings)
    assert () == again.changes
