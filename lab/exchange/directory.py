"""The lab AD as the Exchange endpoint reads and writes it: over LDAPS as the domain admin
(as Exchange's Trusted Subsystem does), with pooled connections shared by the HTTP threads.
A directory that does not answer is an ``ADTransientException``, never "not found".
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import ldap3

from .errors import CmdletError

READ_ATTRIBUTES = [
    "objectGUID",
    "cn",
    "sAMAccountName",
    "userPrincipalName",
    "displayName",
    "mail",
    "mailNickname",
    "proxyAddresses",
    "targetAddress",
    "msExchRecipientTypeDetails",
    "msExchRemoteRecipientType",
    "msExchRecipientDisplayType",
    "msExchHideFromAddressLists",
    "msExchArchiveStatus",
    "msExchUserHoldPolicies",
]


@dataclass
class Entry:
    """One directory object, with attribute names as Exchange's reader sees them."""

    dn: str
    guid: uuid.UUID
    attrs: dict[str, list[Any]] = field(default_factory=dict)

    def first(self, name: str) -> Any:
        values = self.attrs.get(name.lower()) or []
        return values[0] if values else None

    def all(self, name: str) -> list[Any]:
        return list(self.attrs.get(name.lower()) or [])


class LdapDirectory:
    """The lab AD, read and written as the domain admin over LDAPS."""

    def __init__(
        self,
        url: str,
        user: str,
        password: str,
        base_dn: str,
        *,
        ca_bundle: str | None,
        netbios: str,
        dc_name: str,
    ) -> None:
        self.base_dn = base_dn
        self.netbios = netbios.upper()
        self.dc_name = dc_name
        tls = ldap3.Tls(
            validate=ssl.CERT_REQUIRED if ca_bundle else ssl.CERT_NONE,
            ca_certs_file=ca_bundle,
        )
        self._server = ldap3.Server(url, use_ssl=url.startswith("ldaps://"), tls=tls,
                                    connect_timeout=10)
        self._user = user
        self._password = password
        # Connections are shared between the HTTP threads (one per client connection), so a
        # new WinRM connection does not pay for a new LDAPS bind.
        self._idle: list[ldap3.Connection] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _conn(self) -> Iterator[ldap3.Connection]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None or conn.closed:
            conn = ldap3.Connection(
                self._server, self._user, self._password, auto_bind=True,
                receive_timeout=30, raise_exceptions=False,
            )
        try:
            yield conn
        except ldap3.core.exceptions.LDAPException:
            conn.unbind()
            raise
        with self._lock:
            self._idle.append(conn)

    def search(self, ldap_filter: str, *, base: str | None = None, limit: int = 0) -> list[Entry]:
        """Objects under the base DN matching ``ldap_filter`` (already escaped)."""
        response: list[dict[str, Any]] = []
        for attempt in (1, 2):
            try:
                with self._conn() as conn:
                    conn.search(
                        base or self.base_dn, ldap_filter, ldap3.SUBTREE,
                        attributes=READ_ATTRIBUTES, size_limit=limit,
                    )
                    result = dict(conn.result or {})
                    response = list(conn.response or [])
                break
            except ldap3.core.exceptions.LDAPException:
                # A dropped LDAP connection: reconnect once, as Exchange's DS access does.
                if attempt == 2:
                    raise
        # success, sizeLimitExceeded (the caller asked for a limit), noSuchObject: answers.
        # Anything else (busy, timeout, unavailable) is no answer, never "not found".
        if result.get("result") not in (0, 4, 32):
            raise CmdletError(
                f"Active Directory server {self.dc_name} is not available. "
                f"{result.get('description')}: {result.get('message')}",
                "Microsoft.Exchange.Data.Directory.ADTransientException",
                "ResourceUnavailable",
                "ADTransientException",
            )
        entries = []
        for item in response:
            if item.get("type") != "searchResEntry":
                continue
            raw = item.get("raw_attributes", {})
            attrs = {k.lower(): list(v) if isinstance(v, list) else [v]
                     for k, v in item["attributes"].items()}
            guid_raw = raw.get("objectGUID") or raw.get("objectguid")
            guid = uuid.UUID(bytes_le=bytes(guid_raw[0])) if guid_raw else uuid.UUID(int=0)
            entries.append(Entry(item["dn"], guid, attrs))
        return entries

    def replace(self, dn: str, values: dict[str, list[Any]]) -> None:
        """Replace the given attributes of ``dn``; raise CmdletError if AD refuses."""
        changes = {name: [(ldap3.MODIFY_REPLACE, [str(v) for v in vals])]
                   for name, vals in values.items()}
        with self._conn() as conn:
            ok = conn.modify(dn, changes)
            result = dict(conn.result or {})
        if not ok:
            raise CmdletError(
                f"Active Directory operation failed on {self.dc_name}. "
                f"{result.get('description')}: {result.get('message')}",
                "Microsoft.Exchange.Data.Directory.ADOperationException",
                "WriteError",
                "ADOperationException",
            )
