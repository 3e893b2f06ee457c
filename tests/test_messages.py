"""Queue messages: ids only, strict decoding."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from shared.messages import MalformedMessage, Step, WorkItem, decode


def test_round_trip_keeps_every_field() -> None:
    """What encode writes, decode reads back unchanged."""
    item = WorkItem(user=uuid.uuid4(), step=Step.LICENSE)
    assert decode(item.encode()) == item


def test_message_holds_ids_and_nothing_else() -> None:
    """A message names the user and step; no attribute, address or secret travels in it."""
    body = json.loads(WorkItem(user=uuid.uuid4(), step=Step.MAILBOX).encode())
    assert set(body) == {"v", "user", "step", "cid", "at"}


ROLE = "29232cdf-9323-42fd-ade2-1d097af3e4de"


def test_role_change_names_role_direction_and_plan() -> None:
    """A role message carries the role, grant or revoke, and the id of the plan holding it."""
    item = WorkItem(user=uuid.uuid4(), step=Step.ROLE, role=ROLE, action="grant",
                    plan="0123456789abcdef")
    assert decode(item.encode()) == item


def test_a_grant_and_a_revocation_are_tracked_apart() -> None:
    """The ledger key holds the direction: a grant's message can never make a revocation of
    the same role look stale."""
    user = uuid.uuid4()
    grant = WorkItem(user=user, step=Step.ROLE, role=ROLE, action="grant", plan="p-12345678")
    revoke = WorkItem(user=user, step=Step.ROLE, role=ROLE, action="revoke", plan="p-12345678")
    assert (f"role:{ROLE}:grant", f"role:{ROLE}:revoke") == (grant.key, revoke.key)


def _body(**fields: object) -> str:
    base: dict[str, object] = {"v": 1, "user": str(uuid.UUID(int=1)), "step": "mailbox",
                               "cid": "12345678", "at": "2026-01-01T00:00:00+00:00"}
    return json.dumps({**base, **fields})


@pytest.mark.parametrize(("raw", "reason"), [
    ("[" * 500 + "]" * 500, "not a JSON object"),
    (_body(v=True), "unknown schema version True"),
    (_body(v=1.0), "unknown schema version 1.0"),
    (_body(v="1"), "unknown schema version '1'"),
    (_body(cid="short"), "correlation id is not 8 to 64"),
    (_body(cid="has spaces in it"), "correlation id is not 8 to 64"),
    (_body(cid="x" * 65), "correlation id is not 8 to 64"),
    (_body(cid=12345678), "bad field"),
    (_body(user=["a"]), "bad field"),
    (_body(step="role", role="not-a-guid", action="grant", plan="p-12345678"), "bad field"),
    (_body(step="role", role=ROLE, action="grant", plan="x"), "the plan's id"),
    (_body(step="role", role=ROLE, action="grant", plan=None), "the plan's id"),
    (_body(at="2026-11-30T12:16:00+00:00"), "is in the future"),
])
def test_a_message_is_not_trusted_for_who_what_or_when(raw: str, reason: str) -> None:
    """A version that only equals 1 (True, 1.0, "1"), a correlation id of other characters
    or length, a role that is not a GUID, a role message without its plan, and an enqueue time
    further ahead than the skew we tolerate (15 min) are all refused."""
    with pytest.raises(MalformedMessage) as caught:
        decode(raw, now=dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC))
    assert reason in str(caught.value)


def test_deep_nesting_is_refused_not_crashed() -> None:
    """Nesting deep enough to exhaust the parser is a malformed message, not a RecursionError
    (decoding with the size cap lifted shows the parser's own limit is met)."""
    import shared.messages as messages

    deep = "[" * 100_000 + "]" * 100_000
    limit = messages.MAX_MESSAGE_BYTES
    messages.MAX_MESSAGE_BYTES = len(deep) + 1
    try:
        with pytest.raises(MalformedMessage, match="nested too deeply"):
            decode(deep)
    finally:
        messages.MAX_MESSAGE_BYTES = limit


def test_a_clock_ten_minutes_behind_still_reads_a_fresh_message() -> None:
    """The fault suite skews a worker by 10 minutes: its messages are still ours."""
    sent = WorkItem(user=uuid.uuid4(), step=Step.LICENSE,
                    enqueued_at=dt.datetime(2026, 11, 30, 12, 10, tzinfo=dt.UTC))
    assert sent == decode(sent.encode(), now=dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"v": 2, "user": "x", "step": "mailbox", "cid": "c", "at": "t"}', "schema version 2"),
        ('{"v": 1, "user": "x", "step": "mailbox", "cid": "12345678", "at": "t"}', "bad field"),
        ('{"v": 1, "step": "mailbox"}', "fields"),
        ('{"v": 1, "user": "' + str(uuid.UUID(int=1)) + '", "step": "shutdown", '
         '"cid": "12345678", "at": "2026-01-01T00:00:00+00:00"}', "bad field"),
        ("x" * 5000, "oversized"),
        (
            json.dumps({"v": 1, "user": str(uuid.UUID(int=1)), "step": "mailbox",
                        "cid": "12345678", "at": "2026-01-01T00:00:00+00:00", "extra": "x"}),
            "fields",
        ),
        (
            json.dumps({"v": 1, "user": str(uuid.UUID(int=1)), "step": "role",
                        "cid": "12345678", "at": "2026-01-01T00:00:00+00:00",
                        "role": ROLE, "action": "delete-everything", "plan": "p-12345678"}),
            "grant/revoke",
        ),
    ],
)
def test_anything_else_is_malformed(raw: str, reason: str) -> None:
    """Malformed, oversized, unknown-version and unexpected messages are refused, with a reason."""
    with pytest.raises(MalformedMessage) as caught:
        decode(raw)
    assert reason in str(caught.value)
    assert len(caught.value.raw) <= 200
