"""Active Directory (ldap3): users, groups and membership, as the service reads and writes
them. The connection itself (bind, TLS, the relay, errors) is ``shared.ad.ldap``'s; group changes
over DirSync are ``shared.ad.dirsync``'s.

Users are read by ``objectGUID`` (``<GUID=...>``) with the attributes the service needs, never
``*``; every filter value is escaped (RFC 4515) and every DN built from names is escaped
(RFC 4514). Large groups are read in ranges of ``AD_RANGE_STEP`` values.

Failures:

    unreachable DC, busy DC, broken connection      TransientError
    bad credentials, untrusted certificate,
    missing rights, unknown user or group           PermanentError
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ldap3 import BASE, MODIFY_ADD, MODIFY_DELETE, SUBTREE, Connection
from ldap3.protocol.microsoft import extended_dn_control
from ldap3.utils.conv import escape_filter_chars

from shared.ad import dirsync
from shared.ad.dirsync import GroupDelta
from shared.ad.ldap import MEMBER_RANGE, LdapConnection, all_values, first_value, guid_of
from shared.config import AdSettings, ProvisioningSettings
from shared.dn import is_dn
from shared.entra import immutable_id
from shared.errors import PermanentError

T = TypeVar("T")

# Result codes: 20 attributeOrValueExists, 68 entryAlreadyExists (what AD answers for a member
# that is already there), 16 noSuchAttribute, 53 unwillingToPerform (AD, for a non-member).
_ALREADY_THERE = {20, 68}
_NOT_THERE = {16, 53}
# userAccountControl's ACCOUNTDISABLE flag, and the matching rule that tests one bit of it
# (LDAP_MATCHING_RULE_BIT_AND; learn.microsoft.com "Search Filter Syntax", Active Directory)
ACCOUNTDISABLE = 0x2
_BIT_AND = "1.2.840.113556.1.4.803"
_PAGED = "1.2.840.113556.1.4.319"  # the paged results control (RFC 2696)



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
    enabled: bool = True  # userAccountControl without ACCOUNTDISABLE (0x2)

    @property
    def immutable_id(self) -> str:
        """Entra Connect's sourceAnchor (``shared.entra.immutable_id``)."""
        return immutable_id(self.guid)


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
        self._ldap = LdapConnection(ad, password=password, ca_bundle=ca_bundle,
                                    collect_usage=collect_usage)
        self._groups: dict[str, tuple[str, uuid.UUID]] = {}
        self._naming_context: str | None = None
        self._user_attributes = sorted({
            "objectGUID", "distinguishedName", "sAMAccountName", "userPrincipalName",
            "displayName", "mail", "proxyAddresses", "targetAddress", "mailNickname",
            "msExchRemoteRecipientType", "memberOf", "userAccountControl",
            provisioning.license_attribute, provisioning.country_attribute,
        })

    # -- the connection ---------------------------------------------------------------------

    @property
    def account(self) -> str:
        return self._ldap.account

    @property
    def connection(self) -> Connection:
        """The bound connection (opened on first use); its ``usage`` counts bytes when
        ``collect_usage`` was given."""
        return self._ldap.connection

    def close(self) -> None:
        """Unbind and drop the connection; the next call opens a new one."""
        self._ldap.close()

    # -- users -----------------------------------------------------------------------------

    def _user_from(self, raw: dict[str, list[bytes]], dn: str) -> DirectoryUser:
        p = self._provisioning
        rrt = first_value(raw, "msExchRemoteRecipientType")
        uac = first_value(raw, "userAccountControl")
        return DirectoryUser(
            guid=uuid.UUID(bytes_le=raw["objectGUID"][0]),
            dn=first_value(raw, "distinguishedName") or dn,
            sam=first_value(raw, "sAMAccountName") or "",
            upn=first_value(raw, "userPrincipalName"),
            display_name=first_value(raw, "displayName"),
            mail=first_value(raw, "mail"),
            country=first_value(raw, p.country_attribute),
            license_name=first_value(raw, p.license_attribute),
            proxy_addresses=all_values(raw, "proxyAddresses"),
            target_address=first_value(raw, "targetAddress"),
            mail_nickname=first_value(raw, "mailNickname"),
            remote_recipient_type=int(rrt) if rrt is not None else None,
            member_of=all_values(raw, "memberOf"),
            enabled=not int(uac or 0) & ACCOUNTDISABLE,
        )

    def _find_users(self, base: str, scope: str, ldap_filter: str, what: str,
                    target: str) -> list[DirectoryUser]:
        def search(conn: Connection) -> list[DirectoryUser]:
            ok = conn.search(base, ldap_filter, scope, attributes=self._user_attributes)
            if not ok and conn.result.get("result") == 32:  # noSuchObject
                return []
            if not ok and conn.result.get("result") != 0:
                self._ldap.check(conn, what, target)
            return [self._user_from(entry["raw_attributes"], entry["dn"])
                    for entry in conn.response or [] if entry.get("type") == "searchResEntry"]

        return self._ldap.call(what, search)

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

    def disabled_users(self) -> list[DirectoryUser]:
        """Every user under AD_BASE_DN whose account is disabled: one subtree search on
        ``userAccountControl`` (ACCOUNTDISABLE), in pages of 500. Reading the attribute needs
        no right beyond the service account's read of the users (Authenticated Users may)."""
        base = self._ad.base_dn
        ldap_filter = (f"(&(objectCategory=person)(objectClass=user)"
                       f"(userAccountControl:{_BIT_AND}:={ACCOUNTDISABLE}))")

        def search(conn: Connection) -> list[DirectoryUser]:
            found: list[DirectoryUser] = []
            cookie: bytes | None = None
            while True:
                ok = conn.search(base, ldap_filter, SUBTREE, attributes=self._user_attributes,
                                 paged_size=500, paged_cookie=cookie)
                if not ok and conn.result.get("result") != 0:
                    self._ldap.check(conn, "read disabled users", base)
                found += [self._user_from(entry["raw_attributes"], entry["dn"])
                          for entry in conn.response or [] if entry.get("type") == "searchResEntry"]
                control = (conn.result.get("controls") or {}).get(_PAGED) or {}
                cookie = (control.get("value") or {}).get("cookie")
                if not cookie:
                    return found

        return self._ldap.call("read disabled users", search)

    def user_by_sam(self, sam: str) -> DirectoryUser:
        """The user with this sAMAccountName; PermanentError if there is none."""
        return self._one_user("sAMAccountName", sam)

    def _one_user(self, attribute: str, value: str) -> DirectoryUser:
        """The one user whose ``attribute`` is ``value``; PermanentError naming the attribute if
        there is none or more than one."""
        ldap_filter = (f"(&(objectCategory=person)(objectClass=user)"
                       f"({attribute}={escape_filter_chars(value)}))")
        found = self._find_users(self._ad.base_dn, SUBTREE, ldap_filter, "read user", value)
        if len(found) != 1:
            raise PermanentError(
                "no such user" if not found else "the name is not unique",
                user=value, step="read user",
                fix=f"check the {attribute} under {self._ad.base_dn}",
            )
        return found[0]

    def find(self, name: str) -> DirectoryUser:
        """The user an operator names: an objectGUID, a UPN (with an @) or a sAMAccountName;
        PermanentError if there is none (or more than one)."""
        try:
            return self.user(uuid.UUID(name))
        except ValueError:
            pass
        if "@" not in name:
            return self.user_by_sam(name)
        return self._one_user("userPrincipalName", name)

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
                self._ldap.check(conn, "find group", name)
            return [(entry["dn"], uuid.UUID(bytes_le=entry["raw_attributes"]["objectGUID"][0]))
                    for entry in conn.response or [] if entry.get("type") == "searchResEntry"]

        found = self._ldap.call("find group", search)
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
                self._ldap.paged(self._ad.base_dn, ldap_filter, ["distinguishedName"],
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
        for entry in self._ldap.paged(ou_dn, "(objectClass=group)", ["cn"], "list groups"):
            name = first_value(entry["raw_attributes"], "cn") or entry["dn"]
            found.append((name, entry["dn"]))
        return sorted(found)

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
            self._ldap.check(conn, what, group_dn)
            return False

        try:
            return self._ldap.call(what, modify)
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
                    self._ldap.check(conn, "read group members", group_dn)
                entries = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
                if not entries:
                    raise PermanentError(f"group {group_dn} no longer exists",
                                         step="read group members")
                raw: dict[str, list[bytes]] = entries[0]["raw_attributes"]
                return raw

            raw = self._ldap.call("read group members", read)
            ranged = [(key, MEMBER_RANGE.match(key)) for key in raw]
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
                for e in self._ldap.paged(
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
            self._naming_context = dirsync.naming_context(self._ldap, self._ad.base_dn)
        return self._naming_context

    def poll(self, group: str, cookie: bytes | None) -> GroupDelta:
        """Members added to and removed from ``group`` since ``cookie`` (DirSync).

        Without a cookie, or with one the DC no longer accepts, the answer is ``full``: every
        current member as added. Keep the returned cookie for the next poll.
        """
        _, group_guid = self._group(group)
        return dirsync.poll(self._ldap, self.naming_context(), group, group_guid, cookie)
