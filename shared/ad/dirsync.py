"""Group changes from the DirSync control (1.2.840.113556.1.4.841), with incremental values.

The domain naming context is searched (DirSync accepts only an NC head as base) for the one
group, asking only for ``member``. Added values come back as ``member;range=1-1``, removed ones
as ``member;range=0-0``; with the extended-DN control each value carries its ``<GUID=...>``.
DirSync needs the "Replicating Directory Changes" right on the domain for a non-administrator,
on Samba as on Windows. Samba does not report a member whose account was deleted as removed from
the group; the reconcile timer's full enumeration covers that.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from ldap3 import BASE, SUBTREE, Connection
from ldap3.protocol.microsoft import dir_sync_control, extended_dn_control
from ldap3.utils.conv import escape_bytes

from shared.ad.ldap import BUSY, MEMBER_RANGE, NO_ACCESS, LdapConnection, first_value, guid_of
from shared.errors import PermanentError, TransientError

DIRSYNC_OID = "1.2.840.113556.1.4.841"


@dataclass(frozen=True)
class GroupDelta:
    """Members added to and removed from a group since the cookie; ``full`` when there was no
    usable cookie, in which case ``added`` is every current member."""

    added: list[uuid.UUID]
    removed: list[uuid.UUID]
    cookie: bytes
    full: bool


def naming_context(ldap: LdapConnection, default: str) -> str:
    """The domain naming context (RootDSE defaultNamingContext), or ``default``."""

    def read(conn: Connection) -> str:
        conn.search("", "(objectClass=*)", BASE, attributes=["defaultNamingContext"])
        entries = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
        value = first_value(entries[0]["raw_attributes"], "defaultNamingContext") \
            if entries else None
        return value or default

    return ldap.call("read RootDSE", read)


def poll(ldap: LdapConnection, base: str, group: str, group_guid: uuid.UUID,
         cookie: bytes | None) -> GroupDelta:
    """The changes of ``group`` (objectGUID ``group_guid``) since ``cookie``, searched from the
    naming context ``base``; ``full`` without a usable cookie."""
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

        ok, (result, entries) = ldap.call(f"poll {group}", search)
        if not ok and result.get("result") != 0:
            code = result.get("result")
            if code in NO_ACCESS:
                raise PermanentError(
                    f"{ldap.account} may not use DirSync on {base}",
                    step=f"poll {group}",
                    fix=f"grant the service account 'Replicating Directory Changes' on {base}",
                )
            if code in BUSY:
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
                match = MEMBER_RANGE.match(key)
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
