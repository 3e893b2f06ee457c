"""The role decisions a queue message cannot override (issue 26), in memory: a queued change
is applied only while it is the latest released decision and still wanted by what is read
now (``stale_reason``); grants count against the same rolling window as revocations; the
share rule holds per role."""

from __future__ import annotations

import uuid

from shared.roles.model import Action, Decision, RoleChange
from shared.roles.planner import BreakGlass, is_latest, stale_reason

from .test_roles_plan import EXCHANGE, GLOBAL, HELPDESK, Tenant, assigned, plan, settings, summary

PID = "0123456789abcdef"


def test_replayed_grants_count_against_the_window_and_are_held() -> None:
    """Ten grants pass alone (ROLES_MAX_GRANTS=10), but after five others released in the
    window the same ten are held: 10 every cycle is not 960 a day. The same ten released
    already and planned again count once."""
    t = Tenant()
    members = {"Exchange Administrator": t.members(*range(10))}
    fresh = plan(t.inputs(members), settings())
    others = frozenset(f"grant:{EXCHANGE.id}:{uuid.uuid4()}" for _ in range(5))
    late = plan(t.inputs(members, granted=others), settings())
    again = plan(t.inputs(members, granted=frozenset(c.key for c in fresh.grants)), settings())
    assert (10, None, None) == (len(fresh.grants), fresh.held, again.held)
    assert late.held is not None
    assert ("10 grants after 5 in the last 24 h, above ROLES_MAX_GRANTS=10",) == late.held.reasons
    assert ([], sorted((Action.GRANT, u.id) for u in t.users[:10])) == summary(late)


def test_emptying_a_small_role_beside_a_large_one_is_held() -> None:
    """Two holders of Exchange Administrator both leave while Helpdesk Administrator keeps 20:
    2 of 22 overall, but 2 of 2 (100 %) of that role, so the revocations are held."""
    t = Tenant()
    members = {"Exchange Administrator": t.members(),
               "Helpdesk Administrator": t.members(*range(2, 22))}
    current = assigned(EXCHANGE, *t.users[:2]) + assigned(HELPDESK, *t.users[2:22])
    result = plan(t.inputs(members, current),
                  settings(privileged_opt_in="Helpdesk Administrator"))
    assert result.held is not None
    assert ("2 of 2 synced member(s) of 'Exchange Administrator' revoked (100%), above "
            "ROLES_MAX_REVOCATION_SHARE=0.25",) == result.held.reasons
    assert ([], sorted((Action.REVOKE, u.id) for u in t.users[:2])) == summary(result)


def test_one_revocation_per_role_is_below_the_share_minimum() -> None:
    """One leaver in each of two small roles: each role's count is below
    ROLES_SHARE_MIN_REVOCATIONS=2, so neither is held by the share rule."""
    t = Tenant()
    members = {"Exchange Administrator": t.members(0),
               "Helpdesk Administrator": t.members(2)}
    current = assigned(EXCHANGE, *t.users[:2]) + assigned(HELPDESK, *t.users[2:4])
    result = plan(t.inputs(members, current),
                  settings(privileged_opt_in="Helpdesk Administrator"))
    assert (None, 2) == (result.held, len(result.revocations))


def _grant(t: Tenant, index: int = 0, role: str = EXCHANGE.id) -> RoleChange:
    return RoleChange(Action.GRANT, role, t.users[index].id)


def test_a_message_is_current_only_for_the_latest_decision() -> None:
    """The latest decision must name the message's plan and direction; no decision at all
    means no cycle released the change."""
    change = _grant(Tenant())
    assert [True, False, False, False] == [
        is_latest(Decision(Action.GRANT, PID), PID, change),
        is_latest(Decision(Action.GRANT, "fedcba9876543210"), PID, change),
        is_latest(Decision(Action.REVOKE, PID), PID, change),
        is_latest(None, PID, change)]


def test_a_replayed_grant_after_the_revocation_is_stale() -> None:
    """The user left the group and the role was revoked: the old grant message (its real plan
    id) is not the latest decision, and says so."""
    t = Tenant()
    members = frozenset({t.users[0].immutable_id or ""})
    reason = stale_reason(_grant(t), PID, Decision(Action.REVOKE, "fedcba9876543210"), EXCHANGE,
                          t.users[0], members, settings(), BreakGlass())
    assert ("plan 0123456789abcdef is not the latest decision for this role and principal "
            "(the latest is a revoke of plan fedcba9876543210)") == reason
    assert ("plan 0123456789abcdef is not the latest decision for this role and principal "
            "(no cycle released one)") == stale_reason(_grant(t), PID, None, EXCHANGE,
                                                       t.users[0], members, settings(),
                                                       BreakGlass())


def test_a_grant_is_wanted_only_for_a_synced_member_now() -> None:
    """The latest decision is this grant, but the principal left the group before the next
    cycle: stale. A member: wanted. A cloud-only principal in no group: stale."""
    t = Tenant()
    latest = Decision(Action.GRANT, PID)
    member = frozenset({t.users[0].immutable_id or ""})
    assert [None, "the principal is not a synced member of the role's AD group now",
            "the principal is not a synced member of the role's AD group now"] == [
        stale_reason(_grant(t), PID, latest, EXCHANGE, t.users[0], member, settings(),
                     BreakGlass()),
        stale_reason(_grant(t), PID, latest, EXCHANGE, t.users[0], frozenset(), settings(),
                     BreakGlass()),
        stale_reason(RoleChange(Action.GRANT, EXCHANGE.id, t.cloud_only.id), PID, latest,
                     EXCHANGE, t.cloud_only, member, settings(), BreakGlass())]


def test_a_revocation_is_wanted_only_for_a_principal_outside_the_group() -> None:
    """The latest decision is this revocation: wanted while the principal is out of the group
    (or deleted), stale once they are a member again."""
    t = Tenant()
    revoke = RoleChange(Action.REVOKE, EXCHANGE.id, t.users[0].id)
    latest = Decision(Action.REVOKE, PID)
    member = frozenset({t.users[0].immutable_id or ""})
    assert [None, None, "the principal is a member of the role's AD group again"] == [
        stale_reason(revoke, PID, latest, EXCHANGE, t.users[0], frozenset(), settings(),
                     BreakGlass()),
        stale_reason(revoke, PID, latest, EXCHANGE, None, member, settings(), BreakGlass()),
        stale_reason(revoke, PID, latest, EXCHANGE, t.users[0], member, settings(),
                     BreakGlass())]


def test_the_guards_decide_a_current_change_too() -> None:
    """A current grant of a member is stale when the principal is break-glass or the role is
    not allowed; a role that no longer exists is stale."""
    t = Tenant()
    latest = Decision(Action.GRANT, PID)
    member = frozenset({t.users[0].immutable_id or ""})
    glass = stale_reason(_grant(t), PID, latest, EXCHANGE, t.users[0], member, settings(),
                         BreakGlass(frozenset({t.users[0].id.lower()})))
    global_admin = stale_reason(_grant(t, role=GLOBAL.id), PID, latest, GLOBAL, t.users[0],
                                member, settings(), BreakGlass())
    gone = stale_reason(_grant(t), PID, latest, None, t.users[0], member, settings(),
                        BreakGlass())
    assert glass is not None and "break-glass account" in glass
    assert global_admin is not None and "privileged (isPrivileged) and not opted in" in global_admin
    assert f"role definition {EXCHANGE.id} does not exist" == gone


def test_with_a_share_minimum_of_one_a_lone_leaver_of_a_small_role_is_held() -> None:
    """ROLES_SHARE_MIN_REVOCATIONS=1: one leaver of two holders (50 %) is held, and the reason
    names the role."""
    t = Tenant()
    result = plan(t.inputs({"Exchange Administrator": t.members(0)},
                           assigned(EXCHANGE, *t.users[:2])), settings(share_min_revocations=1))
    assert result.held is not None
    assert ("1 of 2 synced member(s) of 'Exchange Administrator' revoked (50%), above "
            "ROLES_MAX_REVOCATION_SHARE=0.25",) == result.held.reasons
