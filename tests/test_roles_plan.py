"""The role planner and its guards, in memory: no peer, no I/O."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest

from shared.config import RolesSettings
from shared.errors import SafetyStop
from shared.roles import (
    Action,
    AdGroup,
    Assignment,
    CloudUser,
    GroupMembers,
    Guard,
    RoleDefinition,
    map_groups,
    plan,
    plan_id,
)

HELPDESK = RoleDefinition(
    "729827e3-9c14-49f7-bb1b-9608f156bbb8",
    "Helpdesk Administrator",
    "729827e3-9c14-49f7-bb1b-9608f156bbb8",
)
EXCHANGE = RoleDefinition(
    "29232cdf-9323-42fd-ade2-1d097af3e4de",
    "Exchange Administrator",
    "29232cdf-9323-42fd-ade2-1d097af3e4de",
)
GLOBAL = RoleDefinition(
    "62e90394-69f5-4237-9190-012177145e10",
    "Global Administrator",
    "62e90394-69f5-4237-9190-012177145e10",
)
DEFINITIONS = [HELPDESK, EXCHANGE, GLOBAL]
OU = "OU=Admin Roles,DC=lab,DC=test"


def group(name: str) -> AdGroup:
    return AdGroup(name, f"CN={name},{OU}")


def settings(**overrides: Any) -> RolesSettings:
    return RolesSettings(_env_file=None, **overrides)  # type: ignore[call-arg]


class Tenant:
    """A few synced users (with AD objectGUIDs) and cloud-only ones."""

    def __init__(self, synced: int = 12) -> None:
        self.guids = [uuid.uuid4() for _ in range(synced)]
        self.users = [
            CloudUser(
                id=str(uuid.uuid4()),
                user_principal_name=f"user{i}@lab.test",
                display_name=f"User {i}",
                on_premises_immutable_id=immutable(guid),
                on_premises_sync_enabled=True,
            )
            for i, guid in enumerate(self.guids)
        ]
        self.cloud_only = CloudUser(str(uuid.uuid4()), "cloudadmin@lab.onmicrosoft.com")
        self.break_glass = CloudUser(str(uuid.uuid4()), "breakglass@lab.onmicrosoft.com")
        self.users += [self.cloud_only, self.break_glass]

    def members(self, *indexes: int) -> GroupMembers:
        return GroupMembers(frozenset(immutable(self.guids[i]) for i in indexes))


def immutable(guid: uuid.UUID) -> str:
    return base64.b64encode(guid.bytes_le).decode()


def assigned(role: RoleDefinition, *users: CloudUser) -> list[Assignment]:
    return [Assignment(f"a-{u.id}-{role.id}", role.id, u.id) for u in users]


def test_member_of_group_is_granted_the_role_named_like_the_group() -> None:
    """A synced user in AD group 'Helpdesk Administrator' is planned a grant of that role."""
    t = Tenant()
    result = plan(
        [group("Helpdesk Administrator")],
        DEFINITIONS,
        {"Helpdesk Administrator": t.members(0)},
        [],
        t.users,
        settings(),
    )
    assert [(Action.GRANT, HELPDESK.id, t.users[0].id)] == [
        (c.action, c.role_id, c.principal_id) for c in result.changes
    ]
    change = result.changes[0]
    assert ("user0@lab.test", "Helpdesk Administrator") == (change.user, change.group)
    assert result.held is None


def test_synced_holder_no_longer_in_group_is_revoked_cloud_only_stays() -> None:
    """Removing a synced user from the group revokes the role; a cloud-only holder stays."""
    t = Tenant()
    current = assigned(HELPDESK, t.users[0], t.users[1], t.cloud_only)
    result = plan(
        [group("Helpdesk Administrator")],
        DEFINITIONS,
        {"Helpdesk Administrator": t.members(0)},
        current,
        t.users,
        settings(max_revocation_share=1.0),
    )
    assert [(Action.REVOKE, t.users[1].id)] == [(c.action, c.principal_id) for c in result.changes]
    assert 1 == result.kept


def test_break_glass_in_group_gets_nothing_and_is_never_revoked() -> None:
    """A break-glass account in the AD group is blocked, and holding a role it is left alone."""
    t = Tenant()
    bg = CloudUser(
        t.break_glass.id,
        "breakglass@lab.test",
        on_premises_immutable_id=immutable(t.guids[5]),
        on_premises_sync_enabled=True,
    )
    users = [u for u in t.users if u.id != bg.id] + [bg]
    result = plan(
        [group("Helpdesk Administrator"), group("Exchange Administrator")],
        DEFINITIONS,
        {"Helpdesk Administrator": t.members(5), "Exchange Administrator": t.members()},
        assigned(EXCHANGE, bg),
        users,
        settings(break_glass_ids=bg.id.upper()),
    )
    assert () == result.changes
    assert [Guard.BREAK_GLASS] == [b.guard for b in result.blocked]
    assert bg.id == result.blocked[0].principal_id


def test_privileged_role_without_opt_in_changes_nothing_and_is_blocked() -> None:
    """A group named 'Global Administrator' without ROLES_PRIVILEGED_OPT_IN plans no change."""
    t = Tenant()
    result = plan(
        [group("Global Administrator")],
        DEFINITIONS,
        {"Global Administrator": t.members(0, 1)},
        assigned(GLOBAL, t.users[2]),
        t.users,
        settings(allow_list="Global Administrator,Helpdesk Administrator"),
    )
    assert () == result.changes
    assert [(Guard.NOT_ALLOWED, 2, 1)] == [
        (b.guard, b.would_grant, b.would_revoke) for b in result.blocked
    ]
    assert "ROLES_PRIVILEGED_OPT_IN" in result.blocked[0].fix


def test_privileged_role_with_opt_in_is_synced() -> None:
    """Opting Global Administrator in lets its group grant it."""
    t = Tenant()
    result = plan(
        [group("Global Administrator")],
        DEFINITIONS,
        {"Global Administrator": t.members(0)},
        [],
        t.users,
        settings(
            allow_list="Global Administrator", privileged_opt_in="Global Administrator"
        ),
    )
    assert [GLOBAL.id] == [c.role_id for c in result.changes]


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
    """Ten revocations over ROLES_MAX_REVOCATIONS=5 hold the plan, naming its id."""
    t = Tenant()
    result = plan(
        [group("Helpdesk Administrator")],
        DEFINITIONS,
        {"Helpdesk Administrator": t.members()},
        assigned(HELPDESK, *t.users[:10]),
        t.users,
        settings(max_revocations=5, max_revocation_share=1.0),
    )
    assert 10 == len(result.revocations)
    assert result.held is not None
    assert Guard.THRESHOLD == result.held.guard
    assert result.plan_id in result.held.fix


def test_share_threshold_holds_an_emptied_small_group() -> None:
    """Revoking 2 of 3 members (67%) is held by the share even under the count limit."""
    t = Tenant()
    result = plan(
        [group("Helpdesk Administrator")],
        DEFINITIONS,
        {"Helpdesk Administrator": t.members(0)},
        assigned(HELPDESK, *t.users[:3]),
        t.users,
        settings(max_revocations=5, max_revocation_share=0.5),
    )
    assert result.held is not None
    assert 3 == result.current_members


def test_revocations_within_threshold_are_not_held() -> None:
    """One revocation of five synced members with default limits is planned, not held."""
    t = Tenant()
    result = plan(
        [group("Helpdesk Administrator")],
        DEFINITIONS,
        {"Helpdesk Administrator": t.members(0, 1, 2, 3)},
        assigned(HELPDESK, *t.users[:5]),
        t.users,
        settings(),
    )
    assert (1, None) == (len(result.revocations), result.held)


def test_incomplete_read_is_a_safety_stop_not_an_empty_group() -> None:
    """A truncated or failed member read raises SafetyStop instead of planning revocations."""
    t = Tenant()
    with pytest.raises(SafetyStop) as caught:
        plan(
            [group("Helpdesk Administrator")],
            DEFINITIONS,
            {"Helpdesk Administrator": GroupMembers(frozenset(), False, "LDAP timeout")},
            assigned(HELPDESK, t.users[0]),
            t.users,
            settings(),
        )
    assert "LDAP timeout" in str(caught.value)
    with pytest.raises(SafetyStop):
        plan([group("Helpdesk Administrator")], DEFINITIONS, {}, [], t.users, settings())


def test_plan_id_depends_on_the_changes_only_not_their_order() -> None:
    """The same changes give the same plan id in any order; a different set, another id."""
    t = Tenant()
    first = plan(
        [group("Helpdesk Administrator"), group("Exchange Administrator")],
        DEFINITIONS,
        {"Helpdesk Administrator": t.members(0, 1), "Exchange Administrator": t.members(2)},
        [],
        t.users,
        settings(),
    )
    assert plan_id(reversed(first.changes)) == first.plan_id
    assert plan_id(first.changes[:2]) != first.plan_id
    assert 16 == len(first.plan_id)


def test_in_sync_roles_plan_nothing() -> None:
    """When role holders equal group members the plan is empty (a second run changes nothing)."""
    t = Tenant()
    result = plan(
        [group("Helpdesk Administrator")],
        DEFINITIONS,
        {"Helpdesk Administrator": t.members(0, 1)},
        assigned(HELPDESK, t.users[0], t.users[1]),
        t.users,
        settings(),
    )
    assert ((), (), None) == (result.changes, result.blocked, result.held)


def test_unsynced_member_is_skipped_and_scoped_assignments_are_ignored() -> None:
    """An AD member with no synced cloud user is skipped; an AU-scoped assignment is not ours."""
    t = Tenant()
    stranger = GroupMembers(frozenset({immutable(uuid.uuid4())}))
    scoped = Assignment("au", HELPDESK.id, t.users[3].id, "/administrativeUnits/x")
    result = plan(
        [group("Helpdesk Administrator")],
        DEFINITIONS,
        {"Helpdesk Administrator": stranger},
        [scoped],
        t.users,
        settings(),
    )
    assert () == result.changes
    assert 1 == len(result.skipped)
