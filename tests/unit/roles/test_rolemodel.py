"""The role model's derived values (issue 28: mutmut does not mutate properties): the keys
plan ids and the revocation window are built from, and which changes a plan calls grants."""

from __future__ import annotations

from shared.config import RolesSettings
from shared.roles.model import (
    Action,
    AdGroup,
    Assignment,
    Blocked,
    CycleStopped,
    GroupMembers,
    Guard,
    Hold,
    MappedGroup,
    RoleChange,
    RoleDefinition,
    RolePlan,
    Skipped,
    plan_id,
)
from shared.roles.planner import is_allowed, is_privileged

ROLE = "FE930BE7-5E62-47DB-91AF-98C3A49A38B1"
USER = "3C1B2A4D-0E5F-4A6B-8C7D-9E0F1A2B3C4D"


def test_a_change_s_key_ignores_the_case_of_its_ids() -> None:
    """Graph writes ids in lower case and AD reads may not: one change, one key, in lower
    case (plan ids and the revocation window count by it)."""
    change = RoleChange(Action.REVOKE, ROLE, USER)
    assert f"revoke:{ROLE.lower()}:{USER.lower()}" == change.key


def test_a_blocked_change_s_key_names_guard_role_and_principal_or_group() -> None:
    """guard:role:principal, or the group when no principal is known."""
    by_user = Blocked(Guard.BREAK_GLASS, "r", "f", role_name="Helpdesk Administrator",
                      principal_id=USER, group="G")
    by_group = Blocked(Guard.NOT_ALLOWED, "r", "f", role_name="Global Reader", group="G")
    assert ([f"break-glass:Helpdesk Administrator:{USER}", "role-not-allowed:Global Reader:G"]
            == [by_user.key, by_group.key])


def test_a_plan_s_grants_and_revocations_are_its_changes_by_action() -> None:
    """grants are the GRANT changes, revocations the REVOKE ones, in plan order."""
    g1, r1, g2 = (RoleChange(Action.GRANT, ROLE, "a"), RoleChange(Action.REVOKE, ROLE, "b"),
                  RoleChange(Action.GRANT, ROLE, "c"))
    plan = RolePlan((g1, r1, g2))
    assert ((g1, g2), (r1,)) == (plan.grants, plan.revocations)


def test_the_three_takeover_roles_are_privileged_whatever_the_definition_says() -> None:
    """Global Administrator, Privileged Role Administrator and Privileged Authentication
    Administrator (their template ids, any case) need the opt-in even when read as not
    privileged; another role read so does not."""
    takeover = ["62e90394-69f5-4237-9190-012177145e10", "E8611AB8-C189-46E8-94E1-60213AB1F814",
                "7be44c8a-adaf-4e2a-84d6-ab2649e08a13"]
    roles = [RoleDefinition("id", "x", template_id=t, privileged=False) for t in takeover]
    by_id = RoleDefinition("7be44c8a-adaf-4e2a-84d6-ab2649e08a13", "x", privileged=False)
    helpdesk = RoleDefinition("id", "Helpdesk Administrator",
                              template_id="729827e3-9c14-49f7-bb1b-9608f156bbb8",
                              privileged=False)
    allowed = RolesSettings(_env_file=None, allow_list="x,Helpdesk Administrator")  # type: ignore[call-arg]
    assert ([True, True, True], True, False) == (
        [is_privileged(r) for r in roles], is_privileged(by_id), is_privileged(helpdesk))
    assert ([False, False, False], True) == ([is_allowed(r, allowed) for r in roles],
                                             is_allowed(helpdesk, allowed))


def test_actions_and_guards_have_their_documented_names() -> None:
    """The names queue messages, telemetry and Blocked.key carry: grant and revoke; the
    guards' seven names."""
    assert (["grant", "revoke"],
            ["break-glass", "role-not-allowed", "not-a-synced-user", "revocation-threshold",
             "grant-limit", "directory-read-failed", "break-glass-unresolved"]) == (
        [a.value for a in Action], [g.value for g in Guard])


def test_a_change_named_only_by_its_ids_has_no_names() -> None:
    """role_name, user, display_name and group default to empty."""
    change = RoleChange(Action.GRANT, ROLE, USER)
    assert ("", "", "", "") == (change.role_name, change.user, change.display_name, change.group)


def test_changes_compare_and_hash_by_action_and_ids_only() -> None:
    """Two changes with the same action and ids are one change, whatever their names, user,
    display name or group say: equal, one hash, one plan id, neither ordered before the
    other."""
    named = RoleChange(Action.GRANT, ROLE, USER, role_name="Global Reader",
                       user="anna@contoso.com", display_name="Anna", group="Role-Readers")
    bare = RoleChange(Action.GRANT, ROLE, USER)
    assert (True, 1, plan_id([bare]), False, False) == (
        named == bare, len({named, bare}), plan_id([named]), named < bare, bare < named)


def test_a_hold_says_its_plan_its_size_its_reasons_and_how_to_approve() -> None:
    """reason: 'plan <id> holds <n> change(s): <reasons joined by '; '>'; fix: the approve
    command with the plan id; a hold with a revocation is the threshold's, one of grants only
    the grant limit's."""
    changes = (RoleChange(Action.GRANT, ROLE, USER), RoleChange(Action.REVOKE, ROLE, "b"))
    held = Hold(changes, ("3 revocations over 2", "1 grant over 0"))
    pid = plan_id(changes)
    assert (f"plan {pid} holds 2 change(s): 3 revocations over 2; 1 grant over 0",
            f"check the AD groups, then run `python -m shared.cli roles approve {pid}` (the "
            "approval lasts ROLES_APPROVAL_HOURS), or raise the limits",
            Guard.THRESHOLD, Guard.GRANT_LIMIT) == (
        held.reason, held.fix, held.guard, Hold(changes[:1], ()).guard)


def test_a_plan_releases_what_it_does_not_hold() -> None:
    """released: the changes not held, in plan order; with no hold, all of them."""
    g1, r1, g2 = (RoleChange(Action.GRANT, ROLE, "a"), RoleChange(Action.REVOKE, ROLE, "b"),
                  RoleChange(Action.GRANT, ROLE, "c"))
    held = RolePlan((g1, r1, g2), held=Hold((r1,), ("over",)))
    assert ((g1, g2), (g1, r1, g2)) == (held.released, RolePlan((g1, r1, g2)).released)


def test_values_built_with_only_what_they_need_have_empty_defaults() -> None:
    """Defaults: an assignment at the directory scope '/', a definition without template or
    privilege read, a complete group read with no problem, a mapped group not privileged, a
    refusal and a skip with no names and no counts, a plan with nothing kept or counted."""
    blocked = Blocked(Guard.NOT_ALLOWED, "r", "f")
    skipped = Skipped("r")
    plan = RolePlan(())
    mapped = MappedGroup(AdGroup("G", "CN=G"), RoleDefinition(ROLE, "Global Reader"), True,
                         "name")
    assert ("/", "", None, True, "", False, ("", "", "", "", 0, 0), ("", "", ""), (0, 0, ())
            ) == (
        Assignment("a", ROLE, USER).directory_scope_id,
        RoleDefinition(ROLE, "Global Reader").template_id,
        RoleDefinition(ROLE, "Global Reader").privileged,
        GroupMembers(frozenset()).complete, GroupMembers(frozenset()).problem,
        mapped.privileged,
        (blocked.role_name, blocked.group, blocked.user, blocked.principal_id,
         blocked.would_grant, blocked.would_revoke),
        (skipped.role_name, skipped.group, skipped.user),
        (plan.kept, plan.current_members, plan.blocked))


def test_a_refusal_and_a_stopped_cycle_are_the_role_sync_s() -> None:
    """A guard's error and a stopped cycle name the step 'role sync'; a refusal's error names
    its user, else its group."""
    by_group = Blocked(Guard.NOT_ALLOWED, "not allowed", "fix it", group="G").error()
    stopped = CycleStopped("read failed", guard=Guard.READ_FAILED)
    assert ("role sync", "G", "fix it", "role sync", Guard.READ_FAILED) == (
        by_group.step, by_group.user, by_group.fix, stopped.step, stopped.guard)
