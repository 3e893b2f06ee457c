"""The role planner and its guards, in memory: no peer, no I/O."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from shared.config import RolesSettings
from shared.entra import CloudUser, immutable_id
from shared.errors import SafetyStop
from shared.rolemodel import (
    Action,
    AdGroup,
    Assignment,
    GroupMembers,
    Guard,
    RoleChange,
    RoleDefinition,
    RolePlan,
    plan_id,
)
from shared.roles import BreakGlass, PlanInputs, check_change, map_groups, plan

# As the tenant marks them (Graph beta's isPrivileged).
HELPDESK = RoleDefinition("729827e3-9c14-49f7-bb1b-9608f156bbb8", "Helpdesk Administrator",
                          "729827e3-9c14-49f7-bb1b-9608f156bbb8", privileged=True)
EXCHANGE = RoleDefinition("29232cdf-9323-42fd-ade2-1d097af3e4de", "Exchange Administrator",
                          "29232cdf-9323-42fd-ade2-1d097af3e4de", privileged=False)
LICENSE = RoleDefinition("4d6ac14f-3453-41d0-bef9-a3e0c569773a", "License Administrator",
                         "4d6ac14f-3453-41d0-bef9-a3e0c569773a", privileged=False)
GLOBAL = RoleDefinition("62e90394-69f5-4237-9190-012177145e10", "Global Administrator",
                        "62e90394-69f5-4237-9190-012177145e10", privileged=True)
DEFINITIONS = [HELPDESK, EXCHANGE, LICENSE, GLOBAL]
OU = "OU=Admin Roles,DC=lab,DC=test"


def group(name: str) -> AdGroup:
    return AdGroup(name, f"CN={name},{OU}")


def settings(**overrides: Any) -> RolesSettings:
    return RolesSettings(_env_file=None, **overrides)  # type: ignore[call-arg]


class Tenant:
    """A few synced users (with AD objectGUIDs) and cloud-only ones."""

    def __init__(self, synced: int = 24) -> None:
        self.guids = [uuid.uuid4() for _ in range(synced)]
        self.users = [
            CloudUser(str(uuid.uuid4()), f"user{i}@lab.test", f"User {i}",
                      immutable_id=immutable_id(guid), sync_enabled=True)
            for i, guid in enumerate(self.guids)
        ]
        self.cloud_only = CloudUser(str(uuid.uuid4()), "cloudadmin@lab.onmicrosoft.com")
        self.break_glass = CloudUser(str(uuid.uuid4()), "breakglass@lab.onmicrosoft.com")
        self.users += [self.cloud_only, self.break_glass]

    def members(self, *indexes: int) -> GroupMembers:
        return GroupMembers(frozenset(immutable_id(self.guids[i]) for i in indexes))

    def inputs(self, members: dict[str, GroupMembers], assignments: Sequence[Assignment] = (),
               **extra: Any) -> PlanInputs:
        """The planner's inputs for groups named like roles in the roles OU."""
        groups = [group(name) for name in members]
        by_dn = {group(name).dn: read for name, read in members.items()}
        return PlanInputs(groups, DEFINITIONS, by_dn, list(assignments), self.users, **extra)


def assigned(role: RoleDefinition, *users: CloudUser) -> list[Assignment]:
    return [Assignment(f"a-{u.id}-{role.id}", role.id, u.id) for u in users]


def summary(result: RolePlan) -> tuple[list[tuple[Action, str]], list[tuple[Action, str]]]:
    """(released, held) as sorted (action, principal) pairs."""
    held = result.held.changes if result.held else ()
    return (sorted((c.action, c.principal_id) for c in result.released),
            sorted((c.action, c.principal_id) for c in held))


def test_member_of_group_is_granted_the_role_named_like_the_group() -> None:
    """A synced user in AD group 'Exchange Administrator' is planned a grant of that role."""
    t = Tenant()
    result = plan(t.inputs({"Exchange Administrator": t.members(0)}), settings())
    assert [(Action.GRANT, EXCHANGE.id, t.users[0].id)] == [
        (c.action, c.role_id, c.principal_id) for c in result.changes]
    change = result.changes[0]
    assert ("user0@lab.test", "Exchange Administrator") == (change.user, change.group)
    assert result.held is None


def test_synced_holder_no_longer_in_group_is_revoked_cloud_only_stays() -> None:
    """Removing a synced user from the group revokes the role; a cloud-only holder stays."""
    t = Tenant()
    current = assigned(EXCHANGE, t.users[0], t.users[1], t.cloud_only)
    result = plan(t.inputs({"Exchange Administrator": t.members(0)}, current),
                  settings(max_revocation_share=1.0))
    assert [(Action.REVOKE, t.users[1].id)] == [(c.action, c.principal_id) for c in result.changes]
    assert 1 == result.kept


def test_break_glass_in_group_gets_nothing_and_is_never_revoked() -> None:
    """A break-glass account in the AD group is blocked, and holding a role it is left alone."""
    t = Tenant()
    bg = CloudUser(t.break_glass.id, "breakglass@lab.test", immutable_id=immutable_id(t.guids[5]),
                   sync_enabled=True)
    t.users = [u for u in t.users if u.id != bg.id] + [bg]
    result = plan(t.inputs({"License Administrator": t.members(5),
                            "Exchange Administrator": t.members()},
                           assigned(EXCHANGE, bg), break_glass=BreakGlass(frozenset({bg.id}))),
                  settings())
    assert () == result.changes
    assert [Guard.BREAK_GLASS] == [b.guard for b in result.blocked]
    assert bg.id == result.blocked[0].principal_id


def test_break_glass_named_by_upn_is_protected_like_an_object_id() -> None:
    """A break-glass entry given as a UPN (any case) protects that account as an id does."""
    t = Tenant()
    glass = BreakGlass(upns=frozenset({"user3@lab.test"}))
    result = plan(t.inputs({"Exchange Administrator": t.members(3)}, break_glass=glass),
                  settings())
    assert ((), [Guard.BREAK_GLASS]) == (result.changes, [b.guard for b in result.blocked])
    assert glass.covers("any-id", "USER3@Lab.Test")


def test_takeover_role_without_opt_in_changes_nothing_and_is_blocked() -> None:
    """A group named 'Global Administrator' without ROLES_PRIVILEGED_OPT_IN plans no change."""
    t = Tenant()
    result = plan(t.inputs({"Global Administrator": t.members(0, 1)},
                           assigned(GLOBAL, t.users[2])),
                  settings(allow_list="Global Administrator,Exchange Administrator"))
    assert () == result.changes
    assert [(Guard.NOT_ALLOWED, 2, 1)] == [
        (b.guard, b.would_grant, b.would_revoke) for b in result.blocked]
    assert "ROLES_PRIVILEGED_OPT_IN" in result.blocked[0].fix


def test_privileged_role_with_opt_in_is_synced() -> None:
    """Opting Global Administrator in lets its group grant it."""
    t = Tenant()
    result = plan(t.inputs({"Global Administrator": t.members(0)}),
                  settings(privileged_opt_in="Global Administrator"))
    assert [GLOBAL.id] == [c.role_id for c in result.changes]


def test_every_role_the_tenant_marks_privileged_needs_the_opt_in() -> None:
    """Helpdesk Administrator is on the default allow-list, but the tenant marks it privileged
    (isPrivileged): without the opt-in it is blocked; opted in (by template id), it syncs."""
    t = Tenant()
    members = {"Helpdesk Administrator": t.members(0)}
    refused = plan(t.inputs(members), settings())
    opted = plan(t.inputs(members), settings(privileged_opt_in=HELPDESK.template_id.upper()))
    assert ((), [Guard.NOT_ALLOWED]) == (refused.changes, [b.guard for b in refused.blocked])
    assert "privileged" in refused.blocked[0].reason
    assert [(Action.GRANT, HELPDESK.id)] == [(c.action, c.role_id) for c in opted.changes]


def test_a_role_whose_privilege_was_not_read_counts_as_privileged() -> None:
    """A definition read without isPrivileged is refused without the opt-in, never assumed
    harmless."""
    t = Tenant()
    unknown = RoleDefinition(EXCHANGE.id, EXCHANGE.display_name, EXCHANGE.template_id)
    inputs = t.inputs({"Exchange Administrator": t.members(0)})
    result = plan(PlanInputs(inputs.groups, [unknown], inputs.members, [], t.users), settings())
    assert [Guard.NOT_ALLOWED] == [b.guard for b in result.blocked]


def test_explicit_map_names_a_role_and_unknown_names_are_reported() -> None:
    """ROLES_GROUP_MAP maps a group by template id; a near-miss name maps to nothing."""
    mapped, unknown = map_groups(
        [group("EXO-Admins"), group("Helpdesk Admins"), group("helpdesk administrator")],
        DEFINITIONS,
        settings(group_map={"exo-admins": EXCHANGE.template_id.upper()}),
    )
    expected = [("EXO-Admins", EXCHANGE.id, "map"), ("helpdesk administrator", HELPDESK.id, "name")]
    assert expected == [(m.group.name, m.role.id, m.how) for m in mapped]
    assert ["Helpdesk Admins"] == unknown


def test_emptying_a_group_of_ten_with_threshold_five_is_held() -> None:
    """Ten revocations over ROLES_MAX_REVOCATIONS=5 hold them, naming the held set's id."""
    t = Tenant()
    result = plan(t.inputs({"Exchange Administrator": t.members()},
                           assigned(EXCHANGE, *t.users[:10])),
                  settings(max_revocations=5, max_revocation_share=1.0))
    assert 10 == len(result.revocations)
    assert result.held is not None
    assert (Guard.THRESHOLD, 10) == (result.held.guard, len(result.held.changes))
    assert result.held.plan_id in result.held.fix


def test_revocations_count_against_a_rolling_window() -> None:
    """Two revocations are within ROLES_MAX_REVOCATIONS=5 alone, but not after four others in
    the window: the budget is per window, not per cycle. The same two, released already and
    planned again while still queued, count once."""
    t = Tenant()
    members = {"Exchange Administrator": t.members(*range(2, 20))}
    current = assigned(EXCHANGE, *t.users[:20])
    fresh = plan(t.inputs(members, current), settings())
    others = frozenset(f"revoke:{EXCHANGE.id}:{uuid.uuid4()}" for _ in range(4))
    late = plan(t.inputs(members, current, revoked=others), settings())
    again = plan(t.inputs(members, current,
                          revoked=frozenset(c.key for c in fresh.revocations)), settings())
    assert (2, None, None) == (len(fresh.revocations), fresh.held, again.held)
    assert late.held is not None
    assert "after 4 in the last 24 h" in late.held.reason


def test_share_rule_applies_only_from_the_minimum_count() -> None:
    """One leaver of two role members (50 %) is not held; two of three (67 %) are, since the
    share rule starts at ROLES_SHARE_MIN_REVOCATIONS=2."""
    t = Tenant()
    one = plan(t.inputs({"Exchange Administrator": t.members(0)},
                        assigned(EXCHANGE, *t.users[:2])), settings())
    two = plan(t.inputs({"Exchange Administrator": t.members(0)},
                        assigned(EXCHANGE, *t.users[:3])), settings())
    assert ([(Action.REVOKE, t.users[1].id)], []) == summary(one)
    assert two.held is not None
    assert 3 == two.current_members


def test_a_held_plan_holds_its_revocations_only() -> None:
    """Revocations over the threshold are held; the grants of the same cycle go ahead, and the
    held set's id is the id of the revocations alone."""
    t = Tenant()
    result = plan(t.inputs({"Exchange Administrator": t.members(20, 21)},
                           assigned(EXCHANGE, *t.users[:10])),
                  settings(max_revocations=5, max_revocation_share=1.0))
    released, held = summary(result)
    assert sorted([(Action.GRANT, t.users[20].id), (Action.GRANT, t.users[21].id)]) == released
    assert 10 == len(held)
    assert result.held is not None
    assert plan_id(result.revocations) == result.held.plan_id


def test_grants_above_the_limit_are_held() -> None:
    """More grants than ROLES_MAX_GRANTS in one cycle hold the grants; a revocation within the
    limits goes ahead."""
    t = Tenant()
    result = plan(t.inputs({"Exchange Administrator": t.members(*range(1, 13))},
                           assigned(EXCHANGE, *t.users[:2])),
                  settings(max_grants=10, max_revocation_share=1.0))
    released, held = summary(result)
    assert [(Action.REVOKE, t.users[0].id)] == released
    assert 11 == len(held)
    assert result.held is not None
    assert Guard.GRANT_LIMIT == result.held.guard


def test_apply_time_checks_are_the_planner_guards() -> None:
    """check_change, which the queue handler calls before it acts, refuses a break-glass UPN,
    a privileged role without the opt-in, and a cloud-only user, and lets a synced user in."""
    t = Tenant()
    user = t.users[0]
    grant = RoleChange(Action.GRANT, EXCHANGE.id, user.id, user=user.upn)
    s = settings()
    glass = BreakGlass(upns=frozenset({user.upn}))
    refusals = [
        check_change(grant, EXCHANGE, user, s, glass),
        check_change(grant, HELPDESK, user, s, BreakGlass()),
        check_change(RoleChange(Action.GRANT, EXCHANGE.id, t.cloud_only.id), EXCHANGE,
                     t.cloud_only, s, BreakGlass()),
    ]
    assert [Guard.BREAK_GLASS, Guard.NOT_ALLOWED, Guard.NOT_SYNCED] == [
        r.guard if r else None for r in refusals]
    assert check_change(grant, EXCHANGE, user, s, BreakGlass()) is None


def test_revocations_within_threshold_are_not_held() -> None:
    """One revocation of five synced members with default limits is planned, not held."""
    t = Tenant()
    result = plan(t.inputs({"Exchange Administrator": t.members(0, 1, 2, 3)},
                           assigned(EXCHANGE, *t.users[:5])), settings())
    assert (1, None) == (len(result.revocations), result.held)


def test_incomplete_read_is_a_safety_stop_not_an_empty_group() -> None:
    """A truncated or failed member read raises SafetyStop instead of planning revocations."""
    t = Tenant()
    with pytest.raises(SafetyStop) as caught:
        plan(t.inputs({"Exchange Administrator": GroupMembers(frozenset(), False, "LDAP timeout")},
                      assigned(EXCHANGE, t.users[0])), settings())
    assert "LDAP timeout" in str(caught.value)
    with pytest.raises(SafetyStop):
        plan(PlanInputs([group("Exchange Administrator")], DEFINITIONS, {}, [], t.users),
             settings())


def test_two_groups_of_one_name_are_read_apart_by_dn() -> None:
    """Members are keyed by group DN: two groups named alike in the roles OU's sub-OUs each
    count, and neither hides the other's members."""
    t = Tenant()
    first = AdGroup("Exchange Administrator", f"CN=Exchange Administrator,OU=A,{OU}")
    second = AdGroup("Exchange Administrator", f"CN=Exchange Administrator,OU=B,{OU}")
    inputs = PlanInputs([first, second], DEFINITIONS,
                        {first.dn: t.members(0), second.dn: t.members(1)}, [], t.users)
    result = plan(inputs, settings())
    assert {t.users[0].id, t.users[1].id} == {c.principal_id for c in result.changes}


def test_plan_id_depends_on_the_changes_only_not_their_order() -> None:
    """The same changes give the same plan id in any order; a different set, another id."""
    t = Tenant()
    first = plan(t.inputs({"Exchange Administrator": t.members(0, 1),
                           "License Administrator": t.members(2)}), settings())
    assert plan_id(reversed(first.changes)) == first.plan_id
    assert plan_id(first.changes[:2]) != first.plan_id
    assert 16 == len(first.plan_id)


def test_in_sync_roles_plan_nothing() -> None:
    """When role holders equal group members the plan is empty (a second run changes nothing)."""
    t = Tenant()
    result = plan(t.inputs({"Exchange Administrator": t.members(0, 1)},
                           assigned(EXCHANGE, t.users[0], t.users[1])), settings())
    assert ((), (), None) == (result.changes, result.blocked, result.held)


def test_unsynced_member_is_skipped_and_scoped_assignments_are_ignored() -> None:
    """An AD member with no synced cloud user is skipped; an AU-scoped assignment is not ours."""
    t = Tenant()
    stranger = GroupMembers(frozenset({immutable_id(uuid.uuid4())}))
    scoped = Assignment("au", EXCHANGE.id, t.users[3].id, "/administrativeUnits/x")
    result = plan(t.inputs({"Exchange Administrator": stranger}, [scoped]), settings())
    assert () == result.changes
    assert 1 == len(result.skipped)
