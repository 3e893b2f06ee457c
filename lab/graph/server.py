"""The lab Graph's HTTP side: a route registry, bearer-token check, fault injection,
throttling, counters, and the lab-only control path ``/_lab``.

Graph paths are matched by our own registry (not aiohttp's router) so that ``$batch`` can
dispatch each item through exactly the same code: same handler, same throttling, same counters.

Routes serve ``/v1.0``; a route registered with ``versions=("v1.0", "beta")`` also serves
``/beta`` (what the service reads only there: a role definition's ``isPrivileged``). Any other
``/beta`` path is Graph's 400 for an unknown segment: the lab serves no more of beta than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import random
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from lab import tokens

from .store import Tenant
from .throttle import Budgets, Knobs

JSON = dict[str, Any]


class GraphError(Exception):
    """A Graph error answer: ``{"error": {"code", "message", "innerError"}}``."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


_USERS_READ = frozenset({"User.Read.All", "User.ReadWrite.All", "Directory.Read.All",
                         "Directory.ReadWrite.All"})
_ROLES_READ = frozenset({"RoleManagement.Read.Directory", "RoleManagement.ReadWrite.Directory",
                         "Directory.Read.All"})
_ELIGIBILITY_READ = _ROLES_READ | {"RoleEligibilitySchedule.Read.Directory",
                                   "RoleEligibilitySchedule.ReadWrite.Directory"}
# The application permissions each route accepts, least privileged first (the "Permissions"
# table of each call's page on learn.microsoft.com/graph/api); a token with none of them gets
# 403 Authorization_RequestDenied. ``$batch`` has none: each item is checked on its own.
PERMISSIONS: dict[str, frozenset[str]] = {
    "GET users": _USERS_READ,
    "GET users/{id}": _USERS_READ,
    "PATCH users/{id}": frozenset({"User.ReadWrite.All", "Directory.ReadWrite.All"}),
    "POST users/{id}/assignLicense": frozenset({"LicenseAssignment.ReadWrite.All",
                                                "User.ReadWrite.All", "Directory.ReadWrite.All"}),
    "GET users/{id}/licenseDetails": _USERS_READ | {"LicenseAssignment.Read.All"},
    "GET subscribedSkus": frozenset({"LicenseAssignment.Read.All",
                                     "LicenseAssignment.ReadWrite.All", "Organization.Read.All",
                                     "Directory.Read.All"}),
    "POST users/{id}/sendMail": frozenset({"Mail.Send"}),
    # Leavers (issue 27): mailboxSettings ("Get mailboxSettings": MailboxSettings.Read, higher
    # MailboxSettings.ReadWrite) and the usage report ("reportRoot: getMailboxUsageDetail":
    # Reports.Read.All, nothing higher).
    "GET users/{id}/mailboxSettings": frozenset({"MailboxSettings.Read",
                                                "MailboxSettings.ReadWrite"}),
    "GET users/{id}/mailboxSettings/userPurpose": frozenset({"MailboxSettings.Read",
                                                            "MailboxSettings.ReadWrite"}),
    "GET reports/{function}": frozenset({"Reports.Read.All"}),
    "GET roleManagement/directory/roleDefinitions": _ROLES_READ,
    "GET roleManagement/directory/roleDefinitions/{id}": _ROLES_READ,
    "GET roleManagement/directory/roleAssignments": _ROLES_READ,
    "GET roleManagement/directory/roleAssignments/{id}": _ROLES_READ,
    "POST roleManagement/directory/roleAssignments": frozenset(
        {"RoleManagement.ReadWrite.Directory"}),
    "DELETE roleManagement/directory/roleAssignments/{id}": frozenset(
        {"RoleManagement.ReadWrite.Directory"}),
    "POST roleManagement/directory/roleEligibilityScheduleRequests": frozenset(
        {"RoleEligibilitySchedule.ReadWrite.Directory", "RoleManagement.ReadWrite.Directory"}),
    "GET roleManagement/directory/roleEligibilityScheduleRequests": _ELIGIBILITY_READ,
    "GET roleManagement/directory/roleEligibilitySchedules": _ELIGIBILITY_READ,
    "GET roleManagement/directory/roleEligibilitySchedules/{id}": _ELIGIBILITY_READ,
    "POST servicePrincipals/{sp}/synchronization/jobs/{job}/provisionOnDemand": frozenset(
        {"Synchronization.ReadWrite.All", "Application.ReadWrite.OwnedBy"}),
}


@dataclass
class Request:
    """One Graph request, from HTTP or from a ``$batch`` item."""

    method: str
    path: str  # relative to /v1.0, no leading slash, e.g. "users/abc/assignLicense"
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any
    params: dict[str, str] = field(default_factory=dict)
    base_url: str = ""  # http://host:port/v1.0, for @odata.nextLink
    version: str = "v1.0"  # or "beta"
    roles: frozenset[str] | None = None  # the token's application permissions (None: all)

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[["Graph", Request], Awaitable[Reply]]
CostFn = Callable[[Request], int]


@dataclass
class Route:
    method: str
    template: str
    regex: re.Pattern[str]
    handler: Handler
    ru: int | CostFn
    writes: int
    throttled: bool
    versions: tuple[str, ...] = ("v1.0",)


class Registry:
    """Routes of the lab Graph. Modules call ``route(...)`` at import time."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def route(
        self,
        method: str,
        template: str,
        *,
        ru: int | CostFn = 1,
        writes: int | None = None,
        throttled: bool = True,
        versions: tuple[str, ...] = ("v1.0",),
    ) -> Callable[[Handler], Handler]:
        """Register ``handler`` for ``method template`` (``users/{id}/assignLicense``).

        ``ru`` is the documented base resource-unit cost (an int, or a function of the request
        for paths whose cost depends on it); ``writes`` is the write-quota cost, 1 for
        POST/PATCH/PUT/DELETE and 0 for GET unless given. ``throttled=False`` exempts a path
        from the identity budgets (e.g. Outlook's sendMail, which has limits of its own).
        """
        parts = [
            f"(?P<{seg[1:-1]}>[^/]+)" if seg.startswith("{") else re.escape(seg)
            for seg in template.split("/")
        ]
        regex = re.compile("^" + "/".join(parts) + "$", re.IGNORECASE)
        write_cost = writes if writes is not None else (0 if method == "GET" else 1)

        def register(handler: Handler) -> Handler:
            self.routes.append(
                Route(method, template, regex, handler, ru, write_cost, throttled, versions)
            )
            return handler

        return register

    def match(self, method: str, path: str,
              version: str = "v1.0") -> tuple[Route, dict[str, str]] | None:
        allowed = False
        for route in self.routes:
            if version not in route.versions:
                continue
            found = route.regex.match(path)
            if found:
                if route.method == method:
                    return route, dict(found.groupdict())
                allowed = True
        if allowed:
            raise GraphError(405, "Request_BadRequest", f"The HTTP method '{method}' is not "
                             f"allowed for the resource '{path}'.")
        return None


registry = Registry()
route = registry.route


def graph_error_body(code: str, message: str) -> JSON:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": now,
                "request-id": str(uuid.uuid4()),
                "client-request-id": str(uuid.uuid4()),
            },
        }
    }


@dataclass
class Stats:
    """Counters the tests and benchmarks read through ``GET /_lab/stats``."""

    per_path: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    total: Counter[str] = field(default_factory=Counter)

    def count(self, key: str, what: str, n: int = 1) -> None:
        self.per_path[key][what] += n
        self.total[what] += n

    def as_json(self) -> JSON:
        return {
            "total": dict(self.total),
            "paths": {key: dict(counter) for key, counter in sorted(self.per_path.items())},
        }


class Graph:
    """State of one lab Graph process: tenant, budgets, knobs, counters."""

    def __init__(self, tenant: Tenant, knobs: Knobs, token: str) -> None:
        self.tenant = tenant
        self.knobs = knobs
        self.budgets = Budgets(knobs)
        self.stats = Stats()
        self.token = token
        self.random = random.Random(knobs.seed)
        self.settings: dict[str, str] = {}

    # -- one Graph request, from HTTP or a batch item ------------------------------------
    async def dispatch(self, request: Request) -> Reply:
        """Route, throttle, count and run one request; always returns a Reply."""
        key = f"{request.method} {request.path}"
        try:
            found = registry.match(request.method, request.path, request.version)
            if found is None:
                raise GraphError(400, "BadRequest", f"Resource not found for the segment "
                                 f"'{request.path.split('/')[0]}'.")
            matched, params = found
            request.params = params
            beta = "beta/" if request.version == "beta" else ""
            key = f"{matched.method} {beta}{matched.template}"
            self.stats.count(key, "requests")
            self.stats.count(key, "writes" if matched.writes else "reads")
            needed = PERMISSIONS.get(f"{matched.method} {matched.template}")
            if needed and request.roles is not None and not needed & request.roles:
                raise GraphError(403, "Authorization_RequestDenied",
                                 "Insufficient privileges to complete the operation.")
            headers: dict[str, str] = {}
            if matched.throttled:
                cost = matched.ru(request) if callable(matched.ru) else matched.ru
                cost = max(1, cost - _cost_discount(request))
                verdict = self.budgets.charge(cost, matched.writes, self.tenant.size())
                headers.update(verdict.headers)
                if verdict.retry_after is not None:
                    self.stats.count(key, "429")
                    raise GraphError(
                        429, "TooManyRequests",
                        "Too many requests. Retry after the time the Retry-After header gives.",
                        headers,
                    )
            reply = await matched.handler(self, request)
            reply.headers = {**headers, **reply.headers}
            return reply
        except GraphError as exc:
            if exc.status >= 400 and exc.status != 429:
                self.stats.count(key, f"{exc.status}")
            return Reply(exc.status, graph_error_body(exc.code, exc.message), exc.headers)


def _cost_discount(request: Request) -> int:
    """Documented modifiers: $select -1, $top below 20 -1, $expand +1."""
    discount = 0
    if "$select" in request.query:
        discount += 1
    top = request.query.get("$top", "")
    if top.isdigit() and int(top) < 20:
        discount += 1
    if "$expand" in request.query:
        discount -= 1
    return discount


# -- aiohttp glue -------------------------------------------------------------------------
GRAPH_KEY = web.AppKey("graph", Graph)


def token_roles(graph: Graph, http: web.Request) -> GraphError | frozenset[str] | None:
    """The application permissions of the request's token (None: the lab's own, opaque token,
    which may do anything), or the 401 Graph answers to a token it does not accept."""
    value = http.headers.get("Authorization", "")
    if not value:
        return GraphError(401, "InvalidAuthenticationToken", "Access token is empty.")
    scheme, _, token = value.partition(" ")
    claims = tokens.verify(graph.settings.get(tokens.KEY_SETTING, ""), token)
    if scheme.lower() == "bearer" and claims is not None:
        return frozenset(str(r) for r in claims.get("roles") or [])
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), graph.token.encode()):
        return GraphError(401, "InvalidAuthenticationToken", "Access token validation failure.")
    return None


def _authorised(graph: Graph, http: web.Request) -> GraphError | None:
    roles = token_roles(graph, http)
    return roles if isinstance(roles, GraphError) else None


def _json_response(reply: Reply) -> web.Response:
    if reply.body is None:
        return web.Response(status=reply.status, headers=reply.headers)
    return web.Response(
        status=reply.status,
        body=json.dumps(reply.body).encode(),
        content_type="application/json",
        headers=reply.headers,
    )


async def _faults(graph: Graph, http: web.Request) -> web.Response | None:
    """Injected latency, 503s and dropped connections, as configured."""
    knobs = graph.knobs
    delay = knobs.latency_ms + (graph.random.uniform(0, knobs.jitter_ms) if knobs.jitter_ms else 0)
    if delay > 0:
        await asyncio.sleep(delay / 1000)
    drop = knobs.drop_next > 0 or (knobs.drop_rate and graph.random.random() < knobs.drop_rate)
    if drop:
        knobs.drop_next = max(0, knobs.drop_next - 1)
        graph.stats.count("*", "dropped")
        if http.transport is not None:
            http.transport.abort()
        raise asyncio.CancelledError  # aiohttp discards a handler cancelled after abort
    if knobs.throttle_rate and graph.random.random() < knobs.throttle_rate:
        graph.stats.count("*", "429")
        return _json_response(
            Reply(429, graph_error_body(
                "TooManyRequests",
                "Too many requests. Retry after the time the Retry-After header gives."),
                {"Retry-After": str(knobs.retry_after_429)})
        )
    fail = knobs.fail_next > 0 or (knobs.error_rate and graph.random.random() < knobs.error_rate)
    if fail:
        knobs.fail_next = max(0, knobs.fail_next - 1)
        graph.stats.count("*", "503")
        return _json_response(
            Reply(503, graph_error_body("serviceNotAvailable", "Service Unavailable"),
                  {"Retry-After": str(knobs.retry_after_503)})
        )
    return None


async def handle_graph(http: web.Request) -> web.StreamResponse:
    graph = http.app[GRAPH_KEY]
    denied = _authorised(graph, http)
    if denied:
        return _json_response(Reply(denied.status, graph_error_body(denied.code, denied.message)))
    faulted = await _faults(graph, http)
    if faulted is not None:
        return faulted
    body: Any = None
    if http.can_read_body:
        raw = await http.read()
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return _json_response(Reply(400, graph_error_body(
                    "BadRequest", "Unable to read JSON request payload.")))
    version = "beta" if http.path.startswith("/beta/") else "v1.0"
    request = Request(
        method=http.method,
        path=http.match_info["tail"].strip("/"),
        query=dict(http.query),
        headers={k.lower(): v for k, v in http.headers.items()},
        body=body,
        base_url=f"{http.scheme}://{http.host}/{version}",
        version=version,
    )
    roles = token_roles(graph, http)
    request.roles = None if isinstance(roles, GraphError) else roles
    reply = await graph.dispatch(request)
    knobs = graph.knobs
    if knobs.drop_after_rate and graph.random.random() < knobs.drop_after_rate:
        # Carried out, and the answer lost: what a dropped connection mid-request looks like.
        graph.stats.count("*", "dropped_after")
        if http.transport is not None:
            http.transport.abort()
        raise asyncio.CancelledError
    return _json_response(reply)


async def handle_control(http: web.Request) -> web.Response:
    graph = http.app[GRAPH_KEY]
    denied = _authorised(graph, http)
    if denied:
        return _json_response(Reply(denied.status, graph_error_body(denied.code, denied.message)))
    name = f"{http.method} {http.match_info['tail'].strip('/')}"
    action = CONTROLS.get(name)
    if action is None:
        return web.json_response({"error": f"no lab control {name}"}, status=404)
    body = await http.json() if http.can_read_body else {}
    try:
        return web.json_response(await action(graph, body or {}))
    except (KeyError, ValueError, TypeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)


def control(method: str, name: str) -> Callable[
    [Callable[[Graph, JSON], Awaitable[JSON]]], Callable[[Graph, JSON], Awaitable[JSON]]
]:
    """Register a lab-only control action at ``METHOD /_lab/<name>``."""

    def register(fn: Callable[[Graph, JSON], Awaitable[JSON]]) -> Callable[[Graph, JSON],
                                                                           Awaitable[JSON]]:
        CONTROLS[f"{method} {name}"] = fn
        return fn

    return register


CONTROLS: dict[str, Callable[[Graph, JSON], Awaitable[JSON]]] = {}
# Plain aiohttp routes outside /v1.0 and /_lab (method, path, handler), such as a report's
# pre-authenticated download URL, which takes no Authorization header.
RAW_ROUTES: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = []


def make_app(graph: Graph) -> web.Application:
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[GRAPH_KEY] = graph
    app.router.add_route("*", "/v1.0/{tail:.*}", handle_graph)
    app.router.add_route("*", "/beta/{tail:.*}", handle_graph)
    app.router.add_route("*", "/_lab/{tail:.*}", handle_control)
    for method, path, handler in RAW_ROUTES:
        app.router.add_route(method, path, handler)
    return app


async def serve(
    graph: Graph,
    host: str,
    port: int,
    background: list[Callable[[], Coroutine[Any, Any, None]]],
) -> None:
    """Serve until cancelled, with ``background`` coroutines (the sync engine) alongside."""
    runner = web.AppRunner(make_app(graph), access_log=None, handle_signals=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    tasks = [asyncio.create_task(job()) for job in background]
    try:
        await asyncio.Event().wait()
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await runner.cleanup()
