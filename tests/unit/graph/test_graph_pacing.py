"""The Graph client's pacing, retries and error classification, through its real pipeline
(kiota's request adapter, the pacing middleware, httpx) with ``httpx.MockTransport`` in place
of the network: no peer, milliseconds per test."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from shared.config import GraphSettings, IdentitySettings
from shared.errors import PermanentError, TransientError
from shared.graph.client import GraphClient, GraphRefusal, classify
from shared.graph.pacing import MAX_ATTEMPTS, retry_after

URL = "https://graph.test/v1.0"
TOKEN = "unit-test-token"

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """The mock transport's side: every request seen, with the time it arrived."""

    def __init__(self, answer: Callable[[httpx.Request, int], httpx.Response]) -> None:
        self.answer = answer
        self.seen: list[tuple[float, str, str, str]] = []
        self.start = time.monotonic()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((time.monotonic() - self.start, request.method, request.url.path,
                          request.headers.get("Authorization", "")))
        return self.answer(request, len(self.seen))


def client(recorder: Recorder, **graph: Any) -> GraphClient:
    settings = GraphSettings(_env_file=None, url=URL, **graph)  # type: ignore[call-arg]
    identity = IdentitySettings(_env_file=None, credential="static",  # type: ignore[call-arg]
                                static_token=SecretStr(TOKEN))
    return GraphClient(settings, identity, transport=httpx.MockTransport(recorder))


def run(recorder: Recorder, work: Callable[[GraphClient], Any], **graph: Any) -> Any:
    async def go() -> Any:
        graph_client = client(recorder, **graph)
        try:
            return await work(graph_client)
        finally:
            await graph_client.close()

    return asyncio.run(go())


def ok(request: httpx.Request, n: int) -> httpx.Response:
    return httpx.Response(204 if request.method == "PATCH" else 200, json={"value": []})


@pytest.mark.slow  # real time: tests/test_graph_pacing_unit.py steps a clock instead
def test_writes_wait_for_the_write_budget_reads_do_not() -> None:
    """With a budget of 2 writes a second, four PATCHes take a second: the client waits for
    tokens instead of bouncing off 429s; reads spend no token."""
    recorder = Recorder(ok)

    async def work(graph: GraphClient) -> tuple[int, int]:
        for _ in range(4):
            await graph.set_usage_location("u1", "DE")
        await graph.license_details("u1")
        return graph.counters.writes, graph.counters.requests

    counts = run(recorder, work, writes_per_window=2, write_window_seconds=1.0)
    patches = [t for t, method, _, _ in recorder.seen if method == "PATCH"]
    assert (4, 5) == counts
    assert patches[3] >= 0.9
    assert {f"Bearer {TOKEN}"} == {auth for *_, auth in recorder.seen}


@pytest.mark.slow  # real time: tests/test_graph_pacing_unit.py steps a clock instead
def test_429_waits_retry_after_and_closes_the_gate_for_every_request() -> None:
    """A 429 with Retry-After: 0.4 is retried after 0.4 s, and a read started meanwhile waits
    for the gate too, since Graph's budget is the client's, not the request's."""
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        if n == 1:
            return httpx.Response(429, headers={"Retry-After": "0.4"},
                                  json={"error": {"code": "TooManyRequests", "message": "slow"}})
        return ok(request, n)

    recorder = Recorder(answer)

    async def work(graph: GraphClient) -> int:
        async def later_read() -> None:
            await asyncio.sleep(0.1)
            await graph.license_details("u2")

        await asyncio.gather(graph.set_usage_location("u1", "DE"), later_read())
        return graph.counters.throttled

    throttled = run(recorder, work)
    arrivals = {path: t for t, _, path, _ in recorder.seen[1:]}
    assert 1 == throttled
    assert 3 == len(recorder.seen)
    assert min(arrivals.values()) >= 0.38


@pytest.mark.slow  # real time: tests/test_graph_pacing_unit.py steps a clock instead
def test_dropped_read_is_retried_dropped_write_is_not() -> None:
    """A connection dropped mid-request is retried for a read; a write whose answer was lost
    is not sent again (it may have been carried out): it is a TransientError for the step."""
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        if (request.url.path.endswith("licenseDetails") and n == 1) or request.method == "POST":
            raise httpx.ReadError("connection reset", request=request)
        return ok(request, n)

    recorder = Recorder(answer)
    assert [] == run(recorder, lambda g: g.license_details("u1"))
    with pytest.raises(TransientError) as caught:
        run(recorder, lambda g: g.assign_license("u1", add=[], remove=[]))
    posts = [method for _, method, _, _ in recorder.seen if method == "POST"]
    assert (["POST"], 30) == (posts, caught.value.retry_after)


def test_graph_refusals_and_throttling_are_classified_in_one_place() -> None:
    """403 is a GraphRefusal (a PermanentError) with Graph's code and a permissions fix; a 404
    user is None; a gateway's HTML 503 (no Graph error body), retried to the last attempt, is
    transient with the server's Retry-After."""
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        if "denied" in request.url.path:
            return httpx.Response(403, json={"error": {
                "code": "Authorization_RequestDenied", "message": "Insufficient privileges."}})
        if "gone" in request.url.path:
            return httpx.Response(404, json={"error": {
                "code": "Request_ResourceNotFound", "message": "Resource 'x' does not exist."}})
        return httpx.Response(503, text="<html>unavailable</html>",
                              headers={"Retry-After": "0", "Content-Type": "text/html"})

    with pytest.raises(GraphRefusal) as refused:
        run(Recorder(answer), lambda g: g.user("denied@contoso.example"))
    gone = run(Recorder(answer), lambda g: g.user("gone@contoso.example"))
    gateway = Recorder(answer)
    with pytest.raises(TransientError) as busy:
        run(gateway, lambda g: g.subscribed_skus())
    assert isinstance(refused.value, PermanentError)
    assert (403, "Authorization_RequestDenied") == (refused.value.status, refused.value.code)
    assert "docs/permissions.md" in refused.value.fix
    assert gone is None
    assert (MAX_ATTEMPTS, 0.0) == (len(gateway.seen), busy.value.retry_after)
    assert "Graph answered 503" in busy.value.reason


@pytest.mark.slow  # real time: tests/test_graph_pacing_unit.py steps a clock instead
def test_send_mail_uses_the_client_but_not_the_directory_write_budget() -> None:
    """sendMail goes through the same pipeline and token; Exchange Online limits it, so it
    spends no directory write token, and its 429 does not hold up the directory calls."""
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        if request.url.path.endswith("/sendMail") and n == 1:
            return httpx.Response(429, headers={"Retry-After": "0.5"},
                                  json={"error": {"code": "ApplicationThrottled", "message": "x"}})
        return httpx.Response(202) if request.url.path.endswith("/sendMail") else ok(request, n)

    recorder = Recorder(answer)

    async def work(graph: GraphClient) -> tuple[int, int]:
        async def read_meanwhile() -> None:
            await asyncio.sleep(0.05)
            await graph.license_details("u1")

        body = json.dumps({"message": {"subject": "s"}}).encode()
        await asyncio.gather(graph.send_mail("robot@contoso.example", body, action="send mail"),
                             read_meanwhile())
        return graph.counters.writes, graph.counters.throttled

    assert (0, 1) == run(recorder, work)
    read_at = next(t for t, method, _, _ in recorder.seen if method == "GET")
    mails = [path for _, _, path, _ in recorder.seen if path.endswith("/sendMail")]
    assert ["/v1.0/users/robot@contoso.example/sendMail"] * 2 == mails
    assert read_at < 0.4


@pytest.mark.slow  # real time: tests/test_graph_pacing_unit.py steps a clock instead
def test_retry_after_is_seconds_or_an_http_date_else_a_growing_backoff() -> None:
    """The one Retry-After rule: seconds, an HTTP date, and without (or with a garbled)
    header 2, 4, 8 ... seconds, at most 60."""
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 1.5 == retry_after({"Retry-After": "1.5"}, 1)
    assert 8.0 <= retry_after({"Retry-After": in_ten}, 1) <= 10.0
    assert [2.0, 8.0, 60.0, 8.0] == [retry_after(None, 1), retry_after({}, 3),
                                     retry_after(None, 9), retry_after({"Retry-After": "?"}, 3)]


@pytest.mark.parametrize(("message", "fix"), [
    ("License assignment cannot be done for user with invalid usage location.",
     "set the user's country attribute to a country where the licence is sold"),
    ("License assignment failed because service plans 9aaf7827 are mutually exclusive.",
     "the user holds another licence whose plans conflict with this one"),
    ("User license is inherited from a group membership and it cannot be removed directly "
     "from the user.", "the user's licence comes from group-based licensing"),
    ("Unable to update the specified properties for on-premises mastered Directory Sync "
     "objects or objects currently undergoing migration.",
     "change the value in Active Directory; Entra Connect syncs it"),
])
def test_graph_refusals_of_a_user_s_data_carry_a_helpdesk_fix(message: str, fix: str) -> None:
    """Graph's answers about a user's data map to what a helpdesk can change, never to a
    vague 'correct the request'."""
    refusal = classify(400, "Request_BadRequest", message, None, action="assignLicense",
                       user="ann@contoso.com")
    assert (400, "ann@contoso.com") == (refusal.status, refusal.user)
    assert refusal.fix.startswith(fix)
