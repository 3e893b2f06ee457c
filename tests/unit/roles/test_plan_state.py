"""The plan store's decisions without a table (``shared.roles.planstate``, issue 28): a held
plan's life (supersede, approval, expiry), the rows it writes, the rolling window of grants
and revocations, and the latest decision per role and principal."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator

import pytest

from shared.roles.model import Action, Decision, Hold, RoleChange
from shared.roles.planstate import (
    HeldPlan,
    approval_refusal,
    decision_from_row,
    decision_row,
    held_already,
    held_row,
    latest,
    pair,
    release_verdict,
    released_horizon,
    split_window,
    stamp,
    superseded,
    window,
    window_row,
)

ROLE = "FE930BE7-5E62-47DB-91AF-98C3A49A38B1"
USER = "3C1B2A4D-0E5F-4A6B-8C7D-9E0F1A2B3C4D"
NOW = dt.datetime(2026, 12, 6, 8, 30, 15, 987654, tzinfo=dt.UTC)
HOURS_24 = dt.timedelta(hours=24)


def plan(status: str, approved: str = "", created: str = "2026-12-06T08:00:00+00:00",
         pid: str = "p1") -> HeldPlan:
    return HeldPlan(pid, status, 1, 0, "r", created, approved)


def test_a_stamp_is_utc_to_the_second() -> None:
    """Times are stored in UTC without their fraction of a second, whatever the zone."""
    cet = dt.timezone(dt.timedelta(hours=1))
    assert ("2026-12-06T08:30:15+00:00", "2026-12-06T07:30:15+00:00") == (
        stamp(NOW), stamp(dt.datetime(2026, 12, 6, 8, 30, 15, 5, tzinfo=cet)))


@pytest.fixture
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The host's local time zone is Europe/Berlin (UTC+1 in December) for one test."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("berlin")
def test_a_stamp_is_utc_whatever_the_host_s_zone() -> None:
    """A host in Berlin stamps 08:30:15 UTC as 08:30:15+00:00, not in its local time."""
    assert "2026-12-06T08:30:15+00:00" == stamp(NOW)


def test_a_row_read_back_gives_every_field() -> None:
    """from_row reads each column, the changes as a JSON list."""
    row = {"RowKey": "abc", "status": "approved", "revocations": 3, "grants": "2",
           "reason": "over the limit", "created": "c", "approved": "a",
           "changes": json.dumps(["revoke 'X' from u"])}
    assert HeldPlan("abc", "approved", 3, 2, "over the limit", "c", "a",
                    ("revoke 'X' from u",)) == HeldPlan.from_row(row)


def test_a_row_with_missing_columns_reads_as_empty() -> None:
    """A row with only its key (or empty values) reads as no status, no counts, no changes."""
    expected = HeldPlan("abc", "", 0, 0, "", "", "", ())
    assert [expected, expected] == [
        HeldPlan.from_row({"RowKey": "abc"}),
        HeldPlan.from_row({"RowKey": "abc", "status": "", "revocations": None, "grants": "",
                           "reason": "", "created": "", "approved": None, "changes": ""})]


def test_a_plan_held_without_approval_has_empty_defaults() -> None:
    """approved and changes default to empty."""
    held = HeldPlan("p", "held", 0, 0, "", "")
    assert ("", ()) == (held.approved, held.changes)


def test_holding_a_set_supersedes_every_other_live_plan() -> None:
    """Every live plan but the one being held is superseded, in the order given."""
    assert ["a", "c"] == superseded(["a", "p", "c"], "p")


def test_only_a_held_or_approved_set_is_held_already() -> None:
    """held and approved are live; applied, superseded, expired and unknown are held afresh."""
    assert [True, True, False, False, False, False] == [
        held_already(plan(s)) for s in ("held", "approved", "applied", "superseded",
                                         "expired")] + [held_already(None)]


def test_the_row_of_a_held_set_counts_its_changes_and_bounds_its_text() -> None:
    """A held set's row: held, not approved, its revocations and grants counted, the reason cut
    at 4000 characters and the changes' JSON at 30000, created now (to the second)."""
    changes = (RoleChange(Action.REVOKE, ROLE, USER, role_name="X" * 40000),
               RoleChange(Action.GRANT, ROLE, "a"), RoleChange(Action.REVOKE, ROLE, "b"))
    held = Hold(changes, ("r" * 5000,))
    row = held_row(held, NOW)
    text = json.dumps([c.describe() for c in changes])
    assert ({"PartitionKey": "plan", "RowKey": held.plan_id, "status": "held", "approved": "",
             "revocations": 2, "grants": 1,
             "reason": (f"plan {held.plan_id} holds 3 change(s): " + "r" * 5000)[:4000],
             "created": "2026-12-06T08:30:15+00:00"}, text[:30000], 30000) == (
        {k: v for k, v in row.items() if k != "changes"}, row["changes"], len(str(row["changes"])))


def test_a_short_held_set_is_kept_whole() -> None:
    """Below the bounds, the held set's reason and changes are stored as they are."""
    held = Hold((RoleChange(Action.GRANT, ROLE, USER, user="anna@contoso.com",
                            role_name="Global Reader"),), ("one grant over the limit",))
    row = held_row(held, NOW)
    assert (f"plan {held.plan_id} holds 1 change(s): one grant over the limit",
            '["grant \'Global Reader\' to anna@contoso.com"]', 0,
            1) == (row["reason"], row["changes"], row["revocations"], row["grants"])


def test_only_a_held_or_approved_plan_can_be_approved() -> None:
    """Approving a held or approved plan is allowed; an unknown or past plan is refused with
    its state named."""
    assert [None, None, "role plan p1 is unknown; only the plan held now can be approved",
            "role plan p1 is superseded; only the plan held now can be approved",
            "role plan p1 is applied; only the plan held now can be approved"] == [
        approval_refusal("p1", plan("held")), approval_refusal("p1", plan("approved")),
        approval_refusal("p1", None), approval_refusal("p1", plan("superseded")),
        approval_refusal("p1", plan("applied"))]


def test_an_approval_releases_its_plan_for_24_hours_then_expires() -> None:
    """Approved (or applied, planned again) within the time to live: released; exactly at it
    still released; a second later expired."""
    approved = "2026-12-05T08:30:15+00:00"
    at_ttl = dt.datetime(2026, 12, 6, 8, 30, 15, tzinfo=dt.UTC)
    assert ["released", "released", "released", "expired"] == [
        release_verdict(plan("approved", approved), HOURS_24, at_ttl - dt.timedelta(hours=1)),
        release_verdict(plan("applied", approved), HOURS_24, at_ttl - dt.timedelta(hours=1)),
        release_verdict(plan("approved", approved), HOURS_24, at_ttl),
        release_verdict(plan("approved", approved), HOURS_24,
                        at_ttl + dt.timedelta(seconds=1))]


@pytest.mark.parametrize("status", ["held", "superseded", "expired", ""])
def test_a_plan_not_approved_is_never_released(status: str) -> None:
    """Only an approved or applied plan is released; held, superseded and expired ones, and
    an unknown one, are refused however recent."""
    assert ("refused", "refused") == (
        release_verdict(plan(status, "2026-12-06T08:30:00+00:00"), HOURS_24, NOW),
        release_verdict(None, HOURS_24, NOW))


def test_the_latest_plan_is_the_one_created_last() -> None:
    """The plan created last wins, whatever the order read; no plan: none."""
    older, newer = (plan("held", created="2026-12-05T08:00:00+00:00", pid="a"),
                    plan("approved", created="2026-12-06T08:00:00+00:00", pid="b"))
    assert (newer, newer, None) == (latest([older, newer]), latest([newer, older]), latest([]))


def test_revocations_and_grants_count_in_windows_of_their_own() -> None:
    """A revocation counts in 'revoked', a grant in 'granted', keyed by the change's key."""
    revoke, grant = RoleChange(Action.REVOKE, ROLE, USER), RoleChange(Action.GRANT, ROLE, USER)
    assert (("revoked", "granted"),
            {"PartitionKey": "revoked", "RowKey": f"revoke:{ROLE.lower()}:{USER.lower()}",
             "at": "2026-12-06T08:30:15+00:00"}) == (
        (window(revoke), window(grant)), window_row(revoke, NOW))


def test_the_window_keeps_rows_since_its_start_and_drops_older_ones() -> None:
    """A row stamped at or after ``since`` is in the window; an older one, or one without a
    time, is dropped."""
    since = dt.datetime(2026, 12, 5, 8, 30, 15, tzinfo=dt.UTC)
    rows = [{"RowKey": "in", "at": "2026-12-06T00:00:00+00:00"},
            {"RowKey": "edge", "at": "2026-12-05T08:30:15+00:00"},
            {"RowKey": "old", "at": "2026-12-05T08:30:14+00:00"},
            {"RowKey": "none"}]
    assert (frozenset({"in", "edge"}), ["old", "none"]) == split_window(rows, since)


def test_a_pair_s_key_ignores_the_case_of_its_ids() -> None:
    """role:principal in lower case: Graph writes ids in lower case and AD reads may not."""
    assert f"{ROLE.lower()}:{USER.lower()}" == pair(ROLE, USER)


def test_a_released_change_becomes_its_pair_s_decision() -> None:
    """The decision row names the pair, the action and the plan that released it, and reads
    back as that decision."""
    row = decision_row("p9", RoleChange(Action.REVOKE, ROLE, USER), NOW)
    assert ({"PartitionKey": "decision", "RowKey": f"{ROLE.lower()}:{USER.lower()}",
             "action": "revoke", "plan": "p9", "at": "2026-12-06T08:30:15+00:00"},
            Decision(Action.REVOKE, "p9")) == (row, decision_from_row(row))


def test_rows_of_the_former_released_partition_live_8_days() -> None:
    """Rows stamped more than 8 days before the release are dropped."""
    assert "2026-11-28T08:30:15+00:00" == released_horizon(NOW)
