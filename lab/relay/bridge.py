"""The lab's on-premises listener: it behaves as Azure Relay Bridge (azbridge) 0.16.1 does with
remote forwards (``azbridge -T relay:host:port``, or ``RemoteForward`` in its config), written
from its public source (Azure/azure-relay-bridge, tag v0.16.1), not copied from it.

Per hybrid connection it keeps a listener control channel open to the relay (reconnecting
after a second when it drops). For each ``accept`` it opens the rendezvous WebSocket and reads
the preamble the sender must write (``RemoteForwardBridge.HandleRelayConnectionAsync``):

- 3 bytes ``major, minor, mode``; anything but ``1, 0, 0|1`` is answered ``0, 0, 0`` (version
  not understood) and the stream is closed;
- one length byte and that many bytes of UTF-8: the logical port name. With a single forward
  on the relay, any numeric name selects it; otherwise the forward whose ``PortName`` (by
  default its host port as text) equals the name. No match: the stream is closed without an
  answer;
- a TCP forward asked for datagram mode (1) is answered ``0, 0, 255`` and closed (a UDP
  forward asked for stream mode would be ``0, 0, 1``; the lab has none);
- otherwise it answers ``1, 0, mode``, connects to the forward's host:port and pumps bytes
  both ways until either side ends.

Lab knobs (``/_lab/config``, lab admin token): ``down`` (close every control channel and
stream, and stay away, as a stopped service), ``open_latency_ms`` (delay before accepting each
stream: the relay's round trip to a distant region), ``drop_after_bytes`` (cut every stream
that has carried that many bytes, mid-transfer); ``POST /_lab/drop`` cuts the open streams
now. ``/_lab/stats`` counts what happened. Also a *decoy*: a TLS server whose certificate
names another host (and 127.0.0.1), for the test that a wrong certificate behind the tunnel is
refused. Run as ``python -m lab.relay.bridge <config.json>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

VERSION = "0.16.1"  # the azbridge release whose behaviour this imitates
CHUNK = 64 * 1024


@dataclass(frozen=True)
class Forward:
    relay_name: str
    host: str
    host_port: int
    port_name: str = ""

    @property
    def name(self) -> str:
        return self.port_name or str(self.host_port)


@dataclass
class Bridge:
    endpoint: str  # wss://host:port of the relay
    token: str
    forwards: dict[str, list[Forward]]
    tls: ssl.SSLContext
    knobs: dict[str, Any] = field(default_factory=lambda: {
        "down": False, "open_latency_ms": 0.0, "drop_after_bytes": None})
    stats: Counter[str] = field(default_factory=Counter)
    streams: set[asyncio.Task[None]] = field(default_factory=set)
    channels: set[aiohttp.ClientWebSocketResponse] = field(default_factory=set)
    session: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        self.session = aiohttp.ClientSession()
        await asyncio.gather(*(self._listen(name) for name in self.forwards))

    async def _listen(self, relay_name: str) -> None:
        """The control channel of one hybrid connection, kept open while not ``down``."""
        assert self.session is not None
        while True:
            if self.knobs["down"]:
                await asyncio.sleep(0.2)
                continue
            try:
                async with self.session.ws_connect(
                    f"{self.endpoint}/$hc/{relay_name}",
                    params={"sb-hc-action": "listen", "sb-hc-id": f"lab-bridge-{relay_name}"},
                    headers={"ServiceBusAuthorization": self.token}, ssl=self.tls,
                    heartbeat=30.0,
                ) as ws:
                    self.channels.add(ws)
                    self.stats["control_channels_opened"] += 1
                    print(f"listening on {relay_name}", flush=True)
                    async for message in ws:
                        if message.type is aiohttp.WSMsgType.TEXT:
                            command = json.loads(message.data)
                            if "accept" in command:
                                task = asyncio.create_task(
                                    self._accept(relay_name, command["accept"]))
                                self.streams.add(task)
                                task.add_done_callback(self.streams.discard)
                    self.channels.discard(ws)
            except (aiohttp.ClientError, OSError) as exc:
                self.stats["control_channel_errors"] += 1
                print(f"control channel {relay_name}: {type(exc).__name__} {exc}", flush=True)
            await asyncio.sleep(1.0)  # azbridge reconnects after a pause, too

    async def _accept(self, relay_name: str, accept: dict[str, Any]) -> None:
        assert self.session is not None
        latency = float(self.knobs["open_latency_ms"]) / 1000
        if latency:
            await asyncio.sleep(latency)
        async with self.session.ws_connect(accept["address"], ssl=self.tls,
                                           max_msg_size=0) as ws:
            self.stats["streams_accepted"] += 1
            buffer = bytearray()

            async def need(count: int) -> bool:
                while len(buffer) < count:
                    message = await ws.receive()
                    if message.type is not aiohttp.WSMsgType.BINARY:
                        return False
                    buffer.extend(message.data)
                return True

            if not await need(3):
                return
            major, minor, mode = buffer[:3]
            if (major, minor) != (1, 0) or mode not in (0, 1):
                self.stats["refused_version"] += 1
                await ws.send_bytes(bytes([0, 0, 0]))
                return
            if not await need(4) or not await need(4 + buffer[3]):
                return
            name = bytes(buffer[4:4 + buffer[3]]).decode("utf-8", "replace")
            rest = bytes(buffer[4 + buffer[3]:])
            forward = self._forward(relay_name, name)
            if forward is None:
                self.stats["refused_port_name"] += 1
                return  # azbridge closes without an answer
            if mode == 1:  # a datagram stream for a TCP forward
                self.stats["refused_mode"] += 1
                await ws.send_bytes(bytes([0, 0, 255]))
                return
            await ws.send_bytes(bytes([1, 0, mode]))
            try:
                reader, writer = await asyncio.open_connection(forward.host, forward.host_port)
            except OSError:
                self.stats["target_unreachable"] += 1
                return
            self.stats[f"streams {relay_name}"] += 1
            await self._pump(ws, reader, writer, rest)

    def _forward(self, relay_name: str, name: str) -> Forward | None:
        forwards = self.forwards.get(relay_name, [])
        if len(forwards) == 1 and name.isdigit():
            return forwards[0]
        return next((f for f in forwards if f.name == name), None)

    async def _pump(self, ws: aiohttp.ClientWebSocketResponse, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, first: bytes) -> None:
        carried = 0

        def count(size: int) -> None:
            nonlocal carried
            carried += size
            self.stats["bytes"] += size
            limit = self.knobs["drop_after_bytes"]
            if limit is not None and carried >= int(limit):
                self.stats["streams_dropped"] += 1
                raise ConnectionAbortedError("lab knob: drop_after_bytes")

        async def to_target() -> None:
            if first:
                writer.write(first)
            async for message in ws:
                if message.type is aiohttp.WSMsgType.BINARY:
                    count(len(message.data))
                    writer.write(message.data)
                    await writer.drain()

        async def to_relay() -> None:
            while data := await reader.read(CHUNK):
                count(len(data))
                await ws.send_bytes(data)

        tasks = [asyncio.create_task(to_target()), asyncio.create_task(to_relay())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            dropped = any(t.exception() is not None for t in done if not t.cancelled())
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            writer.close()
        await ws.close(code=1011 if dropped else 1000)

    async def drop(self) -> int:
        """Cut every open stream (as a crashing bridge or a network fault would)."""
        tasks = list(self.streams)
        for task in tasks:
            task.cancel()
        self.stats["streams_dropped"] += len(tasks)
        return len(tasks)

    async def set_down(self, down: bool) -> None:
        self.knobs["down"] = down
        if down:
            for ws in list(self.channels):
                await ws.close()
            await self.drop()


async def decoy(host: str, port: int, cert: str, key: str) -> asyncio.Server:
    """A TLS server with a certificate for another host: it finishes handshakes and closes."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(1), 10)
        writer.close()

    return await asyncio.start_server(serve, host, port, ssl=context)


async def main(config: dict[str, Any]) -> None:
    tls = ssl.create_default_context(cafile=config["ca"])
    forwards: dict[str, list[Forward]] = {}
    for item in config["RemoteForward"]:
        forward = Forward(item["RelayName"], item["Host"], int(item["HostPort"]),
                          item.get("PortName", ""))
        forwards.setdefault(forward.relay_name, []).append(forward)
    bridge = Bridge(config["endpoint"], config["token"], forwards, tls)
    bridge.knobs.update(config.get("knobs") or {})
    servers = [await decoy(**config["decoy"])] if config.get("decoy") else []

    async def control(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {config['admin_token']}":
            return web.json_response({"error": "lab admin token required"}, status=401)
        what = request.match_info["what"]
        if what == "config" and request.method == "POST":
            body = await request.json()
            if "down" in body:
                await bridge.set_down(bool(body.pop("down")))
            bridge.knobs.update({k: v for k, v in body.items() if k in bridge.knobs})
        if what == "drop" and request.method == "POST":
            await bridge.drop()
        if what == "stats" and request.method == "POST":
            bridge.stats.clear()
        return web.json_response({"version": VERSION, "knobs": bridge.knobs,
                                  "open_streams": len(bridge.streams),
                                  "control_channels": len(bridge.channels),
                                  "stats": dict(bridge.stats)})

    app = web.Application()
    app.router.add_route("*", "/_lab/{what}", control)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(config["control_port"])).start()
    print(f"azbridge {VERSION} (lab) for {', '.join(forwards)}", flush=True)
    try:
        await bridge.run()
    finally:
        for server in servers:
            server.close()


if __name__ == "__main__":
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
