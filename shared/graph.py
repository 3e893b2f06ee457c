"""The service's Microsoft Graph client: msgraph-sdk on httpx, paced and retried.

One ``GraphClient`` per event loop (``graph_client(settings)``): the SDK's httpx client is
bound to the loop it was created on.

The SDK's request pipeline is msgraph-core's, with kiota's ``RetryHandler`` replaced by our
``PacingHandler``, which

- keeps writes (POST/PATCH/PUT/DELETE) under ``GRAPH_WRITES_PER_WINDOW`` per
  ``GRAPH_WRITE_WINDOW_SECONDS`` with a token bucket, as Graph's own write quota is one: we wait
  for a token instead of bouncing off 429s;
- caps requests in flight at ``GRAPH_CONCURRENCY``;
- on 429/503/504 waits ``Retry-After`` (or a growing backoff when it is missing) and tries
  again, up to ``MAX_ATTEMPTS``; a 429 also closes the gate for every request of this client
  for that long, and empties the write bucket, since the budget it measures is shared;
- retries reads after a dropped connection, and writes only when the request never left
  (connect errors): a write whose answer was lost is left to the caller, who re-reads state.

Why no ``$batch`` here: Graph charges every batch item against the same quotas, so batching
saves round trips but no budget, and the licence step works on one user per queue message.
(msgraph-core 1.5.2's batch classes also serialise item URLs absolute and ``dependsOn`` as
``depends_on``.) The lab Graph answers ``$batch`` for callers that need it.

Errors come out as ``shared.errors`` types: 429/5xx/timeouts/connection failures are
``TransientError`` (with ``retry_after``), 401/403 and Graph's 400s ``PermanentError``.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_abstractions.request_information import RequestInformation
from kiota_abstractions.serialization import ParsableFactory
from kiota_authentication_azure.azure_identity_authentication_provider import (
    AzureIdentityAuthenticationProvider,
)
from kiota_http.middleware import (
    ParametersNameDecodingHandler,
    RedirectHandler,
    UrlReplaceHandler,
    UserAgentHandler,
)
from kiota_http.middleware.middleware import BaseMiddleware
from msgraph.generated.models.assigned_license import AssignedLicense
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.user import User
from msgraph.generated.users.item.assign_license.assign_license_post_request_body import (
    AssignLicensePostRequestBody,
)
from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder
from msgraph.generated.users.users_request_builder import UsersRequestBuilder
from msgraph.graph_request_adapter import GraphRequestAdapter
from msgraph.graph_service_client import GraphServiceClient
from msgraph_core import GraphClientFactory
from msgraph_core.middleware import GraphTelemetryHandler

from .config import GraphSettings, IdentitySettings, Settings
from .errors import PermanentError, ProvisioningError, TransientError
from .identity import credential as make_credential
from .identity import scope_for, tls_context
from .log import get_logger

log = get_logger(__name__)

STEP = "graph"
WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({429, 503, 504})
MAX_ATTEMPTS = 6
MAX_BACKOFF_SECONDS = 60.0
ERRORS: dict[str, type[ParsableFactory[Any]]] = {"XXX": ODataError}  # as the SDK's builders
USER_SELECT = [
    "id", "userPrincipalName", "mail", "usageLocation", "proxyAddresses", "assignedLicenses",
    "onPremisesImmutableId", "onPremisesSyncEnabled", "onPremisesSamAccountName",
]


# -- pacing and retries ---------------------------------------------------------------------
class WriteBucket:
    """A token bucket: ``capacity`` writes, refilled evenly over ``window`` seconds."""

    def __init__(self, capacity: int, window: float) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / window
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.waited = 0.0  # seconds spent waiting for tokens, for benchmarks
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        """Wait until a write may go out, then spend one token."""
        async with self._lock:  # first come, first served
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                pause = (1 - self.tokens) / self.rate
                self.waited += pause
                await asyncio.sleep(pause)

    def drain(self) -> None:
        """Graph said the budget is spent: stop assuming we have tokens left."""
        self.tokens = min(self.tokens, 0.0)


@dataclass
class Counters:
    """What the client did; benchmarks print these."""

    requests: int = 0
    writes: int = 0
    throttled: int = 0
    retried: int = 0


def retry_after(headers: httpx.Headers | dict[str, str] | None, attempt: int) -> float:
    """Seconds to wait: ``Retry-After`` (seconds or an HTTP date) or exponential backoff."""
    value = (headers or {}).get("Retry-After") or (headers or {}).get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value)
            return max(0.0, parsed.timestamp() - time.time())
    return min(MAX_BACKOFF_SECONDS, 2.0 ** attempt)


class PacingHandler(BaseMiddleware):
    """Kiota middleware: write pacing, a concurrency cap, and Retry-After-honouring retries."""

    def __init__(self, graph: GraphSettings) -> None:
        super().__init__()
        self.bucket = WriteBucket(graph.writes_per_window, graph.write_window_seconds)
        self.slots = asyncio.Semaphore(graph.concurrency)
        self.gate_until = 0.0
        self.counters = Counters()

    async def _wait_gate(self) -> None:
        while (pause := self.gate_until - time.monotonic()) > 0:
            await asyncio.sleep(pause)

    async def send(
        self, request: httpx.Request, transport: httpx.AsyncBaseTransport
    ) -> httpx.Response:
        write = request.method in WRITE_METHODS
        attempt = 0
        while True:
            attempt += 1
            await self._wait_gate()
            if write:
                await self.bucket.take()
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
                    if write or attempt >= MAX_ATTEMPTS:
                        raise
                    response = None
            if response is not None and response.status_code not in RETRY_STATUSES:
                return response
            if response is not None and attempt >= MAX_ATTEMPTS:
                return response
            pause = retry_after(response.headers if response else None, attempt)
            if response is not None:
                await response.aclose()
                if response.status_code == 429:
                    self.counters.throttled += 1
                    self.gate_until = max(self.gate_until, time.monotonic() + pause)
                    self.bucket.drain()
            self.counters.retried += 1
            log.info("graph_retry", method=request.method, path=request.url.path,
                     status=response.status_code if response else "dropped",
                     wait_seconds=round(pause, 2), attempt=attempt)
            await asyncio.sleep(pause)


# -- what callers get back ------------------------------------------------------------------
@dataclass(frozen=True)
class CloudUser:
    """A user as Entra ID has it, with what the licence step needs."""

    id: str
    upn: str
    mail: str | None
    usage_location: str | None
    proxy_addresses: tuple[str, ...]
    sku_ids: frozenset[uuid.UUID]
    immutable_id: str | None
    sync_enabled: bool
    sam: str | None


@dataclass(frozen=True)
class SubscribedSku:
    sku_id: uuid.UUID
    part_number: str
    prepaid: int
    consumed: int
    service_plans: tuple[str, ...]

    @property
    def free(self) -> int:
        return max(0, self.prepaid - self.consumed)


def immutable_id(guid: uuid.UUID) -> str:
    """Entra Connect's source anchor for ``objectGUID``: base64 of its bytes as AD stores them
    (the first three fields little-endian, ``uuid.UUID.bytes_le``)."""
    return base64.b64encode(guid.bytes_le).decode()


def _odata_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _cloud_user(user: dict[str, Any]) -> CloudUser:
    """From Graph's JSON for a user selected with ``USER_SELECT``."""
    return CloudUser(
        id=str(user["id"]),
        upn=str(user.get("userPrincipalName") or ""),
        mail=user.get("mail"),
        usage_location=user.get("usageLocation"),
        proxy_addresses=tuple(user.get("proxyAddresses") or ()),
        sku_ids=frozenset(uuid.UUID(str(a["skuId"])) for a in user.get("assignedLicenses") or ()
                          if a.get("skuId")),
        immutable_id=user.get("onPremisesImmutableId"),
        sync_enabled=bool(user.get("onPremisesSyncEnabled")),
        sam=user.get("onPremisesSamAccountName"),
    )


# -- the client -----------------------------------------------------------------------------
class GraphClient:
    """What the service asks of Graph. ``sdk`` is the ``GraphServiceClient`` for other calls
    (role sync, sendMail): they go through the same pacing, retries and credential."""

    def __init__(self, graph: GraphSettings, identity: IdentitySettings,
                 ca_bundle: Any = None) -> None:
        self.settings = graph
        self.pacing = PacingHandler(graph)
        host = urlsplit(graph.url).hostname or ""
        http = httpx.AsyncClient(
            base_url=graph.url,
            timeout=httpx.Timeout(graph.timeout_seconds),
            verify=tls_context(ca_bundle),
            limits=httpx.Limits(max_connections=graph.concurrency * 2),
        )
        middleware: list[BaseMiddleware] = [
            self.pacing, RedirectHandler(), ParametersNameDecodingHandler(),
            UrlReplaceHandler(), UserAgentHandler(), GraphTelemetryHandler(),
        ]
        http = GraphClientFactory.create_with_custom_middleware(middleware, client=http)
        auth = AzureIdentityAuthenticationProvider(
            make_credential(identity), scopes=[scope_for(graph.url)], allowed_hosts=[host],
        )
        adapter = GraphRequestAdapter(auth, client=http)
        adapter.base_url = graph.url.rstrip("/")
        self.http = http
        self.adapter = adapter
        self.sdk = GraphServiceClient(request_adapter=adapter)
        self._skus: tuple[float, list[SubscribedSku]] | None = None
        self._skus_lock = asyncio.Lock()

    @property
    def counters(self) -> Counters:
        return self.pacing.counters

    async def close(self) -> None:
        await self.http.aclose()

    @asynccontextmanager
    async def errors(self, action: str, user: str = "") -> AsyncIterator[None]:
        """Turn SDK and transport failures into ``shared.errors`` types naming ``action``."""
        try:
            yield
        except ODataError as exc:
            raise _classify(exc, action, user) from None
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise TransientError(
                f"Graph did not answer {action} ({type(exc).__name__})", user=user, step=STEP,
                fix="none needed; the step is retried", retry_after=30,
            ) from None

    # -- users ---------------------------------------------------------------------------
    async def find_user(self, immutable: str, upn: str | None = None) -> CloudUser | None:
        """The synced user whose ``onPremisesImmutableId`` is ``immutable``, else the synced
        user with ``upn``; ``None`` when neither exists yet. A cloud-only account that merely
        shares the UPN is not taken for the on-premises user."""
        query = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(
            filter=f"onPremisesImmutableId eq {_odata_literal(immutable)}",
            count=True, select=USER_SELECT, top=1,
        )
        config = RequestConfiguration(query_parameters=query)
        config.headers.add("ConsistencyLevel", "eventual")
        async with self.errors("find user", upn or immutable):
            page = await self._json(self.sdk.users.to_get_request_information(config))
        if page.get("value"):
            return _cloud_user(page["value"][0])
        if not upn:
            return None
        select = UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(
            select=USER_SELECT)
        builder = self.sdk.users.by_user_id(upn)
        try:
            async with self.errors("find user", upn):
                found = await self._json(builder.to_get_request_information(
                    RequestConfiguration(query_parameters=select)))
        except PermanentError as exc:
            if "Request_ResourceNotFound" in exc.reason:
                return None
            raise
        if not found or not found.get("onPremisesSyncEnabled"):
            return None
        user = _cloud_user(found)
        if user.immutable_id and user.immutable_id != immutable:
            return None  # another on-premises object holds this UPN
        return user

    async def set_usage_location(self, user_id: str, country: str, *, user: str = "") -> None:
        builder = self.sdk.users.by_user_id(user_id)
        async with self.errors("set usageLocation", user):
            await self._send(builder.to_patch_request_information(User(usage_location=country)))

    async def assign_license(
        self, user_id: str, *, add: Sequence[uuid.UUID], remove: Sequence[uuid.UUID],
        user: str = "",
    ) -> None:
        """One ``assignLicense`` call adding ``add`` and removing ``remove``."""
        body = AssignLicensePostRequestBody(
            add_licenses=[AssignedLicense(sku_id=sku, disabled_plans=[]) for sku in add],
            remove_licenses=list(remove),
        )
        builder = self.sdk.users.by_user_id(user_id).assign_license
        async with self.errors("assign licence", user):
            await self._send(builder.to_post_request_information(body))  # the user, unread

    # The calls made for every user send what the SDK's request builders make (URL, query,
    # headers, body, auth, this client's middleware) but read Graph's JSON themselves: the
    # SDK's model parsing was the worker's largest CPU cost per user, more than all storage
    # and PowerShell traffic together (msgraph-sdk-python issue 584).
    async def _json(self, request: RequestInformation) -> dict[str, Any]:
        raw = await self.adapter.send_primitive_async(request, "bytes", ERRORS)
        found: dict[str, Any] = json.loads(raw) if raw else {}
        return found

    async def _send(self, request: RequestInformation) -> None:
        await self.adapter.send_no_response_content_async(request, ERRORS)

    async def license_details(self, user_id: str, *, user: str = "") -> list[str]:
        """Part numbers of the SKUs the user holds."""
        async with self.errors("read licence details", user):
            page = await self.sdk.users.by_user_id(user_id).license_details.get()
        return [str(d.sku_part_number) for d in (page.value if page and page.value else [])]

    async def subscribed_skus(self, *, max_age: float = 0.0) -> list[SubscribedSku]:
        """The tenant's SKUs with prepaid and consumed units; an answer younger than
        ``max_age`` seconds is reused (the licence step's capacity check may be a few seconds
        stale: Graph refuses an assignment past the last unit, which the step reads as a
        shortage)."""
        async with self._skus_lock:  # concurrent steps share one read
            cached = self._skus
            if cached is not None and time.monotonic() - cached[0] < max_age:
                return cached[1]
            skus = await self._read_skus()
            self._skus = (time.monotonic(), skus)
            return skus

    async def _read_skus(self) -> list[SubscribedSku]:
        async with self.errors("read subscribed SKUs"):
            page = await self._json(self.sdk.subscribed_skus.to_get_request_information())
        return [
            SubscribedSku(
                sku_id=uuid.UUID(str(sku["skuId"])),
                part_number=str(sku.get("skuPartNumber")),
                prepaid=int((sku.get("prepaidUnits") or {}).get("enabled") or 0),
                consumed=int(sku.get("consumedUnits") or 0),
                service_plans=tuple(str(plan.get("servicePlanName"))
                                    for plan in sku.get("servicePlans") or ()),
            )
            for sku in page.get("value") or ()
            if sku.get("skuId")
        ]


def _classify(exc: ODataError, action: str, user: str) -> ProvisioningError:
    status = exc.response_status_code or 0
    code = exc.error.code if exc.error and exc.error.code else "unknown"
    message = exc.error.message if exc.error and exc.error.message else str(exc)
    message = message.rstrip(".")
    reason = f"Graph answered {status} {code} to {action}: {message}"
    if status in RETRY_STATUSES or status >= 500:
        return TransientError(reason, user=user, step=STEP, fix="none needed; retried later",
                              retry_after=retry_after(exc.response_headers, 3))
    if status in (401, 403):
        return PermanentError(reason, user=user, step=STEP, fix=(
            "check AZURE_CREDENTIAL and that the app has User.ReadWrite.All, "
            "LicenseAssignment.ReadWrite.All and Organization.Read.All"))
    return PermanentError(reason, user=user, step=STEP,
                          fix="correct the user or the request Graph names, then retry")


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GraphClient] = (
    weakref.WeakKeyDictionary()
)


def graph_client(settings: Settings) -> GraphClient:
    """The Graph client of the running event loop (one per loop)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = GraphClient(settings.graph, settings.identity, settings.service.ca_bundle)
        _clients[loop] = client
    return client
