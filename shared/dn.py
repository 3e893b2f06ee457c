"""Distinguished names as the settings and the directory compare them (RFC 4514)."""

from __future__ import annotations

import re

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import parse_dn

_NAMED_BY_DN = re.compile(r"^\s*(cn|ou)\s*=", re.IGNORECASE)


def dn_parts(dn: str) -> tuple[tuple[str, str], ...]:
    """The RDNs of a DN (RFC 4514), case-folded for comparison; ValueError when it is none."""
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except LDAPInvalidDnError as exc:
        raise ValueError(f"'{dn}' is not a distinguished name ({exc})") from None
    return tuple((attr.strip().casefold(), value.strip().casefold()) for attr, value, _ in parts)


def is_dn(value: str) -> bool:
    """Whether a setting names a group or OU by DN (``CN=...``, ``OU=...``) rather than by
    name; a group name may hold ``=`` anywhere but at the start of an RDN."""
    return bool(_NAMED_BY_DN.match(value))


def dn_within(dn: str, base: str) -> bool:
    """Whether ``dn`` is ``base`` or below it."""
    inner, outer = dn_parts(dn), dn_parts(base)
    return len(inner) >= len(outer) and inner[len(inner) - len(outer):] == outer
