"""The role planner and its guards, in memory: no peer, no I/O."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from shared.config import RolesSettings
from shared.entra import CloudUser, immutable_id
from shared.errors import SafetyStop
from shared.roles.model import (
    Action,
    AdGroup,
    Assignment,
    Blocked,
    CycleStopped,
    GroupMembers,
    Guard,
    RoleChange,
    RoleDefinition,
    RolePlan,
    Skipped,
    plan_id,
)
from shared.roles.planner import (
    BreakGlass,
    PlanInputs,
    check_change,
    is_allowed,
    is_privileged,
    map_groups,
    plan,
)

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


# -- what each guard says: the operator acts on these words ---------------------------------
# A role definition read where its id and template id differ (as Graph may return a tenant's
# copy of a built-in role): the guards must know it by either.
TAKEOVER_COPY = RoleDefinition("0d6c5b4a-3928-4716-a5b4-c3d2e1f00918",
                               "Privileged Role Administrator",
                               "E8611AB8-C189-46E8-94E1-60213AB1F814", privileged=False)
READER = RoleDefinition("5d6b6bb7-de71-4623-b4af-96380a352509", "Security Reader",
                        "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d", privileged=False)
# An AD member whose base64 source anchor sorts before any other's ('+' < digits < letters).
FIRST = uuid.UUID("000000f8-0000-4000-8000-000000000000")


def test_a_break_glass_member_is_blocked_naming_the_group_to_fix() -> None:
    """A break-glass account in an AD group: one refusal that names the account, the group and
    the role, says nothing was granted, and tells the operator to take it out of the group."""
    t = Tenant()
    bg = CloudUser(t.break_glass.id, "breakglass@lab.test", immutable_id=immutable_id(t.guids[5]),
                   sync_enabled=True)
    t.users = [u for u in t.users if u.id != bg.id] + [bg]
    result = plan(t.inputs({"License Administrator": t.members(5)},
                           break_glass=BreakGlass(frozenset({bg.id}))), settings())
    expected = Blocked(
        Guard.BREAK_GLASS,
        "break-glass account breakglass@lab.test is a member of AD group 'License "
        "Administrator'; role 'License Administrator' was not granted to it",
        "remove the account from AD group 'License Administrator'; break-glass accounts are "
        "managed in the cloud only",
        role_name="License Administrator", group="License Administrator",
        user="breakglass@lab.test", principal_id=bg.id, would_grant=1, would_revoke=0)
    assert ((), (expected,)) == (result.changes, result.blocked)


def test_a_queued_change_naming_break_glass_is_refused_without_naming_a_group() -> None:
    """Checked again before it is carried out, a queued revocation of a break-glass account
    (known by its UPN, the change carrying its id only) is refused; with no AD group to name,
    the fix says to find who queued it rather than naming an empty group."""
    t = Tenant()
    bg = t.break_glass
    change = RoleChange(Action.REVOKE, EXCHANGE.id, bg.id)
    found = check_change(change, EXCHANGE, bg, settings(), BreakGlass(upns=frozenset({bg.upn})))
    expected = Blocked(
        Guard.BREAK_GLASS,
        f"break-glass account {bg.id} was named by a queued change; role 'Exchange "
        "Administrator' was not revoked from it",
        "none: nothing was changed; break-glass accounts are managed in the cloud only, so "
        "find out who queued a change for one",
        role_name="Exchange Administrator", principal_id=bg.id, would_grant=0, would_revoke=1)
    assert expected == found


def test_break_glass_is_recognised_by_the_change_s_upn_when_the_user_is_gone() -> None:
    """A change whose principal no longer resolves to a user is still refused when the UPN it
    carries is a break-glass one; a user's own UPN counts even when the change has none."""
    glass = BreakGlass(upns=frozenset({"breakglass@lab.test"}))
    named = RoleChange(Action.REVOKE, EXCHANGE.id, str(uuid.uuid4()), user="BreakGlass@lab.test")
    bg = CloudUser(str(uuid.uuid4()), "breakglass@lab.test", sync_enabled=True)
    unnamed = RoleChange(Action.GRANT, EXCHANGE.id, bg.id)
    guards = [check_change(named, EXCHANGE, None, settings(), glass),
              check_change(unnamed, EXCHANGE, bg, settings(), glass)]
    assert [Guard.BREAK_GLASS, Guard.BREAK_GLASS] == [g.guard if g else None for g in guards]


def test_a_revocation_for_a_deleted_principal_passes_a_grant_to_a_non_user_does_not() -> None:
    """A principal that is not (or no longer) a user: revoking passes, since its assignments
    went with it; granting is refused as not a synced user, naming the principal."""
    principal = str(uuid.uuid4())
    revoke = RoleChange(Action.REVOKE, EXCHANGE.id, principal)
    grant = RoleChange(Action.GRANT, EXCHANGE.id, principal, user="app@lab.test")
    expected = Blocked(Guard.NOT_SYNCED, f"principal {principal} is not a user",
                       "nothing was changed; the sync manages synced users only",
                       role_name="Exchange Administrator", user="app@lab.test",
                       principal_id=principal)
    assert (None, expected) == (check_change(revoke, EXCHANGE, None, settings(), BreakGlass()),
                                check_change(grant, EXCHANGE, None, settings(), BreakGlass()))


def test_a_cloud_only_user_is_refused_by_upn_or_by_id() -> None:
    """A cloud-only user is never granted or revoked: the refusal names the UPN, or the object
    id when the user has none."""
    t = Tenant()
    nameless = CloudUser(str(uuid.uuid4()))
    found = [check_change(RoleChange(action, EXCHANGE.id, u.id, user=u.upn), EXCHANGE, u,
                          settings(), BreakGlass())
             for action, u in ((Action.REVOKE, t.cloud_only), (Action.GRANT, nameless))]
    assert [
        Blocked(Guard.NOT_SYNCED, "cloudadmin@lab.onmicrosoft.com is not a synced user "
                "(cloud-only)", "nothing was changed; the sync manages synced users only",
                role_name="Exchange Administrator", user="cloudadmin@lab.onmicrosoft.com",
                principal_id=t.cloud_only.id),
        Blocked(Guard.NOT_SYNCED, f"{nameless.id} is not a synced user (cloud-only)",
                "nothing was changed; the sync manages synced users only",
                role_name="Exchange Administrator", principal_id=nameless.id),
    ] == found


def test_a_privileged_role_without_opt_in_is_one_refusal_counting_what_was_not_made() -> None:
    """All the changes a privileged role's group asks for become one refusal for the role,
    counting the grants and revocations not made and naming the setting that opts it in."""
    t = Tenant()
    result = plan(t.inputs({"Global Administrator": t.members(0, 1)},
                           assigned(GLOBAL, t.users[2])), settings())
    expected = Blocked(
        Guard.NOT_ALLOWED,
        "AD group 'Global Administrator' maps to role 'Global Administrator', which is "
        "privileged (isPrivileged) and not opted in; 2 grant(s) and 1 revocation(s) were not "
        "made",
        "name 'Global Administrator' in ROLES_PRIVILEGED_OPT_IN if this privileged role is "
        "really to follow AD, or remove the group from the roles OU",
        role_name="Global Administrator", group="Global Administrator", would_grant=2,
        would_revoke=1)
    assert (expected,) == result.blocked


def test_a_role_off_the_allow_list_names_every_group_that_asks_for_it() -> None:
    """Two groups naming a role that is not on ROLES_ALLOW_LIST: one refusal naming both
    groups (in the order they are read) and the setting that allows it."""
    t = Tenant()
    named, mapped = group("License Administrator"), group("lic-admins")
    inputs = PlanInputs([named, mapped], DEFINITIONS,
                        {named.dn: t.members(0), mapped.dn: t.members(1)}, [], t.users)
    result = plan(inputs, settings(allow_list="Exchange Administrator",
                                   group_map={"lic-admins": LICENSE.template_id}))
    expected = Blocked(
        Guard.NOT_ALLOWED,
        "AD group 'lic-admins', 'License Administrator' maps to role 'License Administrator', "
        "which is not on the allow-list; 2 grant(s) and 0 revocation(s) were not made",
        "add 'License Administrator' to ROLES_ALLOW_LIST, or remove the group from the roles "
        "OU", role_name="License Administrator", group="lic-admins", would_grant=2,
        would_revoke=0)
    assert ((), (expected,)) == (result.changes, result.blocked)


def test_a_queued_change_of_a_role_not_allowed_is_refused_without_naming_a_group() -> None:
    """Checked again before it is carried out, a queued grant of a role now off the
    allow-list is refused; the reason says a queued change named it, not an AD group."""
    t = Tenant()
    change = RoleChange(Action.GRANT, LICENSE.id, t.users[0].id, user=t.users[0].upn)
    found = check_change(change, LICENSE, t.users[0], settings(allow_list=""), BreakGlass())
    expected = Blocked(
        Guard.NOT_ALLOWED,
        "a queued change names role 'License Administrator', which is not on the allow-list; "
        "1 grant(s) and 0 revocation(s) were not made",
        "add 'License Administrator' to ROLES_ALLOW_LIST, or remove the group from the roles "
        "OU", role_name="License Administrator", would_grant=1, would_revoke=0)
    assert expected == found


def test_an_unread_group_stops_the_cycle_saying_why_and_what_to_check() -> None:
    """A group whose read failed, or was not read at all, stops the whole cycle with a safety
    stop naming the group, the problem, the guard and what to check."""
    t = Tenant()
    failed = t.inputs({"Exchange Administrator": GroupMembers(frozenset(), False, "size limit")})
    missing = PlanInputs([group("Exchange Administrator")], DEFINITIONS, {}, [], t.users)
    stops = []
    for inputs in (failed, missing):
        with pytest.raises(CycleStopped) as caught:
            plan(inputs, settings())
        stops.append((caught.value.reason, caught.value.guard, caught.value.user,
                      caught.value.step, caught.value.fix))
    fix = ("check the domain controller and the service account's read access; the next cycle "
           "retries")
    assert [
        ("the members of AD group 'Exchange Administrator' could not be read completely (size "
         "limit); no role was changed this cycle, since an unread group is not an empty one",
         Guard.READ_FAILED, "Exchange Administrator", "role sync", fix),
        ("the members of AD group 'Exchange Administrator' could not be read completely (its "
         "members were not read); no role was changed this cycle, since an unread group is not "
         "an empty one", Guard.READ_FAILED, "Exchange Administrator", "role sync", fix),
    ] == stops


# -- mapping groups to roles -------------------------------------------------------------------
def test_a_group_map_finds_a_role_by_its_template_id_or_its_id_in_any_case() -> None:
    """ROLES_GROUP_MAP may name a role by template id or by id, in any case, also for a
    definition whose id is not its template id; each mapped group says whether its role is
    allowed and privileged. An unknown name before a known one does not hide it."""
    mapped, unknown = map_groups(
        [group("Aardvark Admins"), group("by-id"), group("by-template"),
         group("Exchange Administrator")],
        [READER, EXCHANGE, TAKEOVER_COPY],
        settings(allow_list="Security Reader,Exchange Administrator", group_map={
            "by-template": READER.template_id.upper(), "By-Id": TAKEOVER_COPY.id.upper()}),
    )
    assert [
        ("by-id", TAKEOVER_COPY.id, "map", False, True),
        ("by-template", READER.id, "map", True, False),
        ("Exchange Administrator", EXCHANGE.id, "name", True, False),
    ] == [(m.group.name, m.role.id, m.how, m.allowed, m.privileged) for m in mapped]
    assert ["Aardvark Admins"] == unknown


def test_the_takeover_roles_are_privileged_whatever_the_tenant_says() -> None:
    """Global Administrator, Privileged Role Administrator and Privileged Authentication
    Administrator are privileged even when a definition read says isPrivileged=false, known by
    their template id or, without one, by their id; another role read as not privileged
    is not."""
    by_id = RoleDefinition(GLOBAL.id, "Global Administrator", "", privileged=False)
    assert [True, True, False] == [is_privileged(r) for r in (TAKEOVER_COPY, by_id, READER)]


def test_the_opt_in_and_allow_list_name_a_role_by_name_id_or_template_id() -> None:
    """A privileged role is allowed when ROLES_PRIVILEGED_OPT_IN names it by display name, id
    or template id (any case); the allow-list alone never allows it."""
    copies = [settings(privileged_opt_in=TAKEOVER_COPY.id.upper()),
              settings(privileged_opt_in=TAKEOVER_COPY.template_id.lower()),
              settings(privileged_opt_in=" privileged role ADMINISTRATOR "),
              settings(allow_list="Privileged Role Administrator")]
    assert [True, True, True, False] == [is_allowed(TAKEOVER_COPY, s) for s in copies]


def test_break_glass_by_upn_holding_a_role_is_left_alone_and_counted_as_kept() -> None:
    """A synced break-glass account known by its UPN only, holding a role its group does not
    give it, is neither revoked nor reported: it counts among the holders left alone."""
    t = Tenant()
    result = plan(t.inputs({"Exchange Administrator": t.members(0)},
                           assigned(EXCHANGE, t.users[0], t.users[7]),
                           break_glass=BreakGlass(upns=frozenset({"USER7@lab.test".casefold()}))),
                  settings())
    assert ((), (), 1, 1) == (result.changes, result.blocked, result.kept,
                              result.current_members)


def test_break_glass_by_upn_in_two_groups_of_one_role_is_reported_for_each_group() -> None:
    """A break-glass account (known by UPN) in two groups that name the same role is refused
    once per group, each refusal naming the group to take it out of."""
    t = Tenant()
    named, mapped = group("Exchange Administrator"), group("exo-admins")
    inputs = PlanInputs([named, mapped], DEFINITIONS,
                        {named.dn: t.members(3), mapped.dn: t.members(3)}, [], t.users,
                        break_glass=BreakGlass(upns=frozenset({"user3@lab.test"})))
    result = plan(inputs, settings(group_map={"exo-admins": EXCHANGE.id}))
    assert [(Guard.BREAK_GLASS, "Exchange Administrator"), (Guard.BREAK_GLASS, "exo-admins")] == \
        sorted((b.guard, b.group) for b in result.blocked)
    assert () == result.changes


def test_members_after_a_break_glass_or_unsynced_member_are_still_planned() -> None:
    """A break-glass account and an AD member without a cloud user, read first, hold up
    nobody: every other member of the group is granted."""
    t = Tenant()
    bg = CloudUser(str(uuid.uuid4()), "bg@lab.test", immutable_id=immutable_id(FIRST),
                   sync_enabled=True)
    t.users.append(bg)
    stranger = immutable_id(uuid.UUID("000000f9-0000-4000-8000-000000000000"))
    members = GroupMembers(t.members(0, 1, 2).immutable_ids | {immutable_id(FIRST), stranger})
    result = plan(t.inputs({"Exchange Administrator": members},
                           break_glass=BreakGlass(frozenset({bg.id}))), settings())
    assert sorted(u.id for u in t.users[:3]) == sorted(c.principal_id for c in result.changes)
    assert ([Guard.BREAK_GLASS], 1) == ([b.guard for b in result.blocked], len(result.skipped))


def test_every_holder_left_alone_is_counted_and_holders_after_them_are_revoked() -> None:
    """Two cloud-only holders (one read first) count as two kept; the synced holder no longer
    in the group is still revoked, and the revocation names the group that dropped it."""
    t = Tenant()
    first = CloudUser("00000000-0000-4000-8000-000000000001", "cloud1@lab.onmicrosoft.com")
    t.users.append(first)
    result = plan(t.inputs({"Exchange Administrator": t.members(0)},
                           assigned(EXCHANGE, first, t.cloud_only, t.users[0], t.users[1])),
                  settings(max_revocation_share=1.0))
    assert [(Action.REVOKE, t.users[1].id, "Exchange Administrator")] == [
        (c.action, c.principal_id, c.group) for c in result.changes]
    assert (2, 2) == (result.kept, result.current_members)


def test_a_change_carries_the_names_the_log_and_mail_show() -> None:
    """Each planned change carries the role's name, the user's UPN and display name and the AD
    group that asked for it: what the notification and the cycle log print."""
    t = Tenant()
    result = plan(t.inputs({"Exchange Administrator": t.members(0)}), settings())
    assert [("Exchange Administrator", "user0@lab.test", "User 0", "Exchange Administrator")] \
        == [(c.role_name, c.user, c.display_name, c.group) for c in result.changes]
    assert "grant 'Exchange Administrator' to user0@lab.test (AD group 'Exchange " \
        "Administrator')" == result.changes[0].describe()


def test_a_plan_lists_the_groups_it_mapped_and_those_it_could_not() -> None:
    """The plan reports each mapped group with its role, and the names of groups that name no
    role, for the cycle's log and notification."""
    t = Tenant()
    result = plan(t.inputs({"Exchange Administrator": t.members(0), "Helpdesk Admins":
                            t.members(1)}), settings())
    assert ([("Exchange Administrator", EXCHANGE.id)], ("Helpdesk Admins",)) == (
        [(m.group.name, m.role.id) for m in result.mapped], result.unknown_groups)


def test_an_ad_member_whose_cloud_user_no_longer_syncs_is_skipped_not_granted() -> None:
    """A cloud user that still carries the member's source anchor but is no longer synced (sync
    was turned off for it) is not that AD member's account: the member is skipped, saying so."""
    t = Tenant()
    detached = CloudUser(str(uuid.uuid4()), "detached@lab.test",
                         immutable_id=immutable_id(FIRST), sync_enabled=False)
    t.users.append(detached)
    anchor = immutable_id(FIRST)
    result = plan(t.inputs({"Exchange Administrator": GroupMembers(frozenset({anchor}))}),
                  settings())
    expected = Skipped(f"AD member {anchor} of 'Exchange Administrator' has no synced cloud "
                       "user yet", "Exchange Administrator", "Exchange Administrator", anchor)
    assert ((), (), (expected,)) == (result.changes, result.blocked, result.skipped)


# -- the limits ---------------------------------------------------------------------------------
def test_the_limits_hold_only_above_them_not_at_them() -> None:
    """Exactly ROLES_MAX_GRANTS grants, exactly ROLES_MAX_REVOCATIONS revocations, and a share
    exactly at ROLES_MAX_REVOCATION_SHARE are all within the limits: nothing is held."""
    t = Tenant()
    grants = plan(t.inputs({"Exchange Administrator": t.members(*range(10))}),
                  settings(max_grants=10))
    count = plan(t.inputs({"Exchange Administrator": t.members(*range(5, 10))},
                          assigned(EXCHANGE, *t.users[:10])),
                 settings(max_revocations=5, max_revocation_share=1.0))
    share = plan(t.inputs({"Exchange Administrator": t.members(*range(2, 8))},
                          assigned(EXCHANGE, *t.users[:8])),
                 settings(max_revocation_share=0.25))
    assert [(10, None), (5, None), (2, None)] == [
        (len(p.changes), p.held) for p in (grants, count, share)]


def test_a_hold_says_which_limit_and_by_how_much() -> None:
    """The hold's reasons name the count and the setting exceeded: grants over
    ROLES_MAX_GRANTS, and a revoked share over ROLES_MAX_REVOCATION_SHARE."""
    t = Tenant()
    grants = plan(t.inputs({"Exchange Administrator": t.members(*range(11))}), settings())
    share = plan(t.inputs({"Exchange Administrator": t.members(0)},
                          assigned(EXCHANGE, *t.users[:3])), settings())
    assert grants.held is not None and share.held is not None
    assert (("11 grants, above ROLES_MAX_GRANTS=10",),
            ("2 of 3 synced member(s) of 'Exchange Administrator' revoked (67%), above "
             "ROLES_MAX_REVOCATION_SHARE=0.25",)) == (grants.held.reasons, share.held.reasons)


def test_grants_held_with_a_busy_window_say_nothing_of_revocations() -> None:
    """Grants over the limit in a cycle without revocations are held for the grants alone,
    even when the revocation window is already over its limit."""
    t = Tenant()
    busy = frozenset(f"revoke:{EXCHANGE.id}:{uuid.uuid4()}" for _ in range(6))
    result = plan(t.inputs({"Exchange Administrator": t.members(*range(11))}, revoked=busy),
                  settings())
    assert result.held is not None
    assert (Guard.GRANT_LIMIT, ("11 grants, above ROLES_MAX_GRANTS=10",)) == (
        result.held.guard, result.held.reasons)


def test_both_limits_hold_grants_and_revocations_together() -> None:
    """Too many grants and too many revocations in one cycle: the held set has both, and it
    is a revocation threshold hold (the stricter approval)."""
    t = Tenant()
    result = plan(t.inputs({"Exchange Administrator": t.members(*range(10, 21))},
                           assigned(EXCHANGE, *t.users[:6])),
                  settings(max_revocation_share=1.0))
    assert result.held is not None
    assert (11, 6, Guard.THRESHOLD) == (
        sum(c.action is Action.GRANT for c in result.held.changes),
        sum(c.action is Action.REVOKE for c in result.held.changes), result.held.guard)
    assert () == result.released


# -- the values ---------------------------------------------------------------------------------
def test_a_plan_id_is_stable_across_versions() -> None:
    """A plan id is stored with held plans and approvals, and carried by queued messages: the
    same changes must give the same id after an upgrade, so it is pinned here."""
    change = RoleChange(Action.GRANT, EXCHANGE.id, "6f1b3c1e-1a2b-4c3d-8e9f-0123456789ab")
    other = RoleChange(Action.REVOKE, LICENSE.id, "6f1b3c1e-1a2b-4c3d-8e9f-0123456789ab")
    assert ("0e618ab0adb59302", "2e6fef475153a81d") == (plan_id([change]),
                                                        plan_id([other, change]))


def test_a_refusal_becomes_a_safety_stop_about_the_user_or_else_the_group() -> None:
    """A refusal raised as a SafetyStop carries its reason and fix, the role sync as its step,
    and the user it is about, or the group when it is about no user."""
    about_user = Blocked(Guard.BREAK_GLASS, "refused", "fix it", group="g", user="ann@lab.test")
    about_group = Blocked(Guard.NOT_ALLOWED, "not allowed", "allow it", group="g")
    assert [("refused", "ann@lab.test", "role sync", "fix it"),
            ("not allowed", "g", "role sync", "allow it")] == [
        (e.reason, e.user, e.step, e.fix) for e in (about_user.error(), about_group.error())]


def test_a_change_describes_itself_for_the_log() -> None:
    """A revocation without names describes itself by role and principal id."""
    bare = RoleChange(Action.REVOKE, EXCHANGE.id, "p-1")
    assert f"revoke '{EXCHANGE.id}' from p-1" == bare.describe()


def test_a_cycle_stop_without_user_or_fix_reads_as_one_line_without_them() -> None:
    """A cycle stop raised with its reason and guard only names no user and no fix."""
    stop = CycleStopped("the roles OU was not read", guard=Guard.READ_FAILED)
    assert ("role sync failed: the roles OU was not read.", "", "") == (str(stop), stop.user,
                                                                       stop.fix)
