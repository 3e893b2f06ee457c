"""The local forwarder: TCP on 127.0.0.1 in the worker, one relay stream per connection.

ldap3 and pypsrp are blocking clients that run in many threads; they cannot speak WebSocket.
So each on-premises endpoint gets a ``Forwarder``: a TCP listener on 127.0.0.1 (a port the
OS picks) whose every accepted connection becomes one stream of the endpoint's hybrid
connection (``shared.relay.sender``), with bytes pumped both ways. All forwarders of a process live
on one asyncio loop in a daemon thread, started on first use (``RelayLoop``), so the
Functions host's loop and the CLI's are never involved.

The API the client builders call (``shared.ad.directory``, ``shared.exchange.client``)::

    forwarder = tunnel(link, index, host, port, ca_bundle=..., http_connect=...)
    address = forwarder.open()       # blocking: opens a stream now, or raises what to do

``open`` opens one stream before the client connects and keeps it for the connection that
comes next: the error a client would otherwise see (a connection closed at once) becomes the
relay's own one-line ``TransientError`` / ``PermanentError``, raised in the caller's thread.
Connections that come without an ``open`` (a client reconnecting by itself) open their stream
when accepted.

TLS is not touched here: the forwarder carries the client's TLS records, and the client
verifies the server's certificate against the real host name (``shared.relay.tls``).
``http_connect`` (Exchange) makes the forwarder an HTTP CONNECT proxy that accepts only the
configured Exchange host:port: requests then does TLS with SNI and the name check for the
host in EXCHANGE_URL, which never has to resolve on the app's side.

Streams end cleanly (a close frame one way, a FIN the other) when either side ends, and are
closed after ``RELAY_IDLE_SECONDS`` without a byte in either direction.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

from shared.config import RelayLink
from shared.errors import ProvisioningError, TransientError
from shared.log import get_logger
from shared.relay.sender import (
    STEP,
    Endpoint,
    Stream,
    Tokens,
    client_tls,
    open_stream,
    trace_config,
)

log = get_logger(__name__)

T = TypeVar("T")
CHUNK = 64 * 1024  # what azbridge pumps at a time, too
PREOPENED_TTL = 15.0  # a stream opened for a connection that never came is closed after this
MAX_CONNECT_REQUEST = 8 * 1024


# -- health ------------------------------------------------------------------------------------


@dataclass
class Health:
    """Whether an endpoint's streams open: one log line when they stop, one when they work
    again. Used on the relay's event loop only."""

    down_since: dict[tuple[str, str], float] = field(default_factory=dict)
    failures: dict[tuple[str, str], int] = field(default_factory=dict)

    def failed(self, endpoint: Endpoint, error: ProvisioningError) -> None:
        key = (endpoint.namespace, endpoint.path)
        self.failures[key] = self.failures.get(key, 0) + 1
        if key in self.down_since:
            return
        self.down_since[key] = time.monotonic()
        log.warning("relay_unreachable", step=STEP, relay=endpoint.namespace,
                    hybrid_connection=endpoint.path, error=str(error),
                    transient=isinstance(error, TransientError))

    def succeeded(self, endpoint: Endpoint) -> None:
        key = (endpoint.namespace, endpoint.path)
        since = self.down_since.pop(key, None)
        if since is None:
            return
        log.warning("relay_restored", step=STEP, relay=endpoint.namespace,
                    hybrid_connection=endpoint.path,
                    outage_seconds=round(time.monotonic() - since, 1),
                    failed_streams=self.failures.pop(key, 0))


class RelayLoop:
    """One asyncio loop in a daemon thread per process: it owns every forwarder."""

    _instance: RelayLoop | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.health = Health()
        self._session: aiohttp.ClientSession | None = None
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), name="relay-loop",
                                       daemon=True)
        self.thread.start()
        ready.wait()

    @classmethod
    def get(cls) -> RelayLoop:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the relay loop from another thread and wait for its result."""
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a blocking relay call was made on the relay loop itself")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def session(self) -> aiohttp.ClientSession:
        """The loop's HTTP session (one WebSocket per stream; no pool limit)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True),
                trace_configs=[trace_config()])
        return self._session


class Forwarder:
    """A TCP listener on 127.0.0.1 that relays each accepted connection to one endpoint."""

    def __init__(self, endpoint: Endpoint, tokens: Tokens, *, http_connect: bool) -> None:
        self.endpoint = endpoint
        self._tokens = tokens
        self._tls = client_tls(endpoint.link.ca_bundle)
        self._http_connect = http_connect
        self._preopened: deque[Stream] = deque()
        self._server: asyncio.Server | None = None
        self._relay = RelayLoop.get()
        self.address = ("127.0.0.1", 0)
        self.streams_opened = 0
        self.active = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, limit=CHUNK)
        self.address = self._server.sockets[0].getsockname()[:2]

    # -- the API, called from any thread but the relay loop's --------------------------------
    def open(self) -> tuple[str, int]:
        """Open one stream for the connection the caller is about to make; return where to
        connect. Raises the relay's ``TransientError`` / ``PermanentError``."""
        timeout = self.endpoint.link.relay.timeout_seconds * 2 + 5
        try:
            self._relay.run(self._preopen(), timeout)
        except TimeoutError:  # the relay loop itself is stuck: say so, never hang a worker
            raise TransientError(
                f"no stream to {self.endpoint.describe()} within {timeout:g} s", step=STEP,
                fix="nothing to do if it passes; the worker's relay loop is overloaded",
            ) from None
        return self.address

    @property
    def proxy_url(self) -> str:
        """This forwarder as an HTTP proxy URL (with ``http_connect``)."""
        return f"http://{self.address[0]}:{self.address[1]}"

    # -- on the relay loop ---------------------------------------------------------------------
    async def _preopen(self) -> None:
        self._preopened.append(await self._open())
        asyncio.get_running_loop().call_later(PREOPENED_TTL, self._expire)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._preopened and now - self._preopened[0].opened >= PREOPENED_TTL:
            stale = self._preopened.popleft()
            asyncio.get_running_loop().create_task(stale.close())

    async def _open(self) -> Stream:
        try:
            stream = await open_stream(self.endpoint, self._relay.session(), self._tokens,
                                       self._tls)
        except ProvisioningError as error:
            self._relay.health.failed(self.endpoint, error)
            raise
        self._relay.health.succeeded(self.endpoint)
        self.streams_opened += 1
        return stream

    async def _stream(self) -> Stream:
        while self._preopened:
            stream = self._preopened.popleft()
            if not stream.closed:
                return stream
        return await self._open()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        try:
            if self._http_connect and not await self._connect_request(reader, writer):
                return
            try:
                stream = await self._stream()
            except ProvisioningError as error:
                if self._http_connect:
                    reason = str(error).replace("\r", " ").replace("\n", " ")[:400]
                    writer.write(f"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                                 f"X-Relay-Error: {reason}\r\n\r\n".encode())
                return
            if self._http_connect:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await pump(reader, writer, stream, self.endpoint.link.relay.idle_seconds)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away; the stream (if any) is closed by pump or below
        finally:
            self.active -= 1
            with contextlib.suppress(OSError):
                writer.close()

    async def _connect_request(self, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> bool:
        """Read ``CONNECT host:port HTTP/1.1`` and its headers; only the endpoint's own
        host:port is allowed (an open proxy on loopback would reach anything the bridge can)."""
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_CONNECT_REQUEST:
            return False
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, _, rest = line.partition(" ")
        target = rest.split(" ", 1)[0].lower()
        wanted = f"{self.endpoint.target_host}:{self.endpoint.target_port}".lower()
        if method != "CONNECT" or target != wanted:
            log.warning("relay_proxy_refused", step=STEP, request=line[:200], allowed=wanted)
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return False
        return True


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stream: Stream,
               idle_seconds: float) -> None:
    """Carry bytes both ways until either side ends, then close both; close an idle pair.

    Back-pressure: each direction waits for its write to drain (``writer.drain``, aiohttp's
    frame writer) before it reads again."""
    last = time.monotonic()

    async def upstream() -> None:
        nonlocal last
        while data := await reader.read(CHUNK):
            await stream.write(data)
            last = time.monotonic()

    async def downstream() -> None:
        nonlocal last
        while data := await stream.read():
            writer.write(data)
            await writer.drain()
            last = time.monotonic()

    async def idle() -> None:
        while (left := idle_seconds - (time.monotonic() - last)) > 0:
            await asyncio.sleep(min(left, 5.0))
        log.debug("relay_stream_idle_closed", step=STEP, idle_seconds=idle_seconds)

    tasks = [asyncio.create_task(job()) for job in (upstream, downstream, idle)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, OSError, aiohttp.ClientError):
                await task
        if not writer.is_closing() and writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()
        await stream.close()


# -- the registry --------------------------------------------------------------------------------

_forwarders: dict[tuple[Any, ...], Forwarder] = {}
_tokens: dict[RelayLink, Tokens] = {}
_registry_lock = threading.Lock()


def tunnel(link: RelayLink, index: int, host: str, port: int, *,
           http_connect: bool = False) -> Forwarder:
    """The process's forwarder to the ``index``-th hybrid connection of ``link``, whose bridge
    forwards to ``host:port``; made and started on first use."""
    key = (link, index, host.lower(), port, http_connect)
    with _registry_lock:
        forwarder = _forwarders.get(key)
        if forwarder is None:
            tokens = _tokens.setdefault(link, Tokens(link))
            endpoint = Endpoint(link, link.paths[index], host, port)
            forwarder = Forwarder(endpoint, tokens, http_connect=http_connect)
            RelayLoop.get().run(forwarder.start(), 10)
            _forwarders[key] = forwarder
            log.info("relay_forwarder_started", step=STEP, relay=endpoint.namespace,
                     hybrid_connection=endpoint.path, target=f"{host}:{port}",
                     local=f"{forwarder.address[0]}:{forwarder.address[1]}")
        return forwarder


