"""Azure Relay Hybrid Connections, the sender side: one byte stream to the premises per call.

The protocol is Microsoft's "Azure Relay Hybrid Connections protocol" (learn.microsoft.com,
azure-relay/relay-hybrid-connections-protocol); there is no maintained Python SDK, so this
module speaks it with aiohttp's WebSocket client:

1. ``wss://<namespace>/$hc/<path>?sb-hc-action=connect&sb-hc-id=<id>`` with the token in the
   ``ServiceBusAuthorization`` header. The relay holds the upgrade until a listener of that
   hybrid connection accepts (the rendezvous), then binary frames carry bytes both ways.
2. The token is the app identity's Entra token for ``https://relay.azure.net/.default``
   (role "Azure Relay Sender" on the hybrid connection), or, with ``RELAY_AUTH=sas`` only, a
   Shared Access Signature ``SharedAccessSignature sr=…&sig=…&se=…&skn=…`` made from a key in
   Key Vault (namespaces deployed by ``infra/`` have local auth off and refuse it).
3. The listener on the premises is Azure Relay Bridge (azbridge) 0.16.1, whose remote forward
   expects a preamble on every stream (``RemoteForwardBridge.HandleRelayConnectionAsync``):
   the sender writes ``1, 0, 0`` (version 1.0, stream mode), one length byte and the UTF-8
   port name (the target port as text, azbridge's default name for ``-T relay:host:port``);
   the bridge answers ``1, 0, 0`` and then passes bytes, or ``0, 0, x`` and closes, or closes
   without a word when it has no forward of that name.

What can go wrong, as the handlers see it (``shared.errors``)::

    ProvisioningError
     ├── TransientError   no listener connected (HTTP 404 "no listeners"); the relay or the
     │                    bridge did not answer in time (408/504, timeouts); relay 5xx; the
     │                    relay unreachable; a stream that ended before the bridge answered
     └── PermanentError   namespace not found (DNS); hybrid connection not found (404);
                          token refused (401); identity lacks "Azure Relay Sender" (403);
                          the relay's TLS certificate not trusted; the bridge refused the
                          preamble's version or mode

``shared.relay.forward.Health`` logs one ``relay_unreachable`` line when an endpoint's streams
start failing and one ``relay_restored`` line when they work again, whatever the number of users
in between.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import socket
import ssl
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

import aiohttp
from azure.core.credentials import AccessToken, TokenCredential

from shared.config import RelayLink
from shared.errors import PermanentError, ProvisioningError, TransientError
from shared.identity import credential, tls_context
from shared.log import get_logger, register_secret
from shared.secrets import SecretProvider

log = get_logger(__name__)

STEP = "relay"
# Entra ID scope of Azure Relay (learn.microsoft.com, azure-relay/authenticate-application:
# "Authenticate and authorize an application with Microsoft Entra ID to access Azure Relay").
ENTRA_SCOPE = "https://relay.azure.net/.default"
AUTH_HEADER = "ServiceBusAuthorization"
SAS_LIFETIME = 3600  # seconds; a fresh signature is made when less than half of it is left
TOKEN_MARGIN = 300  # an Entra token is fetched again this long before it expires
# azbridge 0.16.1's preamble: version 1.0, mode 0 = stream (1 = datagram).
PREAMBLE_VERSION = (1, 0)
STREAM_MODE = 0
# The largest WebSocket frame a stream accepts. The bridge pumps at most 64 KiB a frame
# (azbridge's buffer, and ours: ``relay_forward.CHUNK``), and what it carries is TLS, whose
# records are at most 16 KiB + 2 KiB; 1 MiB leaves 16 times azbridge's frame for a listener
# with a larger buffer (the Hybrid Connection Manager), and bounds what a compromised bridge
# can make a worker hold per stream (aiohttp's 0 meant no bound at all).
MAX_FRAME = 1024 * 1024
BRIDGE_VERSION = "azbridge 0.16.1"


@dataclass(frozen=True)
class Endpoint:
    """One hybrid connection, and the host:port its bridge forwards it to on the premises."""

    link: RelayLink
    path: str
    target_host: str
    target_port: int

    @property
    def namespace(self) -> str:
        return self.link.relay.host

    @property
    def url(self) -> str:
        return f"wss://{self.namespace}/$hc/{quote(self.path)}"

    @property
    def port_name(self) -> str:
        """The logical port name sent in the preamble: azbridge names a remote forward after its
        host port unless configured otherwise, and a single forward takes any numeric name."""
        return str(self.target_port)

    def describe(self) -> str:
        return f"hybrid connection '{self.path}' of relay {self.namespace}"


# -- tokens ----------------------------------------------------------------------------------


def sas_token(resource: str, key_name: str, key: str, expiry: int) -> str:
    """A Shared Access Signature for ``resource`` (``http://<namespace>/<path>/``): HMAC-SHA256
    over the URL-encoded resource and the expiry, keyed with the key's UTF-8 bytes."""
    encoded = quote_plus(resource, safe="")
    signed = f"{encoded}\n{expiry}".encode()
    digest = hmac.new(key.encode(), signed, hashlib.sha256).digest()
    signature = quote_plus(base64.b64encode(digest).decode(), safe="")
    return (f"SharedAccessSignature sr={encoded}&sig={signature}&se={expiry}"
            f"&skn={quote_plus(key_name, safe='')}")


class Tokens:
    """The ``ServiceBusAuthorization`` value for a link's hybrid connections, kept until it is
    near its end. Blocking work (the identity endpoint, Key Vault) runs in a thread."""

    def __init__(self, link: RelayLink) -> None:
        self._link = link
        self._credential: TokenCredential | None = None
        self._entra: AccessToken | None = None
        self._sas: dict[str, tuple[str, float]] = {}
        self._secrets: SecretProvider | None = None

    async def header(self, endpoint: Endpoint) -> str:
        if self._link.relay.auth == "sas":
            return await self._sas_token(endpoint)
        token = self._entra
        if token is None or token.expires_on - TOKEN_MARGIN < time.time():
            token = await asyncio.to_thread(self._fetch_entra)
            self._entra = token
        return token.token

    def _fetch_entra(self) -> AccessToken:
        if self._credential is None:
            self._credential = credential(self._link.identity)
        try:
            token = self._credential.get_token(ENTRA_SCOPE)
        except Exception as exc:  # azure-identity raises several types; all mean "no token"
            raise TransientError(
                f"the app's identity could not get a token for Azure Relay "
                f"({type(exc).__name__})",
                step=STEP,
                fix="check AZURE_CREDENTIAL and AZURE_CLIENT_ID (the app's managed identity)",
            ) from None
        register_secret(token.token)
        return token

    async def _sas_token(self, endpoint: Endpoint) -> str:
        cached = self._sas.get(endpoint.path)
        if cached and cached[1] - SAS_LIFETIME / 2 > time.time():
            return cached[0]
        if self._secrets is None:
            self._secrets = SecretProvider(self._link.identity, self._link.key_vault,
                                           ca_bundle=self._link.ca_bundle)
        relay = self._link.relay
        key = await self._secrets.aresolve(relay.sas_key, setting="RELAY_SAS_KEY")
        expiry = int(time.time()) + SAS_LIFETIME
        resource = f"http://{endpoint.namespace.split(':')[0]}/{endpoint.path}/"
        token = sas_token(resource, relay.sas_key_name or "", key, expiry)
        register_secret(token)
        self._sas[endpoint.path] = (token, float(expiry))
        return token

    def forget(self) -> None:
        """Drop what is cached: after a 401 the next stream gets a fresh token or key."""
        self._entra = None
        self._sas.clear()
        if self._secrets is not None:
            self._secrets.invalidate("RELAY_SAS_KEY")


# -- streams -----------------------------------------------------------------------------------

# The relay says why it refused in the HTTP reason phrase ("There are no listeners connected
# for the endpoint"), which aiohttp's handshake error does not keep; a trace hook does.
_REASONS: ContextVar[list[str] | None] = ContextVar("relay_reasons", default=None)


async def _keep_reason(_: aiohttp.ClientSession, __: object,
                       params: aiohttp.TraceRequestEndParams) -> None:
    reasons = _REASONS.get()
    if reasons is not None:
        reasons.append(params.response.reason or "")


def trace_config() -> aiohttp.TraceConfig:
    """The trace hook ``open_stream`` needs on its session, to read the relay's refusals."""
    config = aiohttp.TraceConfig()
    config.on_request_end.append(_keep_reason)
    return config



class Stream:
    """One relayed byte stream. ``read`` returns b"" at the end; ``write`` waits while the
    WebSocket's send buffer is full (aiohttp drains it), which is the back-pressure."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, pending: bytes) -> None:
        self._ws = ws
        self._pending = pending
        self.opened = time.monotonic()

    async def read(self) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        while True:
            message = await self._ws.receive()
            if message.type is aiohttp.WSMsgType.BINARY:
                if message.data:
                    return bytes(message.data)
            elif message.type is aiohttp.WSMsgType.TEXT:
                continue  # the hybrid connection protocol carries bytes; text is not ours
            elif message.type is aiohttp.WSMsgType.ERROR:  # a frame above MAX_FRAME, among others
                log.warning("relay_stream_refused", reason=str(message.data)[:200],
                            fix="check the bridge on the premises: no legitimate frame is "
                            f"larger than {MAX_FRAME} bytes")
                return b""
            else:  # CLOSE, CLOSING, CLOSED
                return b""

    async def write(self, data: bytes) -> None:
        await self._ws.send_bytes(data)

    @property
    def closed(self) -> bool:
        return self._ws.closed

    async def close(self) -> None:
        if not self._ws.closed:
            # The peer may be gone already; then there is nothing to be polite to.
            with contextlib.suppress(TimeoutError, OSError, aiohttp.ClientError):
                await self._ws.close()


def _preamble(endpoint: Endpoint) -> bytes:
    name = endpoint.port_name.encode()
    return bytes([*PREAMBLE_VERSION, STREAM_MODE, len(name)]) + name


async def open_stream(endpoint: Endpoint, session: aiohttp.ClientSession, tokens: Tokens,
                      tls: ssl.SSLContext) -> Stream:
    """Connect to ``endpoint`` as a sender and pass azbridge's preamble; raise the
    ``ProvisioningError`` that says what to do when that fails."""
    timeout = endpoint.link.relay.timeout_seconds
    reasons: list[str] = []
    _REASONS.set(reasons)
    try:
        async with asyncio.timeout(timeout):
            header = await tokens.header(endpoint)
            ws = await session.ws_connect(
                endpoint.url, params={"sb-hc-action": "connect", "sb-hc-id": str(uuid.uuid4())},
                headers={AUTH_HEADER: header}, ssl=tls, autoping=True, max_msg_size=MAX_FRAME,
                timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
            )
    except TimeoutError:
        raise TransientError(
            f"{endpoint.describe()} did not answer within {timeout:g} s",
            step=STEP, fix="nothing to do if it passes; otherwise check the bridge on the "
            "premises and the app's outbound HTTPS",
        ) from None
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status == 401:
            tokens.forget()
        raise refused(endpoint, exc.status, reasons[-1] if reasons else exc.message) from None
    except aiohttp.ClientConnectorCertificateError:
        raise PermanentError(
            f"the TLS certificate of relay {endpoint.namespace} is not trusted",
            step=STEP, fix="check RELAY_NAMESPACE; add the CA to CA_BUNDLE if it is internal",
        ) from None
    except aiohttp.ClientConnectorDNSError as exc:
        raise _dns_error(endpoint, exc) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise TransientError(
            f"relay {endpoint.namespace} could not be reached ({type(exc).__name__})",
            step=STEP, fix=f"check that the app may make outbound HTTPS connections to "
            f"{endpoint.namespace}:443",
        ) from None
    try:
        async with asyncio.timeout(timeout):
            await ws.send_bytes(_preamble(endpoint))
            pending = b""
            while len(pending) < 3:
                message = await ws.receive()
                if message.type is not aiohttp.WSMsgType.BINARY:
                    raise _unanswered(endpoint)
                pending += message.data
    except TimeoutError:
        await ws.close()
        raise TransientError(
            f"the bridge on {endpoint.describe()} did not answer the stream preamble within "
            f"{timeout:g} s", step=STEP, fix="check the bridge's log on the premises",
        ) from None
    except ProvisioningError:
        await ws.close()
        raise
    answer = tuple(pending[:3])
    if answer != (*PREAMBLE_VERSION, STREAM_MODE):
        await ws.close()
        raise _bridge_refused(endpoint, answer)
    return Stream(ws, pending[3:])


def refused(endpoint: Endpoint, status: int, reason: str) -> ProvisioningError:
    """The error for an HTTP status the relay answered a connect with (the protocol page's
    table: 404 path or listener, 401 token, 403 rights, 408/504 rendezvous timed out, 5xx)."""
    what = endpoint.describe()
    said = f"HTTP {status}{': ' + reason if reason else ''}"
    sas = endpoint.link.relay.auth == "sas"
    if status == 404 and "listener" in reason.lower():
        return TransientError(
            f"no listener is connected to {what} ({said})", step=STEP,
            fix=f"is the on-premises bridge running on '{endpoint.path}'? Start azbridge (or "
            f"the Hybrid Connection Manager) on the machine that reaches "
            f"{endpoint.target_host}:{endpoint.target_port}, and check it can reach "
            f"{endpoint.namespace} on port 443",
        )
    if status == 404:
        return PermanentError(
            f"{what} was not found ({said})", step=STEP,
            fix="correct RELAY_EXCHANGE_PATH / RELAY_AD_PATH, or create the hybrid connection "
            "(infra/ deploys one per endpoint)",
        )
    if status == 401:
        return PermanentError(
            f"relay {endpoint.namespace} refused the app's token for '{endpoint.path}' ({said})",
            step=STEP,
            fix="check RELAY_SAS_KEY_NAME and the RELAY_SAS_KEY secret, and that local (SAS) "
            "authentication is enabled on the namespace; or use RELAY_AUTH=entra" if sas else
            "check AZURE_CLIENT_ID names the app's managed identity (its token must be for "
            "https://relay.azure.net)",
        )
    if status == 403:
        return PermanentError(
            f"the identity lacks Azure Relay Sender on {what} ({said})", step=STEP,
            fix="give the SAS rule the Send right on that hybrid connection" if sas else
            "assign the role 'Azure Relay Sender' to the app's identity on that hybrid "
            "connection (infra/ does); a new assignment takes a few minutes to apply",
        )
    if status in (408, 504):
        return TransientError(
            f"the bridge on {what} did not accept the connection in time ({said})", step=STEP,
            fix="nothing to do if it passes; otherwise check the bridge's host and its log",
        )
    return TransientError(f"relay {endpoint.namespace} answered {said} for '{endpoint.path}'",
                          step=STEP, fix="nothing to do; the service retries")


def _dns_error(endpoint: Endpoint, exc: aiohttp.ClientConnectorDNSError) -> ProvisioningError:
    cause = exc.os_error
    if isinstance(cause, socket.gaierror) and cause.errno == socket.EAI_AGAIN:
        return TransientError(
            f"the name of relay {endpoint.namespace} could not be resolved right now",
            step=STEP, fix="nothing to do if it passes; otherwise check the app's DNS",
        )
    return PermanentError(
        f"relay namespace {endpoint.namespace} was not found (no such host name)", step=STEP,
        fix="check RELAY_NAMESPACE: the namespace's name (contoso-relay) or its host name "
        "(contoso-relay.servicebus.windows.net)",
    )


def _unanswered(endpoint: Endpoint) -> ProvisioningError:
    return TransientError(
        f"the bridge on {endpoint.describe()} closed the stream without answering its "
        f"preamble (port name '{endpoint.port_name}')", step=STEP,
        fix=f"if this repeats, check that the bridge forwards '{endpoint.path}' to "
        f"{endpoint.target_host}:{endpoint.target_port} with a remote forward of that port "
        f"(azbridge -T {endpoint.path}:{endpoint.target_host}:{endpoint.target_port})",
    )


def _bridge_refused(endpoint: Endpoint, answer: tuple[int, ...]) -> ProvisioningError:
    why = ("does not speak preamble version 1.0" if answer[2] == 0 else
           "forwards that port as datagrams (UDP), not as a stream")
    return PermanentError(
        f"the bridge on {endpoint.describe()} refused the stream: it {why} (answered "
        f"{', '.join(map(str, answer))})", step=STEP,
        fix=f"run {BRIDGE_VERSION} (or a release with the same preamble) with a TCP remote "
        f"forward for '{endpoint.path}'",
    )


def client_tls(ca_bundle: Path | None) -> ssl.SSLContext:
    """TLS towards the relay: public CAs plus CA_BUNDLE (the lab's relay has a lab-CA cert)."""
    return tls_context(ca_bundle)
