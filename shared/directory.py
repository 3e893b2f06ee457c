"""Active Directory over LDAPS (ldap3): the service's only LDAP code.

One connection, bound as the service account, reused and re-opened once when it breaks.
Certificates are validated (``CERT_REQUIRED``) against ``CA_BUNDLE`` or the system store.
Users are read by ``objectGUID`` (``<GUID=...>``) with the attributes the service needs, never
``*``; every filter value is escaped (RFC 4515) and every DN built from names is escaped
(RFC 4514).

Group changes come from the DirSync control (1.2.840.113556.1.4.841) with incremental values:
the domain naming context is searched (DirSync accepts only an NC head as base) for the one
group, asking only for ``member``. Added values come back as ``member;range=1-1``, removed ones
as ``member;range=0-0``; with the extended-DN control each value carries its ``<GUID=...>``.
DirSync needs the "Replicating Directory Changes" right on the domain for a non-administrator,
on Samba as on Windows. Samba does not report a member whose account was deleted as removed from
the group; the reconcile timer's full enumeration covers that.

Failures:

    unreachable DC, busy DC, broken connection      TransientError
    bad credentials, untrusted certificate,
    missing rights, unknown user or group           PermanentError
"""

from __future__ import annotations

import contextlib
import math
import re
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ldap3 import BASE, MODIFY_ADD, MODIFY_DELETE, NONE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import (
    LDAPCommunicationError,
    LDAPExceptionError,
    LDAPResponseTimeoutError,
    LDAPStartTLSError,
)
from ldap3.protocol.microsoft import dir_sync_control, extended_dn_control
from ldap3.utils.conv import escape_bytes, escape_filter_chars

from . import relay_forward
from .config import AdSettings, ProvisioningSettings
from .dn import is_dn
from .entra import immutable_id
from .errors import PermanentError, ProvisioningError, TransientError
from .relay_tls import HostNameTls

T = TypeVar("T")

DIRSYNC_OID = "1.2.840.113556.1.4.841"
# Result codes: 20 attributeOrValueExists, 68 entryAlreadyExists (what AD answers for a member
# that is already there), 16 noSuchAttribute, 53 unwillingToPerform (AD, for a non-member).
_ALREADY_THERE = {20, 68}
_NOT_THERE = {16, 53}
_BUSY = {51, 52}  # busy, unavailable
_NO_ACCESS = {50}
_INVALID_CREDENTIALS = 49

_GUID_IN_DN = re.compile(r"^<GUID=([0-9a-fA-F-]{36})>")
_RANGE = re.compile(r"^member;range=(\d+)-(\d+|\*)$", re.IGNORECASE)


@dataclass(frozen=True)
class DirectoryUser:
    """A user as the service sees it; re-read for every step, never cached."""

    guid: uuid.UUID
    dn: str
    sam: str
    upn: str | None
    display_name: str | None
    mail: str | None
    country: str | None
    license_name: str | None
    proxy_addresses: tuple[str, ...]
    target_address: str | None
    mail_nickname: str | None
    remote_recipient_type: int | None
    member_of: tuple[str, ...]

    @property
    def immutable_id(self) -> str:
        """Entra Connect's sourceAnchor (``shared.entra.immutable_id``)."""
        return immutable_id(self.guid)


@dataclass(frozen=True)
class GroupDelta:
    """Members added to and removed from a group since the cookie; ``full`` when there was no
    usable cookie, in which case ``added`` is every current member."""

    added: list[uuid.UUID]
    removed: list[uuid.UUID]
    cookie: bytes
    full: bool


def guid_of(value: bytes | str) -> uuid.UUID | None:
    """The GUID in an extended DN value ``<GUID=...>;<SID=...>;CN=...``, if there is one."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    match = _GUID_IN_DN.match(text)
    return uuid.UUID(match.group(1)) if match else None


def _first(raw: dict[str, list[bytes]], name: str) -> str | None:
    values = raw.get(name) or []
    return values[0].decode("utf-8") if values else None


def _all(raw: dict[str, list[bytes]], name: str) -> tuple[str, ...]:
    return tuple(value.decode("utf-8") for value in raw.get(name) or [])


class Directory:
    """The service's view of Active Directory. Blocking; call it from a thread in async code."""

    def __init__(
        self,
        ad: AdSettings,
        provisioning: ProvisioningSettings,
        *,
        password: str,
        ca_bundle: Path | None,
        collect_usage: bool = False,
    ) -> None:
        self._ad = ad
        self._provisioning = provisioning
        self._password = password
        self._ca_bundle = ca_bundle
        self._collect_usage = collect_usage
        self._conn: Connection | None = None
        self._lock = threading.RLock()
        self._groups: dict[str, tuple[str, uuid.UUID]] = {}
        self._naming_context: str | None = None
        self._user_attributes = sorted({
            "objectGUID", "distinguishedName", "sAMAccountName", "userPrincipalName",
            "displayName", "mail", "proxyAddresses", "targetAddress", "mailNickname",
            "msExchRemoteRecipientType", "memberOf",
            provisioning.license_attribute, provisioning.country_attribute,
        })

    # -- connection ------------------------------------------------------------------------

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
                if result.get("result") in _BUSY:
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

    def _call(self, what: str, operation: Callable[[Connection], T]) -> T:
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

    def _check(self, conn: Connection, what: str, target: str) -> None:
        """Turn a failed result into the error it means."""
        result = conn.result
        code = result.get("result")
        description = result.get("description")
        if code in _BUSY:
            raise TransientError(f"the DC is {description}", step=what)
        if code in _NO_ACCESS:
            raise PermanentError(
                f"{self._ad.user} may not do this on {target} (insufficientAccessRights)",
                step=what,
                fix="grant the service account the right described in docs/ (member of the "
                "two provisioning groups; Replicating Directory Changes for DirSync)",
            )
        raise PermanentError(f"{description} on {target}", step=what)

    # -- users -----------------------------------------------------------------------------

    def _user_from(self, raw: dict[str, list[bytes]], dn: str) -> DirectoryUser:
        p = self._provisioning
        rrt = _first(raw, "msExchRemoteRecipientType")
        return DirectoryUser(
            guid=uuid.UUID(bytes_le=raw["objectGUID"][0]),
            dn=_first(raw, "distinguishedName") or dn,
            sam=_first(raw, "sAMAccountName") or "",
            upn=_first(raw, "userPrincipalName"),
            display_name=_first(raw, "displayName"),
            mail=_first(raw, "mail"),
            country=_first(raw, p.country_attribute),
            license_name=_first(raw, p.license_attribute),
            proxy_addresses=_all(raw, "proxyAddresses"),
            target_address=_first(raw, "targetAddress"),
            mail_nickname=_first(raw, "mailNickname"),
            remote_recipient_type=int(rrt) if rrt is not None else None,
            member_of=_all(raw, "memberOf"),
        )

    def _find_users(self, base: str, scope: str, ldap_filter: str, what: str,
                    target: str) -> list[DirectoryUser]:
        def search(conn: Connection) -> list[DirectoryUser]:
            ok = conn.search(base, ldap_filter, scope, attributes=self._user_attributes)
            if not ok and conn.result.get("result") == 32:  # noSuchObject
                return []
            if not ok and conn.result.get("result") != 0:
                self._check(conn, what, target)
            return [self._user_from(entry["raw_attributes"], entry["dn"])
                    for entry in conn.response or [] if entry.get("type") == "searchResEntry"]

        return self._call(what, search)

    def user(self, guid: uuid.UUID) -> DirectoryUser:
        """The user with this objectGUID; PermanentError if it no longer exists."""
        found = self._find_users(f"<GUID={guid}>", BASE, "(&(objectCategory=person)"
                                 "(objectClass=user))", "read user", str(guid))
        if not found:
            raise PermanentError(
                "the user no longer exists in Active Directory", user=str(guid),
                step="read user", fix="none: the account was deleted or is not a user",
            )
        return found[0]

    def user_by_sam(self, sam: str) -> DirectoryUser:
        """The user with this sAMAccountName; PermanentError if there is none."""
        ldap_filter = (f"(&(objectCategory=person)(objectClass=user)"
                       f"(sAMAccountName={escape_filter_chars(sam)}))")
        found = self._find_users(self._ad.base_dn, SUBTREE, ldap_filter, "read user", sam)
        if len(found) != 1:
            raise PermanentError(
                "no such user" if not found else "the name is not unique",
                user=sam, step="read user",
                fix=f"check the sAMAccountName under {self._ad.base_dn}",
            )
        return found[0]

    # -- groups ----------------------------------------------------------------------------

    def _group(self, name: str) -> tuple[str, uuid.UUID]:
        """The group a setting names: by its DN, or by sAMAccountName or cn under GROUPS_OU
        (AD_BASE_DN when unset); looked up once, then cached."""
        if name in self._groups:
            return self._groups[name]
        value = escape_filter_chars(name)
        base, scope, ldap_filter = (
            (name, BASE, "(objectClass=group)") if is_dn(name) else
            (self._provisioning.groups_ou or self._ad.base_dn, SUBTREE,
             f"(&(objectClass=group)(|(sAMAccountName={value})(cn={value})))"))

        def search(conn: Connection) -> list[tuple[str, uuid.UUID]]:
            ok = conn.search(base, ldap_filter, scope, attributes=["objectGUID"])
            if not ok and conn.result.get("result") not in (0, 32):  # 32: noSuchObject
                self._check(conn, "find group", name)
            return [(entry["dn"], uuid.UUID(bytes_le=entry["raw_attributes"]["objectGUID"][0]))
                    for entry in conn.response or [] if entry.get("type") == "searchResEntry"]

        found = self._call("find group", search)
        if len(found) != 1:
            raise PermanentError(
                f"group {name} {'was not found' if not found else 'is not unique'} under "
                f"{base}",
                step="find group",
                fix="create the group, or set PROVISION_GROUP/LICENSE_GROUP to its DN",
            )
        self._groups[name] = found[0]
        return found[0]

    def address_owners(self, address: str) -> list[str]:
        """DNs of the objects that already use the SMTP ``address`` (as ``proxyAddresses`` or
        ``mail``): before an address is given to a user, nobody else may hold it."""
        value = escape_filter_chars(address)
        ldap_filter = f"(|(proxyAddresses=smtp:{value})(mail={value}))"
        return [entry["dn"] for entry in
                self._paged(self._ad.base_dn, ldap_filter, ["distinguishedName"],
                            "look up an address")]

    def is_member(self, user: DirectoryUser, group: str) -> bool:
        """Whether ``user`` (as read, with its memberOf) is a direct member of ``group``."""
        wanted = self.group_dn(group).lower()
        return any(dn.lower() == wanted for dn in user.member_of)

    def group_dn(self, name: str) -> str:
        """The DN of the group with this sAMAccountName or cn (looked up once, then cached)."""
        return self._group(name)[0]

    def groups_in(self, ou_dn: str) -> list[tuple[str, str]]:
        """``(name, dn)`` of every group under ``ou_dn``, by name; name is the group's cn."""
        found: list[tuple[str, str]] = []
        for entry in self._paged(ou_dn, "(objectClass=group)", ["cn"], "list groups"):
            name = _first(entry["raw_attributes"], "cn") or entry["dn"]
            found.append((name, entry["dn"]))
        return sorted(found)

    def _paged(self, base: str, ldap_filter: str, attributes: list[str],
               what: str) -> Iterator[dict[str, Any]]:
        cookie: bytes | None = None
        while True:
            def page(conn: Connection, cookie: bytes | None = cookie) -> tuple[list[Any], Any]:
                ok = conn.search(base, ldap_filter, SUBTREE, attributes=attributes,
                                 paged_size=self._ad.page_size, paged_cookie=cookie)
                if not ok and conn.result.get("result") != 0:
                    self._check(conn, what, base)
                entries = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
                control = conn.result.get("controls", {}).get("1.2.840.113556.1.4.319", {})
                return entries, control.get("value", {}).get("cookie")

            entries, cookie = self._call(what, page)
            yield from entries
            if not cookie:
                return

    def add_member(self, group: str, user: DirectoryUser) -> bool:
        """Make ``user`` a member of ``group``; True if that changed anything."""
        return self._change_member(group, user, MODIFY_ADD)

    def remove_member(self, group: str, user: DirectoryUser) -> bool:
        """Take ``user`` out of ``group``; True if that changed anything."""
        return self._change_member(group, user, MODIFY_DELETE)

    def _change_member(self, group: str, user: DirectoryUser, change: str) -> bool:
        group_dn = self.group_dn(group)
        what = f"{'add to' if change == MODIFY_ADD else 'remove from'} {group}"

        def modify(conn: Connection) -> bool:
            if conn.modify(group_dn, {"member": [(change, [user.dn])]}):
                return True
            code = conn.result.get("result")
            if change == MODIFY_ADD and code in _ALREADY_THERE:
                return False
            if change == MODIFY_DELETE and code in _NOT_THERE:
                return False
            self._check(conn, what, group_dn)
            return False

        try:
            return self._call(what, modify)
        except PermanentError as exc:
            raise exc.at(user=user.sam) from None

    def _members(self, group_dn: str) -> list[str]:
        """Every ``member`` value of a group as an extended DN, read in ranges of
        ``AD_RANGE_STEP`` values (``member;range=0-1499``, ``member;range=1500-2999``, ...)."""
        values: list[str] = []
        start = 0
        step = self._ad.range_step
        while True:
            attribute = f"member;range={start}-{start + step - 1}"

            def read(conn: Connection, attribute: str = attribute) -> dict[str, list[bytes]]:
                ok = conn.search(group_dn, "(objectClass=group)", BASE, attributes=[attribute],
                                 controls=[extended_dn_control(criticality=True)])
                if not ok and conn.result.get("result") != 0:
                    self._check(conn, "read group members", group_dn)
                entries = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
                if not entries:
                    raise PermanentError(f"group {group_dn} no longer exists",
                                         step="read group members")
                raw: dict[str, list[bytes]] = entries[0]["raw_attributes"]
                return raw

            raw = self._call("read group members", read)
            ranged = [(key, _RANGE.match(key)) for key in raw]
            chunk = next(((key, m) for key, m in ranged if m), None)
            if chunk is None:
                # A server that answers without a range returned every value at once.
                values.extend(v.decode() for key, v_list in raw.items()
                              if key.lower() == "member" for v in v_list)
                return values
            key, match = chunk
            values.extend(v.decode() for v in raw[key])
            if match.group(2) == "*":
                return values
            start = int(match.group(2)) + 1

    def group_members(self, group: str, *, nested: bool = False) -> list[uuid.UUID]:
        """objectGUIDs of the members of the group a setting names (``members_of``)."""
        return self.members_of(self.group_dn(group), nested=nested)

    def members_of(self, group_dn: str, *, nested: bool = False,
                   within: str | None = None) -> list[uuid.UUID]:
        """objectGUIDs of the group's members, read by its DN. ``nested``: the non-group
        members of the group and of the groups nested in it that lie under ``within``
        (AD_BASE_DN when None), each group read once (cycles are harmless); a nested group
        elsewhere is not expanded."""
        if not nested:
            return [g for g in (guid_of(v) for v in self._members(group_dn)) if g is not None]
        seen_groups: set[str] = set()
        members: dict[uuid.UUID, None] = {}
        pending = [group_dn]
        while pending:
            dn = pending.pop()
            if dn.lower() in seen_groups:
                continue
            seen_groups.add(dn.lower())
            subgroups = {
                uuid.UUID(bytes_le=e["raw_attributes"]["objectGUID"][0]): e["dn"]
                for e in self._paged(
                    within or self._ad.base_dn,
                    f"(&(objectClass=group)(memberOf={escape_filter_chars(dn)}))",
                    ["objectGUID"], "read nested groups")
            }
            for value in self._members(dn):
                guid = guid_of(value)
                if guid is None:
                    continue
                if guid in subgroups:
                    pending.append(subgroups[guid])
                else:
                    members[guid] = None
        return list(members)

    # -- DirSync ---------------------------------------------------------------------------

    def naming_context(self) -> str:
        """The domain naming context (RootDSE defaultNamingContext): DirSync's search base."""
        if self._naming_context is None:
            def read(conn: Connection) -> str:
                conn.search("", "(objectClass=*)", BASE, attributes=["defaultNamingContext"])
                entries = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
                value = _first(entries[0]["raw_attributes"], "defaultNamingContext") \
                    if entries else None
                return value or self._ad.base_dn

            self._naming_context = self._call("read RootDSE", read)
        return self._naming_context

    def poll(self, group: str, cookie: bytes | None) -> GroupDelta:
        """Members added to and removed from ``group`` since ``cookie`` (DirSync).

        Without a cookie, or with one the DC no longer accepts, the answer is ``full``: every
        current member as added. Keep the returned cookie for the next poll.
        """
        _, group_guid = self._group(group)
        base = self.naming_context()
        ldap_filter = f"(objectGUID={escape_bytes(group_guid.bytes_le)})"
        full = cookie is None
        added: dict[uuid.UUID, None] = {}
        removed: dict[uuid.UUID, None] = {}
        while True:
            def search(conn: Connection, cookie: bytes | None = cookie) -> tuple[Any, Any]:
                controls = [
                    dir_sync_control(criticality=True, object_security=False,
                                     ancestors_first=False, public_data_only=False,
                                     incremental_values=True, max_length=2**31 - 1,
                                     cookie=cookie),
                    extended_dn_control(criticality=True),
                ]
                ok = conn.search(base, ldap_filter, SUBTREE, attributes=["member"],
                                 controls=controls)
                entries = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
                return ok, (conn.result, entries)

            ok, (result, entries) = self._call(f"poll {group}", search)
            if not ok and result.get("result") != 0:
                code = result.get("result")
                if code in _NO_ACCESS:
                    raise PermanentError(
                        f"{self._ad.user} may not use DirSync on {base}",
                        step=f"poll {group}",
                        fix=f"grant the service account 'Replicating Directory Changes' on {base}",
                    )
                if code in _BUSY:
                    raise TransientError(f"the DC is {result.get('description')}",
                                         step=f"poll {group}")
                if cookie is not None:
                    # A cookie from another DC or a restored DC: start again with a full read.
                    cookie, full = None, True
                    added.clear()
                    removed.clear()
                    continue
                raise PermanentError(f"DirSync failed: {result.get('description')}",
                                     step=f"poll {group}")
            for entry in entries:
                for key, values in entry["raw_attributes"].items():
                    match = _RANGE.match(key)
                    if match and match.group(1) == "0":
                        target = removed
                    elif match or key.lower() == "member":
                        target = added
                    else:
                        continue
                    for value in values:
                        guid = guid_of(value)
                        if guid is not None:
                            target[guid] = None
                            (removed if target is added else added).pop(guid, None)
            control = result.get("controls", {}).get(DIRSYNC_OID, {}).get("value", {})
            cookie = control.get("cookie") or cookie
            if not control.get("more_results"):
                break
        assert cookie is not None
        return GroupDelta(
            added=list(added),
            removed=[] if full else list(removed),
            cookie=bytes(cookie),
            full=full,
        )


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
