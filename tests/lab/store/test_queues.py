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
from shared.config import Settings
from shared.flow.worker import run_once
from shared.store.queues import (
    MAX_RAW_CHARS,
    Undecodable,
    decode_body,
    encode_body,
    excerpt,
    raw_text,
)


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


def test_the_largest_stored_message_is_still_decoded() -> None:
    """A stored message of exactly MAX_RAW_CHARS characters is decoded, not refused as
    oversized (the limit is the last size allowed)."""
    assert "ABC" * (MAX_RAW_CHARS // 4) == decode_body("QUJD" * (MAX_RAW_CHARS // 4))


@pytest.mark.parametrize("raw", ["QUJD!RUY=", "QU*JD", "QUJD\nRUZH"])
def test_base64_with_foreign_characters_is_not_ours(raw: str) -> None:
    """Base64 is read strictly: a character outside its alphabet (which a lenient decoder would
    skip) makes the message undecodable."""
    assert Undecodable("not base64") == decode_body(raw)


def test_an_excerpt_shows_the_text_underneath_when_there_is_one() -> None:
    """What the poison record and alert show of an undecodable message: the text underneath
    when it is base64 of something (an oversized message of ours), with bad UTF-8 replaced, at
    most ``limit`` characters; else what was stored, bytes read as UTF-8."""
    oversized = encode_body("é" * 2000)
    assert ["é" * 1024, "é" * 10, "\ufffdx", "not base64 ?!", "raw \ufffd"] == [
        excerpt(oversized), excerpt(oversized, limit=10),
        excerpt(base64.b64encode(b"\xffx").decode()), excerpt("not base64 ?!"),
        excerpt(b"raw \xff"),
    ]
    assert "QU JD!" == excerpt("QU JD!")  # strict: a lenient decoder would show "ABC"


def test_raw_text_is_the_stored_content_as_text() -> None:
    """A message's content as stored: text as it is, bytes as UTF-8 with bad bytes replaced."""
    assert ["text", "café \ufffd"] == [raw_text("text"), raw_text("café ".encode() + b"\xff")]


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


@pytest.mark.lab
def test_run_once_works_the_queues_when_the_dc_is_down(lab: Lab,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """With the DC unreachable the leavers cycle, the poll and reconcile fail: each is logged
    as ``timer_failed`` and counted (the role cycle stops itself, its inputs unreadable), and
    the run still works the queues, as the function app's separate functions do: a bad
    message is parked and recorded."""
    from structlog.testing import capture_logs

    from shared.config import load_settings

    monkeypatch.setenv("AD_TRANSPORT", "direct")
    monkeypatch.setenv("AD_URL", "ldaps://127.0.0.1:9")  # the discard port: nothing listens
    service = flow.Service.build(load_settings(lab.settings_file))
    body = f"not base64 {uuid.uuid4().hex}"
    try:
        service.queues.send_raw("mailbox", body)
        with capture_logs() as logs:
            summary = asyncio.run(run_once(service, limit=120))
        parked = [r for r in service.outcomes.since("poison", "") if r.get("message") == body]
    finally:
        service.close()
    failed = sorted(e["timer"] for e in logs if e["event"] == "timer_failed")
    stopped = [e["event"] for e in logs if e["event"].startswith("role_cycle")]
    assert (["leavers", "poll", "reconcile"], 3, True, ["not base64"],
            ["role_cycle_stopped"]) == (
        failed, summary.outcomes["timer-failed"], summary.drained,
        [r["reason"] for r in parked], stopped)
