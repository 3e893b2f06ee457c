"""The lab's Azure Relay: the Hybrid Connections protocol over TLS (lab CA) on loopback.

What it does, as the protocol page describes the service (learn.microsoft.com,
azure-relay/relay-hybrid-connections-protocol):

- ``GET /$hc/<path>?sb-hc-action=listen&sb-hc-id=…``: a listener's control channel
  (WebSocket). The relay sends ``{"accept": {"address", "id", "connectHeaders",
  "remoteEndpoint"}}`` on it for each sender; the listener may send ``{"renewToken":
  {"token"}}``.
- ``…?sb-hc-action=connect``: a sender. The upgrade is held until a listener (round robin)
  opens the rendezvous address ``…?sb-hc-action=accept&sb-hc-id=<id>``; then the two
  WebSockets are joined, frame for frame. A listener may refuse with ``sb-hc-statusCode`` /
  ``sb-hc-statusDescription`` on the accept address; the sender then gets that status.
- Status codes: 400 (no or unknown ``sb-hc-action``), 401 (token missing, malformed, expired,
  bad signature, SAS while local auth is off), 403 (valid token without the Send or Listen
  right on that hybrid connection), 404 (no such hybrid connection; no listener connected),
  504 (the listener did not accept in time).
- Tokens, in ``ServiceBusAuthorization`` or ``sb-hc-token``: an Entra bearer (a static lab
  token per principal, each with its role assignments: ``Send`` for the app's, as "Azure Relay
  Sender", ``Listen`` for the bridge's) or ``SharedAccessSignature sr=…&sig=…&se=…&skn=…``
  checked by HMAC-SHA256 against the namespace's rules, only while ``local_auth`` is on (the
  deployed namespace has it off).

Lab-only ``/_lab/config`` (GET/POST: ``local_auth``, ``rendezvous_timeout``) and
``/_lab/stats``, with the admin token. Run as ``python -m lab.relay.service <config.json>``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import ssl
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_plus

from aiohttp import WSMsgType, web

from lab import tokens

WS = web.WebSocketResponse


class Refused(Exception):
    """An HTTP status the relay answers a listen/connect/accept with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


Joined = tuple[WS, "asyncio.Future[None]"]  # the listener's socket, and "done with it"


@dataclass
class Rendezvous:
    future: asyncio.Future[Joined | Refused]
    path: str


@dataclass
class Relay:
    host: str  # host:port as senders address it
    hybrid_connections: set[str]
    principals: dict[str, dict[str, list[str]]]  # bearer token -> {path or "*": rights}
    sas_rules: dict[str, tuple[str, list[str]]]  # key name -> (key, rights), namespace level
    admin_token: str
    token_key: str = ""  # the lab's Entra key: any app token it signed holds app_grants
    app_grants: dict[str, list[str]] = field(default_factory=dict)
    local_auth: bool = False
    rendezvous_timeout: float = 20.0
    listeners: dict[str, list[WS]] = field(default_factory=dict)
    pending: dict[str, Rendezvous] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    # -- tokens ------------------------------------------------------------------------------
    def authorize(self, request: web.Request, path: str, right: str) -> None:
        token = request.headers.get("ServiceBusAuthorization") or \
            request.query.get("sb-hc-token", "")
        if not token:
            raise Refused(401, "TokenMissingOrInvalid: no ServiceBusAuthorization header or "
                          "sb-hc-token was given")
        if token.startswith("SharedAccessSignature "):
            rights = self._sas_rights(token, path)
        else:
            bearer = token.removeprefix("Bearer ").strip()
            grants = self.principals.get(bearer)
            if grants is None and tokens.verify(self.token_key, bearer) is not None:
                grants = self.app_grants
            if grants is None:
                raise Refused(401, "TokenMissingOrInvalid: the token is malformed, expired or "
                              "not issued for https://relay.azure.net")
            rights = grants.get(path, []) + grants.get("*", [])
        if right not in rights:
            raise Refused(403, f"Unauthorized access. '{right}' claim(s) are required to "
                          f"perform this operation. Resource: 'sb://{self.host}/{path}'")

    def _sas_rights(self, token: str, path: str) -> list[str]:
        if not self.local_auth:
            raise Refused(401, "TokenMissingOrInvalid: local (SAS) authentication is disabled "
                          "on this namespace; use Microsoft Entra ID")
        fields = dict(part.partition("=")[::2] for part in
                      token.removeprefix("SharedAccessSignature ").split("&"))
        raw_sr, sig, se, skn = (fields.get(k, "") for k in ("sr", "sig", "se", "skn"))
        rule = self.sas_rules.get(unquote_plus(skn))
        if not (raw_sr and sig and se.isdigit() and rule):
            raise Refused(401, "TokenMissingOrInvalid: the SharedAccessSignature is malformed "
                          "or names an unknown key")
        if int(se) < time.time():
            raise Refused(401, "TokenMissingOrInvalid: the SharedAccessSignature has expired")
        key, rights = rule
        expected = base64.b64encode(hmac.new(key.encode(), f"{raw_sr}\n{se}".encode(),
                                             hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(expected, unquote_plus(sig)):
            raise Refused(401, "TokenMissingOrInvalid: the signature does not match")
        resource = f"http://{self.host.split(':')[0]}/{path}/".lower()
        audience = unquote_plus(raw_sr).lower().rstrip("/") + "/"
        if not resource.startswith(audience):
            raise Refused(401, "TokenMissingOrInvalid: the token's audience is another "
                          "resource")
        return rights

    # -- the three actions -------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"].strip("/")
        action = request.query.get("sb-hc-action", "")
        try:
            if action == "accept":
                return await self._accept(request)
            if action not in ("listen", "connect"):
                raise Refused(400, "BadRequest: sb-hc-action must be listen, connect or accept")
            if path not in self.hybrid_connections:
                raise Refused(404, f"EntityNotFound: the hybrid connection "
                              f"'sb://{self.host}/{path}' could not be found")
            self.authorize(request, path, "Listen" if action == "listen" else "Send")
            if action == "listen":
                return await self._listen(request, path)
            return await self._connect(request, path)
        except Refused as refused:
            self.stats[f"{action} {refused.status}"] += 1
            return web.Response(status=refused.status, reason=refused.reason.replace("\n", " "))

    async def _listen(self, request: web.Request, path: str) -> WS:
        ws = WS(autoping=True, heartbeat=30.0)
        await ws.prepare(request)
        self.listeners.setdefault(path, []).append(ws)
        self.stats["listen 101"] += 1
        try:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    command = json.loads(message.data)
                    if "renewToken" in command:
                        self.stats["renewToken"] += 1
        finally:
            self.listeners[path].remove(ws)
        return ws

    async def _connect(self, request: web.Request, path: str) -> web.StreamResponse:
        live = [ws for ws in self.listeners.get(path, []) if not ws.closed]
        if not live:
            raise Refused(404, "There are no listeners connected for the endpoint")
        listener = live[next(self._turn) % len(live)]
        rid = uuid.uuid4().hex
        future: asyncio.Future[Joined | Refused] = asyncio.get_running_loop().create_future()
        self.pending[rid] = Rendezvous(future, path)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        accept = {"accept": {
            "address": f"wss://{self.host}/$hc/{quote(path)}?sb-hc-action=accept&sb-hc-id={rid}",
            "id": rid,
            "connectHeaders": {k: v for k, v in request.headers.items()
                               if k.lower() not in ("servicebusauthorization",)},
            "remoteEndpoint": {"address": peer[0] if peer else "", "port": peer[1] if peer else 0},
        }}
        try:
            await listener.send_str(json.dumps(accept))
            async with asyncio.timeout(self.rendezvous_timeout):
                joined = await future
        except TimeoutError:
            raise Refused(504, "GatewayTimeout: the listener did not accept the connection "
                          "in the required time") from None
        finally:
            self.pending.pop(rid, None)
        if isinstance(joined, Refused):
            raise joined
        other, done = joined
        try:
            sender = WS(autoping=True, max_msg_size=0)
            await sender.prepare(request)
            self.stats["connect 101"] += 1
            await join(sender, other)
        finally:
            if not done.done():
                done.set_result(None)
        return sender

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        rendezvous = self.pending.get(request.query.get("sb-hc-id", ""))
        if rendezvous is None or rendezvous.future.done():
            raise Refused(404, "the rendezvous id is unknown or has expired")
        status = request.query.get("sb-hc-statusCode")
        if status:  # the listener refuses this sender
            rendezvous.future.set_result(Refused(
                int(status), request.query.get("sb-hc-statusDescription", "Rejected")))
            return web.Response(status=204)
        ws = WS(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        rendezvous.future.set_result((ws, done))
        await done  # the sender's handler joins the two sockets, then says it is done
        return ws


async def join(one: WS, other: WS) -> None:
    """Pass frames between two WebSockets until either closes, then close the other with the
    same code (1000 normal closure; 1011 when a side went away abruptly)."""

    async def carry(source: WS, target: WS) -> None:
        async for message in source:
            if message.type is WSMsgType.BINARY:
                await target.send_bytes(message.data)
            elif message.type is WSMsgType.TEXT:
                await target.send_str(message.data)
        code = source.close_code if source.close_code is not None else 1011
        await target.close(code=code if code in (1000, 1001, 1008, 1011) else 1011)

    tasks = [asyncio.create_task(carry(one, other)), asyncio.create_task(carry(other, one))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                await task
        for ws in (one, other):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.close()


def build_app(relay: Relay) -> web.Application:
    async def control(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {relay.admin_token}":
            return web.json_response({"error": "lab admin token required"}, status=401)
        if request.match_info["what"] == "config" and request.method == "POST":
            body: dict[str, Any] = await request.json()
            if "local_auth" in body:
                relay.local_auth = bool(body["local_auth"])
            if "rendezvous_timeout" in body:
                relay.rendezvous_timeout = float(body["rendezvous_timeout"])
        if request.match_info["what"] == "stats" and request.method == "POST":
            relay.stats.clear()
        return web.json_response({
            "local_auth": relay.local_auth, "rendezvous_timeout": relay.rendezvous_timeout,
            "listeners": {p: sum(not ws.closed for ws in wss)
                          for p, wss in relay.listeners.items()},
            "stats": dict(relay.stats),
        })

    app = web.Application()
    app.router.add_route("*", "/_lab/{what}", control)
    app.router.add_get("/$hc/{path:.+}", relay.handle)
    return app


def serve(config_path: Path) -> None:
    config = json.loads(config_path.read_text())
    relay = Relay(
        host=f"{config['host']}:{config['port']}",
        hybrid_connections=set(config["hybrid_connections"]),
        principals=config["principals"],
        sas_rules={name: (rule["key"], rule["rights"])
                   for name, rule in config["sas_rules"].items()},
        admin_token=config["admin_token"],
        token_key=config.get("token_key", ""),
        app_grants=config.get("app_grants", {}),
        local_auth=bool(config.get("local_auth", False)),
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config["cert"], config["key"])
    print(f"lab relay on wss://{relay.host}", flush=True)
    web.run_app(build_app(relay), host=config["host"], port=int(config["port"]),
                ssl_context=context, print=None, access_log=None)


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
