"""The LDAP connection to Active Directory: open, bind, TLS, the relay, one operation at a
time, and what a failed result means. ``shared.ad.directory`` asks it; nothing else does.

One connection, bound as the service account, reused and re-opened once when it breaks.
Certificates are validated (``CERT_REQUIRED``) against ``CA_BUNDLE`` or the system store; with
``AD_TRANSPORT=relay`` the connection goes through the worker's forwarder of the DC's hybrid
connection and the certificate is checked against the DC's own name.

    unreachable DC, busy DC, broken connection      TransientError
    bad credentials, untrusted certificate,
    missing rights                                  PermanentError
"""

from __future__ import annotations

import contextlib
import math
import re
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ldap3 import NONE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import (
    LDAPCommunicationError,
    LDAPExceptionError,
    LDAPResponseTimeoutError,
    LDAPStartTLSError,
)

from shared.config import AdSettings
from shared.errors import PermanentError, ProvisioningError, TransientError
from shared.relay import forward as relay_forward
from shared.relay.tls import HostNameTls

T = TypeVar("T")

BUSY = {51, 52}  # busy, unavailable
NO_ACCESS = {50}
_INVALID_CREDENTIALS = 49
_GUID_IN_DN = re.compile(r"^<GUID=([0-9a-fA-F-]{36})>")
# A member value range: ``member;range=0-1499`` (ranged retrieval) or, with DirSync's
# incremental values, ``member;range=1-1`` (added) and ``member;range=0-0`` (removed).
MEMBER_RANGE = re.compile(r"^member;range=(\d+)-(\d+|\*)$", re.IGNORECASE)


def first_value(raw: dict[str, list[bytes]], name: str) -> str | None:
    """The first value of attribute ``name`` in an entry's raw attributes, as text."""
    values = raw.get(name) or []
    return values[0].decode("utf-8") if values else None


def all_values(raw: dict[str, list[bytes]], name: str) -> tuple[str, ...]:
    """Every value of attribute ``name``, as text."""
    return tuple(v.decode("utf-8") for v in raw.get(name) or [])


def guid_of(value: bytes | str) -> uuid.UUID | None:
    """The GUID in an extended DN value ``<GUID=...>;<SID=...>;CN=...``, if there is one."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    match = _GUID_IN_DN.match(text)
    return uuid.UUID(match.group(1)) if match else None


class LdapConnection:
    """One bound ldap3 connection, shared by a worker's threads one operation at a time."""

    def __init__(self, ad: AdSettings, *, password: str, ca_bundle: Path | None,
                 collect_usage: bool = False) -> None:
        self._ad = ad
        self._password = password
        self._ca_bundle = ca_bundle
        self._collect_usage = collect_usage
        self._conn: Connection | None = None
        self._lock = threading.RLock()

    @property
    def account(self) -> str:
        return self._ad.user

    @property
    def connection(self) -> Connection:
        """The bound connection (opened on first use); its ``usage`` counts bytes when
        ``collect_usage`` was given."""
        if self._conn is None or self._conn.closed or not self._conn.bound:
            self._conn = self._open()
        return self._conn

    def _tls(self) -> Tls:
        return Tls(
            validate=ssl.CERT_REQUIRED,
            version=ssl.PROTOCOL_TLS_CLIENT,
            ca_certs_file=str(self._ca_bundle) if self._ca_bundle else None,
        )

    def _server(self, url: str, index: int) -> Server:
        """The ldap3 Server for ``url``: the DC itself, or with AD_TRANSPORT=relay the local
        forwarder of its hybrid connection, its certificate checked against the DC's name."""
        ssl_on = url.startswith("ldaps://")
        link = self._ad.relay
        if link is None:
            return Server(url, use_ssl=ssl_on, tls=self._tls(), get_info=NONE,
                          connect_timeout=self._ad.timeout_seconds)
        parts = urlsplit(url)
        name = parts.hostname or ""
        forwarder = relay_forward.tunnel(link, index, name, parts.port or (636 if ssl_on else 389))
        host, port = forwarder.open()  # raises the relay's TransientError / PermanentError
        return Server(host, port=port, use_ssl=ssl_on, tls=HostNameTls(name, self._ca_bundle),
                      get_info=NONE, connect_timeout=self._ad.timeout_seconds)

    def _open(self) -> Connection:
        unreachable: list[str] = []
        relay_errors: list[ProvisioningError] = []
        for index, url in enumerate(self._ad.urls):
            try:
                server = self._server(url, index)
            except TransientError as exc:  # the relay: another DC may still be reachable
                relay_errors.append(exc)
                unreachable.append(f"{url} ({exc.reason})")
                continue
            conn = Connection(
                server, user=self._ad.user, password=self._password,
                receive_timeout=math.ceil(self._ad.timeout_seconds), raise_exceptions=False,
                auto_referrals=False, collect_usage=self._collect_usage, read_only=False,
                # Ranges are read here, step by step; ldap3's own follow-up would hide them.
                auto_range=False, return_empty_attributes=False,
            )
            try:
                conn.open(read_server_info=False)
                if self._ad.starttls and not url.startswith("ldaps://"):
                    conn.start_tls(read_server_info=False)
            except (LDAPCommunicationError, LDAPStartTLSError) as exc:
                if _certificate_problem(exc):
                    raise PermanentError(
                        f"the certificate of {url} is not trusted ({_tls_reason(exc)})",
                        step="connect to Active Directory",
                        fix="put the CA that issued the DC's certificate into the PEM file "
                        "named by CA_BUNDLE, or check that AD_URL names the DC as its "
                        "certificate does",
                    ) from None
                unreachable.append(f"{url} ({type(exc).__name__})")
                continue
            if not conn.bind(read_server_info=False):
                result = conn.result
                conn.unbind()
                if result.get("result") == _INVALID_CREDENTIALS:
                    raise PermanentError(
                        "invalid credentials",
                        step=f"bind as {self._ad.user}",
                        fix="check AD_USER/AD_PASSWORD (Key Vault secret)",
                    )
                if result.get("result") in BUSY:
                    unreachable.append(f"{url} ({result.get('description')})")
                    continue
                raise PermanentError(
                    f"the DC refused the bind: {result.get('description')}",
                    step=f"bind as {self._ad.user}",
                    fix="check the service account (enabled, not locked out, password not "
                    "expired)",
                )
            return conn
        if relay_errors and len(relay_errors) == len(unreachable):
            raise relay_errors[0]  # its reason and fix say what to do about the relay
        raise TransientError(
            f"no domain controller answered: {', '.join(unreachable)}",
            step="connect to Active Directory",
            fix="check that AD_URL is right and the DC is reachable from the app",
        )

    def close(self) -> None:
        """Unbind and drop the connection; the next call opens a new one."""
        if self._conn is not None:
            with contextlib.suppress(LDAPExceptionError):  # already broken: nothing to close
                self._conn.unbind()
            self._conn = None

    def call(self, what: str, operation: Callable[[Connection], T]) -> T:
        """Run ``operation`` on the connection; re-open it once if it broke meanwhile.

        One ldap3 connection is not thread-safe, and the handlers call the directory from
        several threads: one operation at a time holds the connection."""
        with self._lock:
            return self._call_locked(what, operation)

    def _call_locked(self, what: str, operation: Callable[[Connection], T]) -> T:
        for attempt in (1, 2):
            conn = self.connection
            try:
                return operation(conn)
            except (LDAPCommunicationError, LDAPResponseTimeoutError) as exc:
                self.close()
                if attempt == 2:
                    raise TransientError(
                        f"the connection to Active Directory failed during {what} "
                        f"({type(exc).__name__})",
                        step=what,
                        fix="none needed if it passes; retried later",
                    ) from None
        raise AssertionError("unreachable")

    def check(self, conn: Connection, what: str, target: str) -> None:
        """Turn a failed result into the error it means."""
        result = conn.result
        code = result.get("result")
        description = result.get("description")
        if code in BUSY:
            raise TransientError(f"the DC is {description}", step=what)
        if code in NO_ACCESS:
            raise PermanentError(
                f"{self._ad.user} may not do this on {target} (insufficientAccessRights)",
                step=what,
                fix="grant the service account the right described in docs/ (member of the "
                "two provisioning groups; Replicating Directory Changes for DirSync)",
            )
        raise PermanentError(f"{description} on {target}", step=what)

    def paged(self, base: str, ldap_filter: str, attributes: list[str],
              what: str) -> Iterator[dict[str, Any]]:
        """The entries of a paged subtree search (Simple Paged Results, ``AD_PAGE_SIZE``)."""
        cookie: bytes | None = None
        while True:
            def page(conn: Connection, cookie: bytes | None = cookie) -> tuple[list[Any], Any]:
                ok = conn.search(base, ldap_filter, SUBTREE, attributes=attributes,
                                 paged_size=self._ad.page_size, paged_cookie=cookie)
                if not ok and conn.result.get("result") != 0:
                    self.check(conn, what, base)
                entries = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
                control = conn.result.get("controls", {}).get("1.2.840.113556.1.4.319", {})
                return entries, control.get("value", {}).get("cookie")

            entries, cookie = self.call(what, page)
            yield from entries
            if not cookie:
                return


def _certificate_problem(exc: Exception) -> bool:
    text = str(exc)
    lower = text.lower()
    return "certificate_verify_failed" in lower or "certificate verify failed" in lower or (
        "hostname" in lower and "match" in lower
    )


def _tls_reason(exc: Exception) -> str:
    text = str(exc)
    for reason in ("self-signed certificate in certificate chain", "self-signed certificate",
                   "unable to get local issuer certificate", "certificate has expired"):
        if reason in text:
            return reason
    if "match" in text.lower():
        return "its name does not match the URL"
    return "verification failed"
