"""Pacing and retries of the Graph client: a kiota middleware in front of the transport.

``PacingHandler``

- keeps writes (POST/PATCH/PUT/DELETE) under ``GRAPH_WRITES_PER_WINDOW`` per
  ``GRAPH_WRITE_WINDOW_SECONDS`` with a token bucket, as Graph's own write quota is one: we wait
  for a token instead of bouncing off 429s;
- caps requests in flight at ``GRAPH_CONCURRENCY``;
- on 429/503/504 waits as ``retry_after`` says and tries again, up to ``MAX_ATTEMPTS``; a 429
  also closes the gate for every request of this client for that long, and empties the write
  bucket, since the budget it measures is shared;
- retries reads after a dropped connection, and writes only when the request never left
  (connect errors): a write whose answer was lost is left to the caller, who re-reads state.

``sendMail`` is limited by Exchange Online per mailbox, not by the directory's write quota: it
spends no write token and its 429 does not close the gate for the directory calls.

``retry_after`` is the service's one Retry-After rule: the pacing here and the error
classifier in ``shared.graph.client`` both use it.

The clocks and the sleep are parameters (``time.monotonic``, ``time.time`` and
``asyncio.sleep`` unless a test passes its own), so the fast tests step time by hand.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import httpx
from kiota_http.middleware.middleware import BaseMiddleware

from shared import telemetry
from shared.config import GraphSettings
from shared.log import get_logger

log = get_logger(__name__)

WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({429, 503, 504})
MAX_ATTEMPTS = 6
MAX_BACKOFF_SECONDS = 60.0
OWN_LIMIT_PATHS = ("/sendMail",)  # Exchange Online's limits, not the directory's

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def retry_after(headers: Mapping[str, str] | None, attempt: int, *,
                wall: Clock = time.time) -> float:
    """Seconds to wait before trying again: Graph's ``Retry-After`` (seconds or an HTTP date,
    against ``wall``) when it sent one, else an exponential back-off (2, 4, 8 ... seconds, at
    most 60)."""
    value = ""
    if headers is not None:
        value = headers.get("Retry-After") or headers.get("retry-after") or ""
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - wall())
            except (TypeError, ValueError):
                pass  # neither form: back off as if it were missing
    return min(MAX_BACKOFF_SECONDS, 2.0 ** max(attempt, 1))


class WriteBucket:
    """A token bucket: ``capacity`` writes, refilled evenly over ``window`` seconds."""

    def __init__(self, capacity: int, window: float, *, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / window
        self.tokens = self.capacity
        self._clock, self._sleep = clock, sleep
        self.stamp = clock()
        self.waited = 0.0  # seconds spent waiting for tokens, for benchmarks
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        """Wait until a write may go out, then spend one token."""
        async with self._lock:  # first come, first served
            while True:
                now = self._clock()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                pause = (1 - self.tokens) / self.rate
                self.waited += pause
                await self._sleep(pause)

    def drain(self) -> None:
        """Graph said the budget is spent: stop assuming we have tokens left."""
        self.tokens = min(self.tokens, 0.0)


@dataclass
class Counters:
    """What the client did; benchmarks and tests read these."""

    requests: int = 0
    writes: int = 0
    throttled: int = 0
    retried: int = 0


class PacingHandler(BaseMiddleware):
    """Kiota middleware: write pacing, a concurrency cap, and Retry-After-honouring retries."""

    def __init__(self, graph: GraphSettings, *, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep, wall: Clock = time.time) -> None:
        super().__init__()
        self.bucket = WriteBucket(graph.writes_per_window, graph.write_window_seconds,
                                  clock=clock, sleep=sleep)
        self.slots = asyncio.Semaphore(graph.concurrency)
        self.gate_until = 0.0
        self.counters = Counters()
        self._clock, self._sleep, self._wall = clock, sleep, wall
        self._budget = (graph.writes_per_window, graph.write_window_seconds)
        self._reported = (clock(), Counters())

    def _report(self) -> None:
        """``graph_usage`` at most once per write window: this client's traffic since the last
        one (Graph's budget is the tenant's; Application Insights adds up the workers)."""
        now = self._clock()
        since, last = self._reported
        if now - since < self._budget[1]:
            return
        c = self.counters
        telemetry.graph_usage(c.requests - last.requests, c.writes - last.writes,
                              c.throttled - last.throttled, now - since, *self._budget)
        self._reported = (now, dataclasses.replace(c))

    async def _wait_gate(self) -> None:
        while (pause := self.gate_until - self._clock()) > 0:
            await self._sleep(pause)

    async def send(
        self, request: httpx.Request, transport: httpx.AsyncBaseTransport
    ) -> httpx.Response:
        shared = not request.url.path.endswith(OWN_LIMIT_PATHS)
        write = request.method in WRITE_METHODS and shared
        attempt = 0
        while True:
            attempt += 1
            if shared:
                await self._wait_gate()
            if write:
                await self.bucket.take()
            response: httpx.Response | None
            async with self.slots:
                self.counters.requests += 1
                self.counters.writes += write
                try:
                    response = await super().send(request, transport)
                except (httpx.ConnectError, httpx.ConnectTimeout):
                    if attempt >= MAX_ATTEMPTS:
                        raise
                    response = None
                except (httpx.TransportError, httpx.TimeoutException):
                    # The request may have been carried out; only a read is safe to repeat.
                    if request.method in WRITE_METHODS or attempt >= MAX_ATTEMPTS:
                        raise
                    response = None
            if response is not None and (
                response.status_code not in RETRY_STATUSES or attempt >= MAX_ATTEMPTS
            ):
                self._report()
                return response
            pause = retry_after(response.headers if response is not None else None, attempt,
                                wall=self._wall)
            if response is not None:
                await response.aclose()
                if response.status_code == 429:
                    self.counters.throttled += 1
                    if shared:
                        self.gate_until = max(self.gate_until, self._clock() + pause)
                        self.bucket.drain()
            self.counters.retried += 1
            log.info("graph_retry", method=request.method, path=request.url.path,
                     status=response.status_code if response is not None else "dropped",
                     wait_seconds=round(pause, 2), attempt=attempt)
            await self._sleep(pause)
