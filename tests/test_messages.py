"""Queue messages: ids only, strict decoding."""

from __future__ import annotations

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


def test_role_change_names_role_and_direction() -> None:
    item = WorkItem(user=uuid.uuid4(), step=Step.ROLE, role="729827e3", action="grant")
    assert decode(item.encode()) == item


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
                        "role": "r", "action": "delete-everything"}),
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
