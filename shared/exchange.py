"""Exchange's PowerShell endpoint (``https://<exchange>/PowerShell``, configuration
``Microsoft.Exchange``) through pypsrp.

One ``ExchangeClient`` per worker keeps one runspace pool open and reuses it for every call;
a pool that broke (connection dropped, shell gone, idle too long) is replaced on the next
call. Cmdlets are built with ``add_cmdlet`` + ``add_parameter`` only, so an identity is
always a value and never code.

How failures map to ``shared.errors`` (``step="mailbox"``; the caller adds the user)::

    ProvisioningError
     ├── TransientError   connection refused, reset or timed out; HTTP 5xx; WS-Management
     │                    faults; throttled sessions (Exchange's MaxConcurrency); error
     │                    records Exchange marks as transient or does not explain
     └── PermanentError   HTTP 401 (credentials) and other 4xx (URL or configuration);
                          TLS certificate not trusted; error records for an unknown or
                          ambiguous identity, an already mail-enabled user, an address in
                          use, a cmdlet the account may not run, a refused parameter

The password goes into pypsrp's transport and nowhere else: no log, no exception text.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests
from pypsrp.exceptions import (
    AuthenticationError,
    WinRMError,
    WinRMTransportError,
    WSManFaultError,
)
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import NAMESPACES, WSMan

from . import relay_forward
from .config import ExchangeSettings
from .errors import PermanentError, ProvisioningError, TransientError
from .log import get_logger, redact
from .relay_tls import pin_session

log = get_logger(__name__)

STEP = "mailbox"

# Error records whose cause the caller must fix; keyed by the exception's short type name
# (ErrorCategory_Reason), with the fix an operator reads.
_PERMANENT_REASONS = {
    "ManagementObjectNotFoundException": (
        "check that the user still exists in Active Directory and is in a scope Exchange reads"
    ),
    "ManagementObjectAmbiguousException": (
        "make the identity unique (Exchange matched several objects)"
    ),
    "RecipientTaskException": (
        "the user is already mail-enabled (mailbox, mail user or remote mailbox); convert it by "
        "hand with the Exchange tools or take it out of the provisioning group"
    ),
    "ProxyAddressExistsException": (
        "another recipient already uses the address; free it or give the user another alias"
    ),
    "ADObjectAlreadyExistsException": (
        "another recipient already uses the address; free it or give the user another alias"
    ),
    "CommandNotFoundException": (
        "give the Exchange service account (EXCHANGE_USER) the Mail Recipients role, e.g. "
        "through the Recipient Management role group"
    ),
    "ParseException": "this is a bug in the service: report it",
    # Exchange refused a value, and the values come from the user's attributes (the alias and
    # addresses derive from mailNickname and the UPN): the helpdesk can fix those.
    "ParameterBindingException": (
        "check the user's mailNickname and userPrincipalName in AD for characters Exchange "
        "does not accept in an alias or e-mail address, and correct them"
    ),
    "ParameterBindingArgumentTransformationException": (
        "check the user's alias, routing domain (ROUTING_DOMAIN) and addresses"
    ),
}
# ErrorCategory values that mean "come back later".
_TRANSIENT_CATEGORIES = {15, 19, 21, 27, 29, 30}  # timeout, busy, unavailable, connection, limits
_THROTTLE_RETRY_SECONDS = 60.0


@dataclass(frozen=True)
class RemoteMailbox:
    """What ``Get-RemoteMailbox`` / ``Enable-RemoteMailbox`` return, in plain values."""

    identity: str
    guid: str | None
    name: str | None
    alias: str | None
    primary_smtp_address: str | None
    remote_routing_address: str | None  # without the ``SMTP:`` prefix
    email_addresses: tuple[str, ...]
    recipient_type_details: str | None

    @classmethod
    def from_output(cls, obj: Any) -> RemoteMailbox:
        """Build from a deserialised PSObject (adapted or note properties, as Exchange and
        PowerShell send them)."""
        props: dict[str, Any] = {}
        for bag in ("adapted_properties", "extended_properties"):
            props.update(getattr(obj, bag, None) or {})

        def text(name: str) -> str | None:
            value = props.get(name)
            return None if value is None else str(value)

        addresses = props.get("EmailAddresses") or []
        if not isinstance(addresses, (list, tuple)):
            addresses = list(getattr(addresses, "list", None) or [addresses])
        return cls(
            identity=text("Identity") or text("DistinguishedName") or "",
            guid=text("Guid"),
            name=text("Name"),
            alias=text("Alias"),
            primary_smtp_address=text("PrimarySmtpAddress"),
            remote_routing_address=strip_smtp(text("RemoteRoutingAddress")),
            email_addresses=tuple(str(a) for a in addresses),
            recipient_type_details=text("RecipientTypeDetails"),
        )


def strip_smtp(address: str | None) -> str | None:
    """``SMTP:a@b`` / ``smtp:a@b`` / ``a@b`` → ``a@b``."""
    if address is None:
        return None
    return address[5:] if address.lower().startswith("smtp:") else address


class _WSMan(WSMan):
    """pypsrp re-sends a Receive that timed out five times with growing pauses (minutes in
    all); once is enough here: a message that waits longer is retried from the queue."""

    def receive(self, resource_uri: str, resource: Any, option_set: Any = None,
                selector_set: Any = None, timeout: int | None = None) -> Any:
        response = self.invoke(
            "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive",
            resource_uri, resource, option_set, selector_set, timeout,
            retries_on_read_timeout=1,
        )
        return response.find("s:Body", namespaces=NAMESPACES)


@dataclass(frozen=True)
class _Result:
    output: list[Any]
    errors: list[Any]
    failed: bool


class ExchangeClient:
    """A reused PSRP session to Exchange. Thread-safe: calls are serialised, as one
    runspace pool runs one pipeline at a time here."""

    def __init__(
        self,
        settings: ExchangeSettings,
        *,
        password: str,
        ca_bundle: Path | None,
        idle_reopen_seconds: float = 600.0,
    ) -> None:
        self._settings = settings
        self._password = password
        self._ca_bundle = ca_bundle
        # Exchange's IIS drops idle PowerShell sessions (15 min by default); opening a new
        # pool before that beats failing a message on a dead one.
        self._idle_reopen = idle_reopen_seconds
        self._lock = threading.Lock()
        self._pool: RunspacePool | None = None
        self._last_used = 0.0
        self.pools_opened = 0
        url = urlparse(settings.url)
        self._host = url.hostname or ""
        self._port = url.port or 443
        self._path = url.path.lstrip("/") or "PowerShell"

    # -- public -------------------------------------------------------------------------
    def get_remote_mailbox(self, identity: str) -> RemoteMailbox | None:
        """The remote mailbox ``identity`` names, or None when Exchange has none."""
        result = self._invoke("Get-RemoteMailbox", [("Identity", identity)])
        not_found = [e for e in result.errors
                     if _reason(e) == "ManagementObjectNotFoundException"]
        if result.errors and len(not_found) == len(result.errors):
            return None
        if result.errors or result.failed:
            raise self._error("Get-RemoteMailbox", identity, result)
        if not result.output:
            return None
        return RemoteMailbox.from_output(result.output[0])

    def enable_remote_mailbox(
        self,
        identity: str,
        routing_address: str,
        *,
        primary_smtp_address: str | None = None,
        alias: str | None = None,
    ) -> RemoteMailbox:
        """``Enable-RemoteMailbox -Identity identity -RemoteRoutingAddress routing_address``
        (with ``-PrimarySmtpAddress`` / ``-Alias`` when given); returns the new mailbox."""
        parameters = [("Identity", identity), ("RemoteRoutingAddress", routing_address)]
        if primary_smtp_address:
            parameters.append(("PrimarySmtpAddress", primary_smtp_address))
        if alias:
            parameters.append(("Alias", alias))
        result = self._invoke("Enable-RemoteMailbox", parameters)
        if result.errors or result.failed or not result.output:
            raise self._error("Enable-RemoteMailbox", identity, result)
        return RemoteMailbox.from_output(result.output[0])

    def close(self) -> None:
        """Close the runspace pool (best effort: the server reaps it anyway)."""
        with self._lock:
            self._discard(polite=True)

    def __enter__(self) -> ExchangeClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- pool ---------------------------------------------------------------------------
    def _connect(self) -> RunspacePool:
        timeout = self._settings.timeout_seconds
        proxy = None
        link = self._settings.relay
        if link is not None:
            # Through the relay: the forwarder is an HTTP CONNECT proxy for this host:port
            # only, and requests checks the certificate against the host in EXCHANGE_URL.
            forwarder = relay_forward.tunnel(link, 0, self._host, self._port, http_connect=True)
            forwarder.open()  # raises the relay's TransientError / PermanentError
            proxy = forwarder.proxy_url
        wsman = _WSMan(
            self._host,
            port=self._port,
            path=self._path,
            ssl=True,
            username=self._settings.user,
            password=self._password,
            auth=self._settings.auth,
            # pypsrp hands this to requests as `verify`, which takes a CA bundle path too.
            cert_validation=str(self._ca_bundle) if self._ca_bundle else True,  # type: ignore[arg-type]
            connection_timeout=min(10.0, timeout),  # type: ignore[arg-type]
            read_timeout=timeout,  # type: ignore[arg-type]  # requests takes float seconds
            # The WS-Management operation timeout must end before the HTTP read timeout.
            operation_timeout=max(1, int(timeout) - 5),
            reconnection_retries=0,
            reconnection_backoff=0.5,
            proxy=proxy,
        )
        if proxy is not None:
            pin_session(wsman.transport)  # no environment proxy or CA file may interfere
        pool = RunspacePool(wsman, configuration_name=self._settings.configuration_name)
        try:
            pool.open()
        except BaseException:
            wsman.close()
            raise
        self.pools_opened += 1
        log.info("exchange_pool_opened", step=STEP, endpoint=self._settings.url,
                 pools_opened=self.pools_opened)
        return pool

    def _current_pool(self) -> RunspacePool:
        idle = time.monotonic() - self._last_used
        if self._pool is not None and idle > self._idle_reopen:
            self._discard(polite=True)
        if self._pool is None:
            self._pool = self._connect()
        return self._pool

    def _discard(self, *, polite: bool) -> None:
        """Forget the pool. ``polite`` also deletes the shell on the server, which is worth
        a round trip only while the connection is known to work."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if polite:
            try:
                pool.close()
            except Exception as exc:  # the pool is being thrown away either way
                log.info("exchange_pool_close_failed", step=STEP,
                         error=type(exc).__name__)
        pool.connection.close()

    def _invoke(self, cmdlet: str, parameters: Sequence[tuple[str, str]]) -> _Result:
        with self._lock:
            reused = self._pool is not None
            try:
                pool = self._current_pool()
                shell = PowerShell(pool)
                shell.add_cmdlet(cmdlet)
                for name, value in parameters:
                    shell.add_parameter(name, value)
                output = shell.invoke()
            except ProvisioningError:  # the relay said what is wrong; the pool never opened
                self._discard(polite=False)
                raise
            except (AuthenticationError, requests.exceptions.RequestException, WinRMError,
                    OSError) as exc:
                # Delete the shell on the server unless it stopped answering: an abandoned
                # shell counts against Exchange's per-user session limit until it idles out.
                self._discard(polite=not isinstance(exc, requests.exceptions.Timeout))
                raise _transport_error(exc, cmdlet, self._settings) from None
            except Exception as exc:
                # pypsrp state errors on a reused pool mean the pool is unusable.
                self._discard(polite=False)
                raise TransientError(
                    f"the PowerShell session to Exchange failed during {cmdlet} "
                    f"({type(exc).__name__})",
                    step=STEP,
                    fix="nothing to do; the service opens a new session and retries",
                ) from None
            self._last_used = time.monotonic()
            log.debug("exchange_cmdlet", step=STEP, cmdlet=cmdlet, reused_pool=reused,
                      had_errors=shell.had_errors)
            result = _Result(list(output), list(shell.streams.error), bool(shell.had_errors))
            self._release(shell)
            return result

    def _release(self, shell: PowerShell) -> None:
        """End the finished pipeline, as PowerShell's own client does: pypsrp keeps every
        pipeline of a pool, with its output, until it is closed (and the server its command),
        so a pool reused for thousands of users grew by some 15 KB per cmdlet."""
        try:
            shell.close()
        except Exception as exc:  # the cmdlet's result is in hand either way
            shell.runspace_pool.pipelines.pop(shell.id, None)
            log.info("exchange_pipeline_close_failed", step=STEP, error=type(exc).__name__)

    # -- errors -------------------------------------------------------------------------
    def _error(self, cmdlet: str, identity: str, result: _Result) -> ProvisioningError:
        if not result.errors:
            return TransientError(
                f"Exchange's {cmdlet} for '{identity}' returned nothing and no error",
                step=STEP, fix="nothing to do; the service retries",
            )
        record = result.errors[0]
        reason = _reason(record)
        message = redact(str(record))
        text = f"Exchange refused {cmdlet} for '{identity}': {message}"
        if reason in _PERMANENT_REASONS:
            return PermanentError(text, step=STEP, fix=_PERMANENT_REASONS[reason])
        category = getattr(record, "category", None)
        if "Transient" in reason or category in _TRANSIENT_CATEGORIES:
            return TransientError(text, step=STEP, fix="nothing to do; the service retries")
        if category in (5, 6, 7, 13, 17, 18, 20):  # argument, data, operation, not found ...
            return PermanentError(text, step=STEP,
                                  fix="read Exchange's message above and correct the user")
        return TransientError(text, step=STEP,
                              fix="nothing to do; the service retries, and reports the user "
                                  "if the error persists")


def _reason(record: Any) -> str:
    """The exception's short type name, which Exchange puts in ErrorCategory_Reason."""
    reason = getattr(record, "reason", None) or ""
    if not reason:
        fq = getattr(record, "fq_error", "") or ""
        reason = fq.split(",")[0].split("]")[-1].strip()
    return str(reason)


def _transport_error(exc: Exception, cmdlet: str, settings: ExchangeSettings) -> (
        ProvisioningError):
    where = f"Exchange at {settings.url}"
    if isinstance(exc, AuthenticationError):
        return PermanentError(
            f"{where} refused the credentials of {settings.user} (HTTP 401, {settings.auth})",
            step=STEP,
            fix="check EXCHANGE_USER and the Exchange password secret in Key Vault, and that "
                "the account is not locked out",
        )
    if isinstance(exc, requests.exceptions.SSLError):
        return PermanentError(
            f"the TLS certificate of {where} is not trusted",
            step=STEP,
            fix="add the CA that issued Exchange's certificate to CA_BUNDLE, or check "
                "EXCHANGE_URL's host name",
        )
    if isinstance(exc, WSManFaultError):
        reason = redact(str(exc.reason or exc.code))
        retry_after = (_THROTTLE_RETRY_SECONDS
                       if "maximum number of connections" in reason else None)
        return TransientError(
            f"{where} failed {cmdlet}: {reason}",
            step=STEP,
            fix="nothing to do; the service retries (if this repeats, check Exchange's "
                "throttling policy and the hybrid connection)",
            retry_after=retry_after,
        )
    if isinstance(exc, WinRMTransportError):
        status = int(exc.code or 0)
        if 400 <= status < 500:
            return PermanentError(
                f"{where} answered HTTP {status} to {cmdlet}",
                step=STEP,
                fix="check EXCHANGE_URL (https://<server>/PowerShell) and "
                    "EXCHANGE_CONFIGURATION_NAME",
            )
        return TransientError(
            f"{where} answered HTTP {status} to {cmdlet}",
            step=STEP, fix="nothing to do; the service retries",
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return TransientError(
            f"{where} did not answer {cmdlet} within {settings.timeout_seconds:g} s",
            step=STEP, fix="nothing to do; the service retries",
        )
    return TransientError(
        f"the connection to {where} failed during {cmdlet} ({type(exc).__name__})",
        step=STEP,
        fix="nothing to do; the service retries (if this repeats, check the hybrid "
            "connection and that Exchange is up)",
    )
