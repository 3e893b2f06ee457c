"""The service's one edge to Microsoft Graph: msgraph-sdk's request pipeline on httpx, paced
and retried (``shared.graph.pacing``), one credential, one error classifier.

One ``GraphClient`` per event loop (``graph_client(settings)``): its httpx client is bound to
the loop it was made on. Everything the service asks of Graph goes through it: the licence
step's user and SKU calls, the role adapter (``shared.roles.graph``) and ``sendMail``
(``shared.mail.sender``), so all of them share the pacing, the retries and the token.

The calls read Graph's JSON themselves and send what kiota's request adapter sends (auth, this
client's middleware): the SDK's model parsing was the worker's largest CPU cost per user
(msgraph-sdk-python issue 584). ``transport=`` is the test seam: unit tests hand in
``httpx.MockTransport`` and exercise the real pipeline with no peer.

Why no ``$batch`` here: Graph charges every batch item against the same quotas, so batching
saves round trips but no budget, and the licence step works on one user per queue message.

Errors (``classify`` is the only place a Graph answer becomes an error)::

    ProvisioningError
     ├── TransientError     429, 5xx, timeouts, dropped connections (``retry_after`` set)
     └── PermanentError     Graph's certificate not trusted
          └── GraphRefusal  any other answer; ``status`` and ``code`` let callers decide
                            whether it means "already done" or "not found"
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
from azure.core.credentials import TokenCredential
from kiota_abstractions.api_error import APIError
from kiota_abstractions.method import Method
from kiota_abstractions.request_information import RequestInformation
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
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.graph_request_adapter import GraphRequestAdapter
from msgraph.graph_service_client import GraphServiceClient
from msgraph_core import GraphClientFactory
from msgraph_core.middleware import GraphTelemetryHandler

from shared.config import GraphSettings, IdentitySettings, Settings
from shared.entra import CloudUser
from shared.errors import PermanentError, TransientError, certificate_refused
from shared.graph.pacing import MAX_ATTEMPTS, RETRY_STATUSES, Counters, PacingHandler, retry_after
from shared.identity import credential as make_credential
from shared.identity import scope_for, tls_context

STEP = "graph"
ERRORS = {"XXX": ODataError}  # as the SDK's request builders map them
USER_SELECT = (
    "id", "userPrincipalName", "displayName", "mail", "usageLocation", "proxyAddresses",
    "assignedLicenses", "onPremisesImmutableId", "onPremisesSyncEnabled",
    "onPremisesSamAccountName",
)
JSONObject = dict[str, object]


def odata_literal(value: str) -> str:
    """A string literal for a ``$filter``: quoted, with ``'`` doubled (OData ABNF)."""
    return "'" + value.replace("'", "''") + "'"


def segment(value: str) -> str:
    """A path segment (an id or a UPN), percent-encoded."""
    return quote(value, safe="@")


def objects(value: object) -> list[JSONObject]:
    """The JSON objects in a list property (``value`` of a page); anything else is skipped."""
    return [dict(item) for item in value if isinstance(item, dict)] if isinstance(
        value, list) else []


# -- errors ----------------------------------------------------------------------------------
class GraphRefusal(PermanentError):
    """Graph answered with an error that retrying will not change."""

    def __init__(self, reason: str, *, status: int, code: str, user: str = "",
                 step: str = STEP, fix: str = "") -> None:
        super().__init__(reason, user=user, step=step, fix=fix)
        self.status = status
        self.code = code


# Graph's refusals that are about a user's data, each with the fix a helpdesk can make (the
# messages of assignLicense and PATCH /users as Graph words them; matched in lower case).
USER_DATA_FIXES = (
    ("invalid usage location", "set the user's country attribute to a country where the "
     "licence is sold; the service sets usageLocation from it"),
    ("property 'usageLocation'", "set the user's country attribute to an ISO 3166 country code"),
    ("mutually exclusive", "the user holds another licence whose plans conflict with this one: "
     "remove it in the Microsoft 365 admin centre (or from the group that assigns it)"),
    ("depends on the service plan", "a plan of the licence needs another the user lacks: assign "
     "the prerequisite licence first"),
    ("inherited from a group", "the user's licence comes from group-based licensing: take the "
     "user out of that group, or licence the user by that group instead"),
    ("on-premises mastered", "change the value in Active Directory; Entra Connect syncs it"),
    ("does not correspond to a valid company license", "the tenant has no such SKU: map the "
     "licence name in LICENSE_MAP to a SKU the tenant holds"),
    ("does not exist or one of its queried reference-property objects are not present",
     "the cloud user is gone: check Entra Connect (deleted, or moved out of the sync scope)"),
)


def classify(status: int, code: str, message: str, headers: Mapping[str, str] | None, *,
             action: str, user: str = "") -> TransientError | GraphRefusal:
    """The error a Graph answer means: throttled or failing is transient (after
    ``retry_after``); anything else is a refusal carrying Graph's status and code."""
    reason = f"Graph answered {status} {code} to {action}: {message.rstrip('.')}"
    if status in RETRY_STATUSES or status >= 500:
        return TransientError(reason, user=user, step=STEP, fix="none needed; retried later",
                              retry_after=retry_after(headers, MAX_ATTEMPTS))
    lowered = message.lower()
    fix = next((fix for words, fix in USER_DATA_FIXES if words.lower() in lowered),
               "correct what Graph names, on the user in AD or in the tenant, then retry")
    if status in (401, 403):
        fix = ("check AZURE_CREDENTIAL and that the app holds the Graph permissions "
               "docs/permissions.md lists for the enabled features")
    return GraphRefusal(reason, status=status, code=code, user=user, fix=fix)


def _from_api_error(exc: APIError, action: str, user: str) -> TransientError | GraphRefusal:
    error = getattr(exc, "error", None)  # ODataError's main error, when the body was Graph's
    code = str(getattr(error, "code", None) or "unknown")
    message = str(getattr(error, "message", None) or "no Graph error in the answer")
    headers = exc.response_headers if isinstance(exc.response_headers, Mapping) else None
    return classify(int(exc.response_status_code or 0), code, message, headers,
                    action=action, user=user)


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


# -- the client ------------------------------------------------------------------------------
class GraphClient:
    """What the service asks of Graph."""

    def __init__(self, graph: GraphSettings, identity: IdentitySettings,
                 ca_bundle: Path | None = None, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 credential: TokenCredential | None = None) -> None:
        self.settings = graph
        self.pacing = PacingHandler(graph)
        self.base_url = graph.url.rstrip("/")
        # Graph's beta endpoint: only what v1.0 lacks (a role definition's isPrivileged).
        self.beta_url = self.base_url.rsplit("/", 1)[0] + "/beta"
        http = httpx.AsyncClient(
            base_url=self.base_url, timeout=httpx.Timeout(graph.timeout_seconds),
            verify=tls_context(ca_bundle),
            limits=httpx.Limits(max_connections=graph.concurrency * 2), transport=transport,
        )
        middleware: list[BaseMiddleware] = [
            self.pacing, RedirectHandler(), ParametersNameDecodingHandler(),
            UrlReplaceHandler(), UserAgentHandler(), GraphTelemetryHandler(),
        ]
        self.http = GraphClientFactory.create_with_custom_middleware(middleware, client=http)
        auth = AzureIdentityAuthenticationProvider(
            credential or make_credential(identity), scopes=[scope_for(graph.url)],
            allowed_hosts=[urlsplit(graph.url).hostname or ""],
        )
        self.adapter = GraphRequestAdapter(auth, client=self.http)
        self.adapter.base_url = self.base_url
        # Made for its side effect too: it registers the JSON parsers Graph's errors need.
        self.sdk = GraphServiceClient(request_adapter=self.adapter)
        self._skus: tuple[float, list[SubscribedSku]] | None = None
        self._skus_lock = asyncio.Lock()

    @property
    def counters(self) -> Counters:
        return self.pacing.counters

    async def close(self) -> None:
        await self.http.aclose()
        for cached in _clients.values():
            for key in [k for k, client in cached.items() if client is self]:
                del cached[key]

    @asynccontextmanager
    async def errors(self, action: str, user: str = "") -> AsyncIterator[None]:
        """Turn Graph's answers and transport failures into ``shared.errors`` types."""
        try:
            yield
        except APIError as exc:
            raise _from_api_error(exc, action, user) from None
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            if certificate_refused(exc):
                raise PermanentError(
                    f"Graph's TLS certificate is not trusted ({action})", user=user, step=STEP,
                    fix="add the CA that issued it to CA_BUNDLE") from None
            raise TransientError(
                f"Graph did not answer {action} ({type(exc).__name__})", user=user, step=STEP,
                fix="none needed; retried later", retry_after=30,
            ) from None

    # -- requests ----------------------------------------------------------------------------
    def url(self, path: str, query: Mapping[str, str] | None = None) -> str:
        """``path`` under GRAPH_URL (or an absolute URL, as ``@odata.nextLink`` gives)."""
        url = path if "://" in path else f"{self.base_url}/{path.lstrip('/')}"
        if query:
            pairs = "&".join(f"{key}={quote(value, safe=',')}" for key, value in query.items())
            url += ("&" if "?" in url else "?") + pairs
        return url

    async def call(self, method: str, path: str, *, action: str, user: str = "",
                   query: Mapping[str, str] | None = None,
                   body: Mapping[str, object] | bytes | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONObject:
        """One Graph request through the pipeline; its JSON answer (``{}`` when empty)."""
        info = RequestInformation(Method(method))
        info.url = self.url(path, query)
        info.headers.try_add("Accept", "application/json")
        for name, value in (headers or {}).items():
            info.headers.try_add(name, value)
        if body is not None:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            info.set_stream_content(content, "application/json")
        async with self.errors(action, user):
            raw = await self.adapter.send_primitive_async(info, "bytes", ERRORS)
        found = json.loads(raw) if raw else {}
        return found if isinstance(found, dict) else {}

    async def pages(self, path: str, *, action: str, user: str = "",
                    query: Mapping[str, str] | None = None,
                    headers: Mapping[str, str] | None = None) -> list[JSONObject]:
        """Every item of a collection, following ``@odata.nextLink``."""
        page = await self.call("GET", path, action=action, user=user, query=query,
                               headers=headers)
        items = objects(page.get("value"))
        while isinstance(link := page.get("@odata.nextLink"), str) and link:
            page = await self.call("GET", link, action=action, user=user, headers=headers)
            items += objects(page.get("value"))
        return items

    # -- users -------------------------------------------------------------------------------
    async def user_by_immutable_id(self, immutable: str, *, user: str = "") -> CloudUser | None:
        """The synced user whose ``onPremisesImmutableId`` is ``immutable``, if any."""
        page = await self.call(
            "GET", "users", action="find user", user=user or immutable,
            query={"$filter": f"onPremisesImmutableId eq {odata_literal(immutable)}",
                   "$count": "true", "$select": ",".join(USER_SELECT), "$top": "1"},
            headers={"ConsistencyLevel": "eventual"})
        found = objects(page.get("value"))
        return CloudUser.from_json(found[0]) if found else None

    async def user(self, key: str) -> CloudUser | None:
        """The user with this object id or UPN; None when Graph has none (or ``key`` names a
        group or an app: ``/users`` knows only users)."""
        try:
            found = await self.call("GET", f"users/{segment(key)}", action="read user",
                                    user=key, query={"$select": ",".join(USER_SELECT)})
        except GraphRefusal as exc:
            if exc.status == 404:
                return None
            raise
        return CloudUser.from_json(found)

    async def find_user(self, immutable: str, upn: str | None = None) -> CloudUser | None:
        """The synced user whose ``onPremisesImmutableId`` is ``immutable``, else the synced
        user with ``upn``; ``None`` when neither exists yet. A cloud-only account that merely
        shares the UPN is not taken for the on-premises user."""
        found = await self.user_by_immutable_id(immutable, user=upn or immutable)
        if found is not None or not upn:
            return found
        by_upn = await self.user(upn)
        if by_upn is None or not by_upn.synced:
            return None
        if by_upn.immutable_id and by_upn.immutable_id != immutable:
            return None  # another on-premises object holds this UPN
        return by_upn

    async def set_usage_location(self, user_id: str, country: str, *, user: str = "") -> None:
        await self.call("PATCH", f"users/{segment(user_id)}", action="set usageLocation",
                        user=user, body={"usageLocation": country})

    async def assign_license(
        self, user_id: str, *, add: Sequence[uuid.UUID], remove: Sequence[uuid.UUID],
        user: str = "",
    ) -> None:
        """One ``assignLicense`` call adding ``add`` and removing ``remove``."""
        body = {"addLicenses": [{"skuId": str(sku), "disabledPlans": []} for sku in add],
                "removeLicenses": [str(sku) for sku in remove]}
        await self.call("POST", f"users/{segment(user_id)}/assignLicense",
                        action="assign licence", user=user, body=body)

    async def license_details(self, user_id: str, *, user: str = "") -> list[str]:
        """Part numbers of the SKUs the user holds."""
        found = await self.pages(f"users/{segment(user_id)}/licenseDetails",
                                 action="read licence details", user=user)
        return [str(d.get("skuPartNumber")) for d in found]

    # -- the tenant ----------------------------------------------------------------------------
    async def subscribed_skus(self, *, max_age: float = 0.0) -> list[SubscribedSku]:
        """The tenant's SKUs with prepaid and consumed units; an answer younger than
        ``max_age`` seconds is reused (the licence step's capacity check may be a few seconds
        stale: Graph refuses an assignment past the last unit, which the step reads as a
        shortage)."""
        async with self._skus_lock:  # concurrent steps share one read
            cached = self._skus
            if cached is not None and time.monotonic() - cached[0] < max_age:
                return cached[1]
            skus = [_sku(s) for s in await self.pages("subscribedSkus",
                                                      action="read subscribed SKUs")
                    if s.get("skuId")]
            self._skus = (time.monotonic(), skus)
            return skus

    # -- mail --------------------------------------------------------------------------------
    async def send_mail(self, sender: str, message: bytes, *, action: str) -> None:
        """``POST /users/{sender}/sendMail`` with ``message``, the JSON body, as it is."""
        await self.call("POST", f"users/{segment(sender)}/sendMail", action=action,
                        body=message)


def _sku(sku: JSONObject) -> SubscribedSku:
    prepaid = sku.get("prepaidUnits")
    plans = sku.get("servicePlans")
    return SubscribedSku(
        sku_id=uuid.UUID(str(sku["skuId"])),
        part_number=str(sku.get("skuPartNumber")),
        prepaid=int(str(prepaid.get("enabled") or 0)) if isinstance(prepaid, dict) else 0,
        consumed=int(str(sku.get("consumedUnits") or 0)),
        service_plans=tuple(str(p.get("servicePlanName")) for p in objects(plans)),
    )


_Key = tuple[GraphSettings, IdentitySettings, Path | None]
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_Key, GraphClient]] = (
    weakref.WeakKeyDictionary()
)


def graph_client_for(graph: GraphSettings, identity: IdentitySettings,
                     ca_bundle: Path | None) -> GraphClient:
    """The Graph client of the running event loop for these settings (one per loop)."""
    cached = _clients.setdefault(asyncio.get_running_loop(), {})
    key = (graph, identity, ca_bundle)
    if key not in cached:
        cached[key] = GraphClient(graph, identity, ca_bundle)
    return cached[key]


def graph_client(settings: Settings) -> GraphClient:
    """The Graph client of the running event loop (one per loop)."""
    return graph_client_for(settings.graph, settings.identity, settings.service.ca_bundle)

