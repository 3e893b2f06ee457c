"""The Graph client's pacing middleware on a hand-stepped clock: the write bucket's
arithmetic, the gate a 429 closes, retries and their limits, the one Retry-After rule and the
usage telemetry. No peer, no real sleep: ``PacingHandler`` takes its clocks and its sleep,
and the transport is ``httpx.MockTransport``. The numbers are the documented ones: 6 attempts,
back-off 2, 4, 8 ... seconds up to 60."""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import structlog
from structlog.testing import capture_logs

from shared.config import GraphSettings
from shared.graph.pacing import PacingHandler, WriteBucket, retry_after

T = 91_733.5  # monotonic seconds, as a worker sees them
WALL = 1_780_000_000.0  # the wall clock (an HTTP date is against it)
URL = "https://graph.test/v1.0"


class Clock:
    """A monotonic clock that moves only when someone sleeps; refuses to sleep an hour."""

    def __init__(self) -> None:
        self.now = T
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        if sum(self.slept) > 3600:
            raise AssertionError(f"slept {sum(self.slept)} s: a loop that never ends")
        self.now += seconds
        await asyncio.sleep(0)


Answer = Callable[[httpx.Request, int], httpx.Response]


def handler(clock: Clock, **graph: Any) -> PacingHandler:
    settings = GraphSettings(_env_file=None, url=URL, **graph)  # type: ignore[call-arg]
    return PacingHandler(settings, clock=clock, sleep=clock.sleep, wall=lambda: WALL)


def send(pacing: PacingHandler, answer: Answer, *requests: tuple[str, str]) -> list[Any]:
    """Each (method, path) through the middleware in turn; the responses' status codes, or
    the exception a request raised."""
    seen = [0]

    def transport(request: httpx.Request) -> httpx.Response:
        seen[0] += 1
        return answer(request, seen[0])

    async def go() -> list[Any]:
        out: list[Any] = []
        mock = httpx.MockTransport(transport)
        for method, path in requests:
            try:
                response = await pacing.send(httpx.Request(method, URL + path), mock)
                out.append(response.status_code)
            except httpx.HTTPError as exc:
                out.append(type(exc).__name__)
        out.append(seen[0])
        return out

    return asyncio.run(go())


def ok(request: httpx.Request, n: int) -> httpx.Response:
    return httpx.Response(204 if request.method == "PATCH" else 200)


def test_the_bucket_spends_tokens_then_waits_for_the_refill() -> None:
    """Two writes per second: two go at once, the third waits half a second (one token at
    two a second), and the clock moving refills no more than the capacity."""
    clock = Clock()
    bucket = WriteBucket(2, 1.0, clock=clock, sleep=clock.sleep)

    async def go() -> None:
        for _ in range(3):
            await bucket.take()
        clock.now += 100.0
        for _ in range(3):
            await bucket.take()

    asyncio.run(go())
    assert ([0.5, 0.5], 1.0, 0.0) == (clock.slept, bucket.waited, bucket.tokens)


def test_a_part_refilled_bucket_waits_only_for_the_rest_of_a_token() -> None:
    """After a quarter second at two tokens a second half a token is back: the next write
    waits the other quarter."""
    clock = Clock()
    bucket = WriteBucket(2, 1.0, clock=clock, sleep=clock.sleep)

    async def go() -> None:
        await bucket.take()
        await bucket.take()
        clock.now += 0.25
        await bucket.take()

    asyncio.run(go())
    assert [0.25] == clock.slept


def test_drain_empties_the_bucket_but_never_refills_it() -> None:
    """Graph's 429 means the budget is spent: no token left, so the next write waits a full
    token; a bucket already below zero stays there."""
    clock = Clock()
    bucket = WriteBucket(4, 2.0, clock=clock, sleep=clock.sleep)
    bucket.drain()
    drained = bucket.tokens
    bucket.tokens = -0.5
    bucket.drain()
    assert (0.0, -0.5) == (drained, bucket.tokens)
    bucket.tokens = 0.0
    asyncio.run(bucket.take())
    assert [0.5] == clock.slept


def test_writes_wait_for_the_budget_reads_and_send_mail_do_not() -> None:
    """Two writes a second: four PATCHes sleep twice half a second; a GET and a sendMail POST
    spend no token. Every request and every directory write is counted."""
    clock = Clock()
    pacing = handler(clock, writes_per_window=2, write_window_seconds=1.0)
    out = send(pacing, ok, *[("PATCH", "/users/u1")] * 4, ("GET", "/users/u1"),
               ("POST", "/users/robot/sendMail"))
    c = pacing.counters
    assert ([204, 204, 204, 204, 200, 200, 6], [0.5, 0.5]) == (out, clock.slept)
    assert (6, 4, 0, 0) == (c.requests, c.writes, c.throttled, c.retried)


def test_a_429_waits_retry_after_closes_the_gate_and_drains_the_bucket() -> None:
    """A write answered 429 with Retry-After: 5 waits 5 s, closes the gate until then, and
    the retry waits for a token again (the budget is spent): 60 writes per 600 s refill half
    a token in those 5 s, so it waits 5 s more."""
    clock = Clock()
    pacing = handler(clock, writes_per_window=60, write_window_seconds=600.0)

    def answer(request: httpx.Request, n: int) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "5"}) if n == 1 else ok(request, n)

    out = send(pacing, answer, ("PATCH", "/users/u1"))
    c = pacing.counters
    assert ([204, 2], [5.0, 5.0], T + 5.0) == (out, clock.slept, pacing.gate_until)
    assert (2, 2, 1, 1) == (c.requests, c.writes, c.throttled, c.retried)


def test_a_closed_gate_holds_directory_calls_but_not_send_mail() -> None:
    """While the gate is closed a read waits until it opens; sendMail, limited by Exchange
    Online, goes at once."""
    clock = Clock()
    pacing = handler(clock)
    pacing.gate_until = T + 4.0
    mail = send(pacing, ok, ("POST", "/users/robot/sendMail"))
    read = send(pacing, ok, ("GET", "/users/u1"))
    assert ([200, 1], [200, 1], [4.0]) == (mail, read, clock.slept)


def test_send_mail_s_429_is_retried_without_closing_the_gate() -> None:
    """sendMail's 429 is retried after its Retry-After, but neither closes the directory's
    gate nor drains its write bucket."""
    clock = Clock()
    pacing = handler(clock, writes_per_window=60, write_window_seconds=600.0)

    def answer(request: httpx.Request, n: int) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "3"}) if n == 1 else ok(request, n)

    out = send(pacing, answer, ("POST", "/users/robot/sendMail"))
    assert ([200, 2], [3.0], 0.0, 60.0) == (out, clock.slept, pacing.gate_until,
                                            pacing.bucket.tokens)
    assert (1, 1) == (pacing.counters.throttled, pacing.counters.retried)


def test_a_503_is_retried_with_back_off_and_given_up_after_six_attempts() -> None:
    """503 without Retry-After: 2, 4, 8, 16, 32 s between six attempts, then the sixth answer
    is returned; a 503 is not throttling and does not close the gate."""
    clock = Clock()
    pacing = handler(clock)
    out = send(pacing, lambda r, n: httpx.Response(503), ("GET", "/users/u1"))
    assert ([503, 6], [2.0, 4.0, 8.0, 16.0, 32.0]) == (out, clock.slept)
    assert (0, 5, 0.0) == (pacing.counters.throttled, pacing.counters.retried, pacing.gate_until)


@pytest.mark.parametrize("status", [429, 504])
def test_429_and_504_are_retried_too(status: int) -> None:
    """The retried statuses are 429, 503 and 504; the second answer, 200, is returned."""
    clock = Clock()
    out = send(handler(clock), lambda r, n: httpx.Response(status if n == 1 else 200),
               ("GET", "/users/u1"))
    assert ([200, 2], [2.0]) == (out, clock.slept)


@pytest.mark.parametrize("status", [400, 404, 500, 502])
def test_other_statuses_are_returned_at_once(status: int) -> None:
    """Anything but 429, 503 and 504 goes back to the caller unretried."""
    clock = Clock()
    assert ([status, 1], []) == (send(handler(clock), lambda r, n: httpx.Response(status),
                                      ("GET", "/users/u1")), clock.slept)


def _raising(error: type[httpx.TransportError], times: int) -> Answer:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        if n <= times:
            raise error("dropped", request=request)
        return ok(request, n)
    return answer


@pytest.mark.parametrize("error", [httpx.ConnectError, httpx.ConnectTimeout])
def test_a_write_that_never_left_is_sent_again(error: type[httpx.TransportError]) -> None:
    """A connect error means the request never reached Graph: a write is retried after the
    back-off, and gives up after six attempts with the error."""
    clock = Clock()
    once = send(handler(clock), _raising(error, 1), ("PATCH", "/users/u1"))
    always = send(handler(Clock()), _raising(error, 99), ("PATCH", "/users/u1"))
    assert ([204, 2], [2.0]) == (once, clock.slept)
    assert [error.__name__, 6] == always


@pytest.mark.parametrize("error", [httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError])
def test_a_dropped_read_is_retried_a_dropped_write_is_not(
        error: type[httpx.TransportError]) -> None:
    """A connection lost after the request went out: a GET is sent again (up to six times),
    a PATCH is not (it may have been carried out)."""
    read = send(handler(Clock()), _raising(error, 1), ("GET", "/users/u1"))
    write = send(handler(Clock()), _raising(error, 1), ("PATCH", "/users/u1"))
    reads = send(handler(Clock()), _raising(error, 99), ("GET", "/users/u1"))
    assert ([200, 2], [error.__name__, 1], [error.__name__, 6]) == (read, write, reads)


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    """Events at every level reach ``capture_logs``: an earlier test in the session may have
    run ``shared.log.configure`` with a level that filters info events out before capture."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def test_a_retry_is_logged_with_its_wait_and_attempt() -> None:
    """Each retry is a graph_retry event: method, path, status (or "dropped"), the wait and
    the attempt."""
    with capture_logs() as captured:
        send(handler(Clock()), lambda r, n: httpx.Response(503 if n == 1 else 200),
             ("GET", "/users/u1"))
        send(handler(Clock()), _raising(httpx.ReadError, 1), ("GET", "/users/u2"))
    retries = [{k: v for k, v in e.items() if k != "log_level"} for e in captured
               if e["event"] == "graph_retry"]
    assert [
        {"event": "graph_retry", "method": "GET", "path": "/v1.0/users/u1", "status": 503,
         "wait_seconds": 2.0, "attempt": 1},
        {"event": "graph_retry", "method": "GET", "path": "/v1.0/users/u2", "status": "dropped",
         "wait_seconds": 2.0, "attempt": 1},
    ] == retries


def test_usage_is_reported_once_per_write_window_with_what_happened_since() -> None:
    """graph_usage: nothing within the first window (150 s by default); at 150 s the counts
    since the handler started; then nothing until the next window has passed, which reports
    only its own traffic."""
    clock = Clock()
    pacing = handler(clock, writes_per_window=3000, write_window_seconds=150.0)

    def throttled_once(request: httpx.Request, n: int) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "0"}) if n == 2 else ok(request, n)

    with capture_logs() as captured:
        send(pacing, throttled_once, ("GET", "/users/u1"), ("PATCH", "/users/u1"))
        clock.now = T + 149.9
        send(pacing, ok, ("GET", "/users/u1"))
        clock.now = T + 150.0
        send(pacing, ok, ("GET", "/users/u1"))
        clock.now = T + 299.0
        send(pacing, ok, ("GET", "/users/u1"))
        clock.now = T + 300.5
        send(pacing, ok, ("PATCH", "/users/u1"))
    usage = [{k: v for k, v in e.items() if k not in ("event", "log_level")} for e in captured
             if e["event"] == "graph_usage"]
    assert [
        {"requests": 5, "writes": 2, "throttled": 1, "seconds": 150.0, "write_budget": 3000,
         "window_seconds": 150.0},
        {"requests": 2, "writes": 1, "throttled": 0, "seconds": 150.5, "write_budget": 3000,
         "window_seconds": 150.0},
    ] == usage


def test_retry_after_takes_seconds_in_either_case_of_the_header_name() -> None:
    """Retry-After in seconds, also as a plain mapping with the name in lower case; a
    negative value waits nothing."""
    assert [7.0, 3.5, 0.0] == [retry_after({"Retry-After": "7"}, 1),
                               retry_after({"retry-after": "3.5"}, 1),
                               retry_after({"Retry-After": "-3"}, 1)]


def test_retry_after_takes_an_http_date_against_the_wall_clock() -> None:
    """An HTTP date is that many seconds from now (now being the wall clock given); a date
    past waits nothing."""
    later = email.utils.formatdate(WALL + 10, usegmt=True)
    earlier = email.utils.formatdate(WALL - 10, usegmt=True)
    assert [10.0, 0.0] == [retry_after({"Retry-After": later}, 1, wall=lambda: WALL),
                           retry_after({"Retry-After": earlier}, 1, wall=lambda: WALL)]


def test_without_retry_after_the_back_off_doubles_from_2_to_at_most_60_seconds() -> None:
    """No header, an empty one or a garbled one: 2 s for the first attempt (and for a zeroth),
    then 4, 8, 16, 32, and 60 from the sixth attempt on."""
    waits = [retry_after(None, a) for a in range(8)]
    assert [2.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0] == waits
    assert [4.0, 4.0] == [retry_after({"Retry-After": ""}, 2), retry_after({"Retry-After": "x"}, 2)]


@pytest.mark.parametrize("method", ["POST", "PATCH", "PUT", "DELETE"])
def test_every_directory_write_spends_a_token(method: str) -> None:
    """POST, PATCH, PUT and DELETE are writes: at two a second, the third waits half a
    second and three are counted as writes."""
    clock = Clock()
    pacing = handler(clock, writes_per_window=2, write_window_seconds=1.0)
    send(pacing, ok, *[(method, "/users/u1")] * 3)
    assert ([0.5], 3) == (clock.slept, pacing.counters.writes)


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_a_read_spends_no_token(method: str) -> None:
    """GET, HEAD and OPTIONS are not writes: three at two a second never wait."""
    clock = Clock()
    pacing = handler(clock, writes_per_window=2, write_window_seconds=1.0)
    send(pacing, ok, *[(method, "/users/u1")] * 3)
    assert ([], 0) == (clock.slept, pacing.counters.writes)
