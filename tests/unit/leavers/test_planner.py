"""The leavers planner (``shared.leavers.planner``), pure: who starts, who waits out the grace,
who is left alone, the rolling daily limit and its approval, and for one leaver the next action
in the fixed order convert → wait for the sync → licences → out of the group. Properties
(hypothesis) state the guards; examples pin the documented numbers (50 GB, 24 h)."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from shared.leavers.planner import (
    Action,
    Candidate,
    Facts,
    Mailbox,
    Next,
    Rules,
    Seen,
    Verdict,
    cycle,
    is_excluded,
    needs_licence,
    next_action,
    observe,
    plan_id,
    rolling,
)

NOW = dt.datetime(2026, 12, 6, 10, 0, tzinfo=dt.UTC)
GB = 1024**3
TYPES = st.sampled_from(["user", "shared", "none"])
SKUS = st.frozensets(st.sampled_from(["ENTERPRISEPACK", "EXCHANGEENTERPRISE", "POWER_BI"]))
FACTS = st.builds(Facts, size_bytes=st.none() | st.integers(0, 200 * GB),
                  archive=st.none() | st.booleans(), litigation_hold=st.none() | st.booleans())
MAILBOXES = st.builds(Mailbox, user=st.sampled_from(["u1", "u2"]),
                      upn=st.sampled_from(["a@x.example", "b@x.example"]),
                      object_id=st.sampled_from(["o1", "o2"]), in_group=st.booleans(),
                      enabled=st.booleans(), premises=TYPES, cloud=TYPES, facts=FACTS,
                      assigned=SKUS, ours=SKUS, by_group=SKUS)
RULES = st.builds(Rules, disabled_accounts=st.booleans(), any_licence=st.booleans(),
                  max_per_day=st.integers(0, 5),
                  excluded=st.frozensets(st.sampled_from(["u1", "a@x.example", "o2"])))
SMALL = Facts(size_bytes=GB, archive=False, litigation_hold=False)
E3 = frozenset({"ENTERPRISEPACK"})


def _walk(m: Mailbox, rules: Rules) -> list[Next]:
    """Carry out the planner's actions on ``m`` as the step would, the sync included, until
    it stops, finishes or waits; every step's decision, in order."""
    steps: list[Next] = []
    settled = False
    for _ in range(10):
        n = next_action(m, rules, settled=settled)
        steps.append(n)
        if n.action is Action.CONVERT:
            m = Mailbox(**{**m.__dict__, "premises": "shared"})
        elif n.action is Action.WAIT_SYNC:
            m = Mailbox(**{**m.__dict__, "cloud": "shared"})
        elif n.action is Action.REMOVE:
            m = Mailbox(**{**m.__dict__, "assigned": m.assigned - frozenset(n.skus)})
            settled = True
        elif n.action is Action.KEEP:
            settled = True
        elif n.action is Action.LEAVE_GROUP:
            m = Mailbox(**{**m.__dict__, "in_group": False})
        else:
            break
    return steps


# -- one leaver: properties ----------------------------------------------------------------


@given(MAILBOXES, RULES, st.booleans())
def test_never_removes_a_licence_unless_shared_on_both_sides(m: Mailbox, rules: Rules,
                                                             settled: bool) -> None:
    """A licence is removed only from a mailbox both Exchange and the cloud show as shared
    (a user mailbox without a licence is deleted after 30 days)."""
    n = next_action(m, rules, settled=settled)
    if n.action is Action.REMOVE:
        assert ("shared", "shared") == (m.premises, m.cloud)
        assert n.skus
        assert set(n.skus) <= m.assigned


@given(MAILBOXES, RULES)
def test_the_order_never_puts_the_licence_before_the_conversion(m: Mailbox, rules: Rules) -> None:
    """Walking a leaver through: a conversion, when there is one, comes before any removal,
    and a removal before leaving the group."""
    actions = [n.action for n in _walk(m, rules)]
    if Action.REMOVE in actions and Action.CONVERT in actions:
        assert actions.index(Action.CONVERT) < actions.index(Action.REMOVE)
    if Action.REMOVE in actions and Action.LEAVE_GROUP in actions:
        assert actions.index(Action.REMOVE) < actions.index(Action.LEAVE_GROUP)
    assert actions.count(Action.REMOVE) <= 1


@given(MAILBOXES, RULES, st.booleans())
def test_never_touches_an_excluded_account(m: Mailbox, rules: Rules, settled: bool) -> None:
    """A break-glass or excluded account (by GUID, UPN or object id) is never changed."""
    n = next_action(m, rules, settled=settled)
    if is_excluded(rules, m.user, m.upn, m.object_id):
        assert Action.STOP == n.action


@given(MAILBOXES, RULES)
def test_only_licences_this_service_assigned(m: Mailbox, rules: Rules) -> None:
    """Without LEAVERS_ANY_LICENCE only the SKUs this service assigned are removed, never a
    group-inherited one, never when a fact is unknown or the mailbox needs a licence."""
    n = next_action(m, rules)
    if n.action is Action.REMOVE:
        if not rules.any_licence:
            assert set(n.skus) <= m.ours
        assert not set(n.skus) & m.by_group
        assert "" == needs_licence(m.facts)


@given(MAILBOXES, RULES)
def test_no_longer_leaving_is_never_changed(m: Mailbox, rules: Rules) -> None:
    """A user out of the group (and not a disabled leaver) is never converted nor stripped."""
    if not m.in_group and not (rules.disabled_accounts and not m.enabled):
        assert next_action(m, rules).action not in (Action.CONVERT, Action.REMOVE,
                                                     Action.LEAVE_GROUP, Action.WAIT_SYNC)


# -- one leaver: examples --------------------------------------------------------------------


def test_walk_of_a_leaver() -> None:
    """A member with a user mailbox and the E3 this service assigned: convert, wait for the
    sync, remove E3, leave the group, done."""
    m = Mailbox(user="u", premises="user", cloud="user", facts=SMALL, assigned=E3, ours=E3)
    assert [Next(Action.CONVERT), Next(Action.WAIT_SYNC, reason="the cloud mailbox is not "
                                       "shared yet"),
            Next(Action.REMOVE, ("ENTERPRISEPACK",)), Next(Action.LEAVE_GROUP),
            Next(Action.DONE)] == _walk(m, Rules())


def test_fifty_gb_is_free_above_is_kept() -> None:
    """Microsoft: a shared mailbox needs no licence up to 50 GB; 50 GB + 1 byte keeps it."""
    at = Facts(size_bytes=50 * 1024**3, archive=False, litigation_hold=False)
    over = Facts(size_bytes=50 * 1024**3 + 1, archive=False, litigation_hold=False)
    big = Facts(size_bytes=int(61.2 * 1024**3), archive=False, litigation_hold=False)
    assert "" == needs_licence(at)
    assert "size 50.0 GB > 50 GB" == needs_licence(over)
    assert "size 61.2 GB > 50 GB" == needs_licence(big)


def test_reasons_to_keep() -> None:
    """Each reason Microsoft gives, and each fact unknown, in the words of the digest."""
    assert "size unknown" == needs_licence(Facts(None, False, False))
    assert "archive unknown" == needs_licence(Facts(1, None, False))
    assert "archive" == needs_licence(Facts(1, True, False))
    assert "litigation hold unknown" == needs_licence(Facts(1, False, None))
    assert "litigation hold" == needs_licence(Facts(1, False, True))


def _shared(**kw: object) -> Mailbox:
    return Mailbox(**{"user": "u", "premises": "shared", "cloud": "shared", "facts": SMALL,
                      "assigned": E3, "ours": E3, **kw})  # type: ignore[arg-type]


def test_licence_decisions() -> None:
    """Kept when not ours, kept when group-inherited, removed with any-licence; nothing to
    remove leaves the group; out of the group with nothing to do is done."""
    rules = Rules()
    assert Next(Action.KEEP, ("ENTERPRISEPACK",), "licence not assigned by this service") == \
        next_action(_shared(ours=frozenset()), rules)
    assert Next(Action.REMOVE, ("ENTERPRISEPACK",)) == \
        next_action(_shared(ours=frozenset()), Rules(any_licence=True))
    assert Next(Action.KEEP, ("ENTERPRISEPACK",), "group-inherited") == \
        next_action(_shared(by_group=E3), rules)
    assert Next(Action.KEEP, ("ENTERPRISEPACK",), "archive") == \
        next_action(_shared(facts=Facts(1, True, False)), rules)
    assert Next(Action.LEAVE_GROUP) == next_action(_shared(assigned=frozenset()), rules)
    assert Next(Action.DONE) == next_action(_shared(assigned=frozenset(), in_group=False), rules)
    assert Next(Action.LEAVE_GROUP) == next_action(_shared(), rules, settled=True)
    assert Next(Action.DONE) == next_action(_shared(in_group=False), rules, settled=True)
    # kept, then out of the group (a crash after leaving): finishing is all that is left
    assert Next(Action.KEEP, ("ENTERPRISEPACK",), "archive") == \
        next_action(_shared(facts=Facts(1, True, False), in_group=False), rules)


def test_stops() -> None:
    """Excluded, no remote mailbox, out of the group before or after the conversion: stop."""
    gone = "no longer a leaver (out of the group, or enabled again)"
    assert Next(Action.STOP, reason="on the break-glass/exclusion list") == \
        next_action(_shared(upn="A@X.example"), Rules(excluded=frozenset({"a@x.example"})))
    assert Next(Action.STOP, reason="no remote mailbox on premises") == \
        next_action(_shared(premises="none"), Rules())
    assert Next(Action.STOP, reason=gone) == \
        next_action(_shared(premises="user", in_group=False), Rules())
    assert Next(Action.STOP, reason=gone) == \
        next_action(_shared(cloud="user", in_group=False), Rules())
    assert Next(Action.STOP, reason=gone) == next_action(_shared(in_group=False), Rules())
    # a disabled account is a leaver out of the group when configured, not otherwise
    disabled = _shared(premises="user", in_group=False, enabled=False)
    assert Next(Action.CONVERT) == next_action(disabled, Rules(disabled_accounts=True))
    assert Next(Action.STOP, reason=gone) == next_action(disabled, Rules())
    assert Next(Action.WAIT_SYNC, reason="the cloud mailbox is not shared yet") == \
        next_action(_shared(cloud="none"), Rules())


# -- the cycle -------------------------------------------------------------------------------


CANDIDATES = st.lists(st.builds(Candidate, user=st.sampled_from([f"g{n}" for n in range(8)]),
                                upn=st.sampled_from(["", "a@x.example"]),
                                in_group=st.booleans(), enabled=st.booleans(),
                                provisioned=st.booleans(), started=st.booleans()),
                      unique_by=lambda c: c.user)


@given(CANDIDATES, RULES, st.integers(0, 12), st.booleans())
def test_never_more_than_the_limit_without_an_approval(
        candidates: list[Candidate], rules: Rules, started: int, approve: bool) -> None:
    """Starts in the rolling 24 h never exceed LEAVERS_MAX_PER_DAY unless the plan holding
    them was approved; held users start only with the approval of exactly their plan."""
    first = cycle({}, candidates, NOW, rules, started=started)
    if first.held is None:
        assert started + len(first.start) <= rules.max_per_day or not first.start
        assert not first.start or started + len(first.start) <= rules.max_per_day
        return
    assert () == first.start
    assert first.held.count == len(first.held.users)
    again = cycle(first.seen, candidates, NOW, rules, started=started,
                  approved=frozenset({first.held.plan_id} if approve else {"leavers-other"}))
    assert (set(again.start) == set(first.held.users)) == approve
    assert (again.held is None) == approve


@given(CANDIDATES, RULES)
def test_cycle_never_starts_an_excluded_or_running_user(candidates: list[Candidate],
                                                         rules: Rules) -> None:
    """Excluded users and users whose leaver step already runs are never started."""
    plan = cycle({}, candidates, NOW, Rules(**{**rules.__dict__, "max_per_day": 100}))
    by_user = {c.user: c for c in candidates}
    for user in plan.start:
        c = by_user[user]
        assert not c.started
        assert not is_excluded(rules, c.user, c.upn)
        assert c.in_group or (rules.disabled_accounts and not c.enabled and c.provisioned)


@given(CANDIDATES, st.integers(1, 40))
def test_reenabled_users_are_never_started(candidates: list[Candidate], days: int) -> None:
    """A user seen disabled during the grace and enabled now is left alone, however long ago."""
    rules = Rules(disabled_accounts=True, max_per_day=100)
    seen = {c.user: Seen(NOW - dt.timedelta(days=days), was_disabled=True) for c in candidates}
    plan = cycle(seen, candidates, NOW, rules)
    by_user = {c.user: c for c in candidates}
    for user in plan.start:
        assert not by_user[user].enabled


def test_grace_and_memory() -> None:
    """The group's grace and the disabled grace count from the first cycle that saw the user;
    a user who leaves the candidates is forgotten; re-enabled in the group is left alone."""
    rules = Rules(group_grace=dt.timedelta(days=1), disabled_accounts=True,
                  disabled_grace=dt.timedelta(days=30), max_per_day=10)
    member = Candidate("m", "mname", in_group=True)
    disabled = Candidate("d", enabled=False, provisioned=True)
    foreign = Candidate("f", enabled=False, provisioned=False)
    first = cycle({}, [member, disabled, foreign], NOW, rules)
    assert {"m": Seen(NOW, False), "d": Seen(NOW, True)} == first.seen
    assert [Verdict.GRACE, Verdict.GRACE] == [d.verdict for d in first.decisions]
    assert "grace until 2026-12-07T10:00+00:00" == first.decisions[0].why
    later = NOW + dt.timedelta(days=1)
    second = cycle(first.seen, [member, disabled], later, rules)
    assert [("d", Verdict.GRACE), ("m", Verdict.START)] == \
        [(d.user, d.verdict) for d in second.decisions]
    almost = NOW + dt.timedelta(days=30) - dt.timedelta(seconds=1)
    assert (Verdict.GRACE,) == tuple(
        d.verdict for d in cycle(first.seen, [disabled], almost, rules).decisions)
    assert ("d",) == cycle(first.seen, [disabled], NOW + dt.timedelta(days=30), rules).start
    # re-enabled: in the group, seen disabled before, enabled now
    back = Candidate("m", in_group=True, enabled=True)
    plan = cycle({"m": Seen(NOW, True)}, [back], later, rules)
    assert (Verdict.REENABLED,) == tuple(d.verdict for d in plan.decisions)
    assert {"m": Seen(NOW, True)} == plan.seen
    assert {} == observe(first.seen, [Candidate("d", enabled=True, provisioned=True)], later,
                         rules)


def test_limit_and_plan() -> None:
    """Exactly LEAVERS_MAX_PER_DAY may start in 24 h; one more holds the whole lot as one
    plan with a stable id; started earlier and running users count as they should."""
    rules = Rules(max_per_day=3)
    three = [Candidate(f"g{n}", in_group=True) for n in range(3)]
    assert ("g0", "g1", "g2") == cycle({}, three, NOW, rules).start
    held = cycle({}, three, NOW, rules, started=1).held
    assert held is not None
    assert (plan_id(["g2", "g0", "g1"]), ("g0", "g1", "g2"), 3, 3) == \
        (held.plan_id, held.users, held.count, held.limit)
    assert held.plan_id.startswith("leavers-") and 20 == len(held.plan_id)
    running = [Candidate("r", in_group=True, started=True), *three[:2]]
    plan = cycle({}, running, NOW, rules, started=1)
    assert ("g0", "g1") == plan.start
    assert Verdict.RUNNING == plan.decisions[0].verdict
    excluded = cycle({}, three, NOW, Rules(max_per_day=3, excluded=frozenset({"g1"})))
    assert ("g0", "g2") == excluded.start
    assert "held as plan " + held.plan_id == cycle({}, three, NOW, rules, started=1
                                                    ).decisions[0].why


def test_rolling_window() -> None:
    """The window is the 24 hours before now: a start 24 h ago no longer counts."""
    starts = {"a": NOW - dt.timedelta(hours=24), "b": NOW - dt.timedelta(hours=23, minutes=59)}
    assert {"b": starts["b"]} == rolling(starts, NOW)


def test_every_decision_names_the_user_and_why() -> None:
    """Each verdict of a cycle, as ``plan`` prints it: the user's GUID, the name, the verdict
    and the reason; a candidate that is not leaving (disabled, not provisioned) is skipped
    without stopping the others."""
    rules = Rules(group_grace=dt.timedelta(days=1), disabled_accounts=True, max_per_day=1,
                  excluded=frozenset({"x@x.example"}))
    seen = {"back": Seen(NOW - dt.timedelta(days=2), True),
            "due1": Seen(NOW - dt.timedelta(days=2)), "due2": Seen(NOW - dt.timedelta(days=2))}
    found = [Candidate("foreign", "nf", enabled=False),
             Candidate("run", "nr", in_group=True, started=True),
             Candidate("ex", "nx", "x@x.example", in_group=True),
             Candidate("back", "nb", in_group=True, enabled=True),
             Candidate("new", "nn", in_group=True),
             Candidate("due1", "n1", in_group=True), Candidate("due2", "n2", in_group=True)]
    plan = cycle(seen, found, NOW, rules)
    pid = plan_id(["due1", "due2"])
    assert [("run", "nr", Verdict.RUNNING, ""),
            ("ex", "nx", Verdict.EXCLUDED, "on the break-glass/exclusion list"),
            ("back", "nb", Verdict.REENABLED, "re-enabled during the grace"),
            ("new", "nn", Verdict.GRACE, "grace until 2026-12-07T10:00+00:00"),
            ("due1", "n1", Verdict.HELD, f"held as plan {pid}"),
            ("due2", "n2", Verdict.HELD, f"held as plan {pid}")] == \
        [(d.user, d.name, d.verdict, d.why) for d in plan.decisions]
    approved = cycle(seen, found, NOW, rules, approved=frozenset({pid}))
    assert [("due1", "n1", Verdict.START, ""), ("due2", "n2", Verdict.START, "")] == \
        [(d.user, d.name, d.verdict, d.why) for d in approved.decisions[-2:]]
    assert ("due1", "due2") == approved.start


def test_plan_id_is_the_hash_of_the_sorted_users_one_a_line() -> None:
    """``leavers-`` and the first 12 hex digits of SHA-256 over the sorted GUIDs joined by
    newlines: the same lot gives the same id in any order."""
    import hashlib

    expected = "leavers-" + hashlib.sha256(b"a\nb").hexdigest()[:12]
    assert expected == plan_id(["b", "a"])


def test_the_values_the_flow_and_the_digest_read() -> None:
    """The verdicts and actions as ``plan`` prints them, the mailbox types as ``peers`` names
    them, and the defaults of the settings' rules (LEAVER_GRACE_DAYS 0,
    LEAVER_DISABLED_GRACE_DAYS 30, LEAVERS_MAX_PER_DAY 10, only our licences)."""
    from shared.leavers import planner

    assert ["start", "held", "grace", "running", "excluded", "re-enabled"] == \
        [v.value for v in Verdict]
    assert ["convert", "wait for the sync", "remove licences", "keep licences",
            "leave the group", "done", "stop"] == [a.value for a in Action]
    assert ("user", "shared", "none") == (planner.USER, planner.SHARED, planner.NONE)
    assert (dt.timedelta(0), False, dt.timedelta(days=30), 10, False, frozenset()) == \
        dataclass_values(Rules())
    assert ("u", "", "", False, True, False, False) == dataclass_values(Candidate("u"))
    assert (None, None, None) == dataclass_values(Facts())
    assert ("", "", "", True, False, "user", "user", Facts(), frozenset(), frozenset(),
            frozenset()) == dataclass_values(Mailbox())
    assert (Action.STOP, (), "") == dataclass_values(Next(Action.STOP))
    assert ("u", "n", Verdict.START, "") == dataclass_values(planner.Decision("u", "n",
                                                                             Verdict.START))
    assert None is planner.CyclePlan((), {}).held
    assert (dt.timedelta(hours=24), 1024**3, 50 * 1024**3) == \
        (planner.DAY, planner.GIB, planner.FREE_BYTES)
    assert Seen(NOW, False) == Seen(NOW)


def dataclass_values(value: object) -> tuple[object, ...]:
    import dataclasses

    return tuple(getattr(value, f.name) for f in dataclasses.fields(value))  # type: ignore[arg-type]
