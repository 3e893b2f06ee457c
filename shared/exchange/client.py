"""Exchange's PowerShell endpoint (``https://<exchange>/PowerShell``, configuration
``Microsoft.Exchange``) through pypsrp.

One ``ExchangeClient`` per worker keeps one runspace pool open and reuses it for every call;
a pool that broke (connection dropped, shell gone, idle too long) is replaced on the next
call. Cmdlets are built with ``add_cmdlet`` + ``add_parameter`` only, so an identity is
always a value and never code.

How Exchange's answers become ``shared.errors``: ``shared.exchange.errors``.

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
)
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import NAMESPACES, WSMan

from shared import telemetry
from shared.config import ExchangeSettings
from shared.errors import ProvisioningError, TransientError
from shared.exchange.errors import record_error, record_reason, transport_error
from shared.log import get_logger
from shared.relay import forward as relay_forward
from shared.relay.tls import pin_session

log = get_logger(__name__)

STEP = "mailbox"
# The idle timeout each runspace pool asks Exchange for (rsp:IdleTimeOut in the shell's Create,
# what PowerShell sends for PSSessionOption.IdleTimeout, "how long the runspace on the server
# waits before it declares the client dead and closes itself down": learn.microsoft.com,
# System.Management.Automation.Remoting.PSSessionOption.IdleTimeout). Without it a worker that
# dies (SIGKILL, an instance recycled) leaves its pools open for IIS's 15 minutes, and each
# counts against the account's 18 (PowerShellMaxConcurrency): a few such deaths and no worker
# can open a pool at all. The worker itself replaces a pool idle for three quarters of that,
# before Exchange drops it.
SHELL_IDLE_TIMEOUT_SECONDS = 120
REOPEN_AFTER_IDLE_SHARE = 0.75

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
    remote_recipient_type: str | None = None  # "ProvisionMailbox", "Migrated", ...
    # Leavers: HiddenFromAddressListsEnabled; ArchiveStatus and InPlaceHolds, which Entra
    # Connect's Exchange hybrid writeback copies from Exchange Online (None: not reported)
    hidden: bool | None = None
    archive_status: str | None = None
    in_place_holds: tuple[str, ...] | None = None

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

        def strings(value: Any) -> list[Any]:
            if not isinstance(value, (list, tuple)):
                return list(getattr(value, "list", None) or ([value] if value else []))
            return list(value)

        addresses = strings(props.get("EmailAddresses"))
        hidden = props.get("HiddenFromAddressListsEnabled")
        holds = props.get("InPlaceHolds")
        return cls(
            identity=text("Identity") or text("DistinguishedName") or "",
            guid=text("Guid"),
            name=text("Name"),
            alias=text("Alias"),
            primary_smtp_address=text("PrimarySmtpAddress"),
            remote_routing_address=strip_smtp(text("RemoteRoutingAddress")),
            email_addresses=tuple(str(a) for a in addresses),
            recipient_type_details=text("RecipientTypeDetails"),
            remote_recipient_type=text("RemoteRecipientType"),
            hidden=None if hidden is None else str(hidden).lower() == "true",
            archive_status=text("ArchiveStatus"),
            in_place_holds=None if holds is None else tuple(str(h) for h in strings(holds)),
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
class PsResult:
    """What one cmdlet answered: its output objects and its error records."""

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
        shell_idle_timeout: int = SHELL_IDLE_TIMEOUT_SECONDS,
    ) -> None:
        self._settings = settings
        self._password = password
        self._ca_bundle = ca_bundle
        # Exchange drops a pool idle for shell_idle_timeout; opening a new pool before that
        # beats failing a message on a dead one.
        self._shell_idle_timeout = shell_idle_timeout
        self._idle_reopen = shell_idle_timeout * REOPEN_AFTER_IDLE_SHARE
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
                     if record_reason(e) == "ManagementObjectNotFoundException"]
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
        (with ``-PrimarySmtpAddress`` / ``-Alias`` when given); returns the new mailbox.
        Raises ``AlreadyMailEnabled`` when the user is a recipient already."""
        parameters = [("Identity", identity), ("RemoteRoutingAddress", routing_address)]
        if primary_smtp_address:
            parameters.append(("PrimarySmtpAddress", primary_smtp_address))
        if alias:
            parameters.append(("Alias", alias))
        result = self._invoke("Enable-RemoteMailbox", parameters)
        if result.errors or result.failed or not result.output:
            raise self._error("Enable-RemoteMailbox", identity, result)
        return RemoteMailbox.from_output(result.output[0])

    def set_remote_mailbox(self, identity: str, *, mailbox_type: str | None = None,
                           hidden: bool | None = None) -> None:
        """``Set-RemoteMailbox -Identity identity [-Type mailbox_type]
        [-HiddenFromAddressListsEnabled hidden]`` (leavers: ``-Type Shared``); no output, as
        Exchange's Set-* cmdlets. The Boolean goes as a Boolean: PowerShell refuses a string."""
        parameters: list[tuple[str, str | bool]] = [("Identity", identity)]
        if mailbox_type is not None:
            parameters.append(("Type", mailbox_type))
        if hidden is not None:
            parameters.append(("HiddenFromAddressListsEnabled", hidden))
        result = self._invoke("Set-RemoteMailbox", parameters)
        if result.errors or result.failed:
            raise self._error("Set-RemoteMailbox", identity, result)

    def invoke(self, cmdlet: str, parameters: Sequence[tuple[str, str | bool]]) -> PsResult:
        """Run one cmdlet with these parameters on the reused pool; its output and error
        records (for endpoints other than Exchange's: ``shared.provisioning.sync``'s Connect
        server)."""
        return self._invoke(cmdlet, parameters)

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
        proxy = None
        link = self._settings.relay
        if link is not None:
            # Through the relay: the forwarder is an HTTP CONNECT proxy for this host:port
            # only, and requests checks the certificate against the host in EXCHANGE_URL.
            forwarder = relay_forward.tunnel(link, 0, self._host, self._port, http_connect=True)
            forwarder.open()  # raises the relay's TransientError / PermanentError
            proxy = forwarder.proxy_url
        wsman = self._wsman(proxy)
        pool = RunspacePool(wsman, configuration_name=self._settings.configuration_name,
                            idle_timeout=self._shell_idle_timeout)
        try:
            pool.open()
        except BaseException:
            wsman.close()
            raise
        self.pools_opened += 1
        log.info("exchange_pool_opened", step=STEP, endpoint=self._settings.url,
                 pools_opened=self.pools_opened)
        return pool

    def _wsman(self, proxy: str | None) -> _WSMan:
        """pypsrp's WSMan for this endpoint, its requests session built now and pinned to the
        service's own trust and proxy (``shared.relay.tls.pin_session``) on both paths:
        pypsrp builds the session while requests still reads the environment, so without the
        pin ``REQUESTS_CA_BUNDLE`` would replace the trust store when ``CA_BUNDLE`` is unset
        and the direct path would follow ``HTTPS_PROXY``."""
        timeout = self._settings.timeout_seconds
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
        pin_session(wsman.transport, self._ca_bundle)  # no environment proxy or CA file
        return wsman

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

    def _invoke(self, cmdlet: str, parameters: Sequence[tuple[str, str | bool]]) -> PsResult:
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
                telemetry.exchange_session_error(cmdlet, type(exc).__name__, reused)
                raise transport_error(exc, cmdlet, self._settings) from None
            except Exception as exc:
                # pypsrp state errors on a reused pool mean the pool is unusable.
                self._discard(polite=False)
                telemetry.exchange_session_error(cmdlet, type(exc).__name__, reused)
                raise TransientError(
                    f"the PowerShell session to Exchange failed during {cmdlet} "
                    f"({type(exc).__name__})",
                    step=STEP,
                    fix="nothing to do; the service opens a new session and retries",
                ) from None
            self._last_used = time.monotonic()
            log.debug("exchange_cmdlet", step=STEP, cmdlet=cmdlet, reused_pool=reused,
                      had_errors=shell.had_errors)
            result = PsResult(list(output), list(shell.streams.error), bool(shell.had_errors))
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
    def _error(self, cmdlet: str, identity: str, result: PsResult) -> ProvisioningError:
        return record_error(cmdlet, identity, result.errors)
