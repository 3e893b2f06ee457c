"""The queue transport: what is stored is base64 of UTF-8 text, and whatever else someone
writes to a queue (not base64, not UTF-8, too large) is parked on the poison queue with an
alert while every other message is handled: under ``run --once`` and through the function
app's own queue function."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import importlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import azure.functions as func
import pytest

from lab.core import Lab
from lab.seed import seed
from shared import flow
from shared.cli import run_once
from shared.config import Settings
from shared.queues import MAX_RAW_CHARS, Undecodable, decode_body, encode_body


def test_encode_then_decode_gives_the_text_back() -> None:
    """Our own messages round-trip, accents included."""
    text = '{"v":1,"name":"Zoë"}'
    assert text == decode_body(encode_body(text))
    assert text == decode_body(encode_body(text).encode("ascii"))


@pytest.mark.parametrize(("raw", "reason"), [
    ("not json", "not base64"),
    (b"\xff\xfe", "not base64: the message holds non-ASCII bytes"),
    (base64.b64encode(b"\xff\xfe\xfd").decode(), "not UTF-8 text once base64-decoded"),
    ("QUJD" * (MAX_RAW_CHARS // 4 + 1),
     f"oversized: {MAX_RAW_CHARS + 4} characters on the queue, {MAX_RAW_CHARS} at most"),
])
def test_what_is_not_our_transport_is_undecodable_with_a_reason(raw: str | bytes,
                                                                reason: str) -> None:
    """Not base64, not UTF-8 underneath, or larger than any message of ours: a reason, never
    an exception."""
    assert Undecodable(reason) == decode_body(raw)


# -- against the lab -------------------------------------------------------------------------


@pytest.fixture
def svc(settings: Settings) -> Iterator[flow.Service]:
    service = flow.Service.build(settings)
    yield service
    service.close()


def _alerts(lab: Lab, since: float) -> list[str]:
    subjects = []
    for path in Path(lab.settings["LAB_MAIL_DIR"]).glob("*.eml"):
        if path.stat().st_mtime >= since:
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            subjects.append(str(message["Subject"]))
    return [s for s in subjects if "could not be processed" in s]


@pytest.mark.lab
def test_an_undecodable_message_does_not_stop_run_once(lab: Lab, svc: flow.Service,
                                                       settings: Settings) -> None:
    """``not json`` written raw to the mailbox queue ahead of real work: the run drains, the
    seeded users are mail-enabled, the bad message is on record as not base64 with one alert,
    and no queue keeps it."""
    started = time.time()
    svc.queues.send_raw("mailbox", "not json")
    sams = seed(lab, 2)
    summary = asyncio.run(run_once(svc, limit=240))
    assert summary.drained, summary
    directory = svc.directory()
    assert [1, 1] == [directory.user_by_sam(sam).remote_recipient_type for sam in sams]
    parked = [r for r in svc.outcomes.since("poison", "") if r.get("message") == "not json"]
    assert ["not base64"] == [r["reason"] for r in parked]
    assert 1 == len(_alerts(lab, started))
    assert (0, 0) == (svc.queues.depth("mailbox"), svc.queues.depth("mailbox-poison"))


@pytest.mark.lab
def test_the_function_app_parks_an_undecodable_message(lab: Lab, settings: Settings,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's queue function, given a body that is not base64 as the host delivers it with
    ``messageEncoding: none``, parks it on the poison queue unchanged and returns; the poison
    function then records it with the transport's reason."""
    import function_app

    for key, value in lab.settings.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(importlib.import_module("shared.flow.service"), "_service", None)
    body = f"not base64 {uuid.uuid4().hex}"
    asyncio.run(function_app.license(func.QueueMessage(body=body.encode())))
    svc = flow.service()
    try:
        parked = [m for m in svc.queues.receive("license-poison", limit=32, visibility=30)
                  if m.raw == body]
        assert 1 == len(parked)
        asyncio.run(function_app.license_poison(func.QueueMessage(body=parked[0].raw.encode())))
        svc.queues.delete(parked[0])
        rows = [r for r in svc.outcomes.since("poison", "") if r.get("message") == body]
        assert [("license", "not base64")] == [(r["queue"], r["reason"]) for r in rows]
    finally:
        svc.close()
