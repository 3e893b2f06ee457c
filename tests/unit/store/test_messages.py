"""Queue messages: ids only, strict decoding."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from shared.store.messages import QUEUES, MalformedMessage, Step, WorkItem, decode, poison_queue


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
    import shared.store.messages as messages

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


NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
USER = uuid.UUID("6f1b3c1e-1a2b-4c3d-8e9f-0123456789ab")


def test_the_wire_format_is_compact_json_of_ids() -> None:
    """What a queue carries, byte for byte: compact JSON of the version, user, step,
    correlation id and enqueue time (and for a role change, role, direction and plan)."""
    licence = WorkItem(USER, Step.LICENSE, "cid-00000001", NOW)
    role = WorkItem(USER, Step.ROLE, "cid-00000001", NOW, role=ROLE, action="revoke",
                    plan="0123456789abcdef")
    assert [
        '{"v":1,"user":"6f1b3c1e-1a2b-4c3d-8e9f-0123456789ab","step":"license",'
        '"cid":"cid-00000001","at":"2026-11-30T12:00:00+00:00"}',
        '{"v":1,"user":"6f1b3c1e-1a2b-4c3d-8e9f-0123456789ab","step":"role",'
        '"cid":"cid-00000001","at":"2026-11-30T12:00:00+00:00",'
        '"role":"29232cdf-9323-42fd-ade2-1d097af3e4de","action":"revoke",'
        '"plan":"0123456789abcdef"}',
    ] == [licence.encode(), role.encode()]
    assert role == decode(role.encode(), now=NOW)


def test_a_message_as_bytes_is_read_as_utf8_and_bad_bytes_are_malformed() -> None:
    """The Functions host may hand over bytes: UTF-8 is read as text; bytes that are not UTF-8
    are a malformed message, never an exception of another kind."""
    item = WorkItem(USER, Step.MAILBOX, "cid-00000001", NOW)
    with pytest.raises(MalformedMessage) as caught:
        decode(b"\xff\xfe{}", now=NOW)
    assert (item, "message is not JSON") == (decode(item.encode().encode(), now=NOW),
                                             caught.value.reason)


def test_the_size_limit_counts_bytes_and_allows_exactly_the_limit() -> None:
    """A message of exactly MAX_MESSAGE_BYTES bytes is read (JSON may carry spaces); one byte
    more is oversized, counted in UTF-8 bytes, the reason giving its length in characters."""
    item = WorkItem(USER, Step.MAILBOX, "cid-00000001", NOW)
    padded = item.encode()[:-1] + " " * (1024 - len(item.encode())) + "}"
    wide = '"' + "é" * 511 + '"'  # 513 characters, 1024 bytes
    with pytest.raises(MalformedMessage) as caught:
        decode(wide + " ", now=NOW)
    assert (1024, item) == (len(padded.encode()), decode(padded, now=NOW))
    assert "message of 514 characters is oversized" == caught.value.reason


@pytest.mark.parametrize(("raw", "reason"), [
    ("[" * 500 + "]" * 500, "message is not a JSON object"),
    (_body(at="2026-11-30T12:00:00"), "enqueue time has no time zone"),
    (_body(cid=12345678), "message has a bad field: int where a string belongs"),
    (_body(step="role", role=ROLE, action="grant", plan="x"),
     "role message needs grant/revoke and the plan's id"),
    (_body(cid="short"), "correlation id is not 8 to 64 letters, digits or dashes"),
])
def test_each_refusal_says_exactly_why(raw: str, reason: str) -> None:
    """The reason recorded with a poisoned message is the decoder's own sentence."""
    with pytest.raises(MalformedMessage) as caught:
        decode(raw, now=NOW)
    assert reason == caught.value.reason


def test_deep_nesting_is_refused_saying_so() -> None:
    """The reason for a message nested past the parser's limit says so."""
    import shared.store.messages as messages

    deep = "[" * 100_000 + "]" * 100_000
    limit, messages.MAX_MESSAGE_BYTES = messages.MAX_MESSAGE_BYTES, len(deep) + 1
    try:
        with pytest.raises(MalformedMessage) as caught:
            decode(deep)
    finally:
        messages.MAX_MESSAGE_BYTES = limit
    assert "message is nested too deeply" == caught.value.reason


def test_a_malformed_message_is_a_decode_failure_with_nothing_to_redo() -> None:
    """A malformed message fails the decode step, keeps the first 200 characters of what was
    sent for the record, and says there is nothing to redo."""
    with pytest.raises(MalformedMessage) as caught:
        decode("x" * 300, now=NOW)
    error = caught.value
    assert ("decode", "x" * 200, "nothing to redo: the message was moved to the poison queue; "
            "the reconcile timer re-enqueues the user if they are still in a provisioning "
            "group") == (error.step, error.raw, error.fix)


def test_the_future_bound_is_exactly_the_tolerated_skew() -> None:
    """A message dated exactly MAX_FUTURE (15 min) ahead is read; a microsecond more is not."""
    edge = WorkItem(USER, Step.LICENSE, "cid-00000001", NOW + dt.timedelta(minutes=15))
    late = WorkItem(USER, Step.LICENSE, "cid-00000001",
                    NOW + dt.timedelta(minutes=15, microseconds=1))
    with pytest.raises(MalformedMessage):
        decode(late.encode(), now=NOW)
    assert edge == decode(edge.encode(), now=NOW)


def test_a_revocation_message_is_ours() -> None:
    """A role message may revoke as well as grant."""
    item = WorkItem(USER, Step.ROLE, "cid-00000001", NOW, role=ROLE, action="revoke",
                    plan="0123456789abcdef")
    assert item == decode(item.encode(), now=NOW)


def test_a_retry_keeps_the_whole_work_and_is_always_newer() -> None:
    """A retry carries the role, direction and plan of a role change, and is dated at the
    retry's time, or one microsecond after the message it replaces when the clock says
    earlier (so it always supersedes it)."""
    item = WorkItem(USER, Step.ROLE, "cid-00000001", NOW, role=ROLE, action="grant",
                    plan="0123456789abcdef")
    later, skewed = item.again(NOW + dt.timedelta(seconds=30)), item.again(NOW - dt.timedelta(1))
    assert (ROLE, "grant", "0123456789abcdef") == (later.role, later.action, later.plan)
    assert (NOW + dt.timedelta(seconds=30), NOW + dt.timedelta(microseconds=1)) == (
        later.enqueued_at, skewed.enqueued_at)


def test_each_step_has_its_queue_and_a_poison_twin() -> None:
    """The queues function_app.py and infra/ bind: 'mailbox', 'license', 'roles' and 'leavers'
    (the role and leaver steps' queues are plural), each with '<queue>-poison' beside it."""
    steps = (Step.MAILBOX, Step.LICENSE, Step.ROLE, Step.LEAVER)
    assert ({Step.MAILBOX: "mailbox", Step.LICENSE: "license", Step.ROLE: "roles",
             Step.LEAVER: "leavers"},
            ["mailbox-poison", "license-poison", "roles-poison", "leavers-poison"]) == (
        QUEUES, [poison_queue(QUEUES[step]) for step in steps])
