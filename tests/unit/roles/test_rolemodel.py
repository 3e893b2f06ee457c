"""The role model's derived values (issue 28: mutmut does not mutate properties): the keys
plan ids and the revocation window are built from, and which changes a plan calls grants."""

from __future__ import annotations

from shared.config import RolesSettings
from shared.roles.model import Action, Blocked, Guard, RoleChange, RoleDefinition, RolePlan
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
