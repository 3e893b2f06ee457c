"""``python -m lab seed --users N --invalid K``: realistic users in ``OU=Staff``, members of
``O365_Provision``, as an HR feed or a helpdesk would create them before provisioning.

Names carry accents, apostrophes and spaces ("Zoë O'Brien", "José da Silva"); each user has
``givenName``, ``sn``, ``displayName``, ``sAMAccountName``, ``userPrincipalName``, the licence
attribute (``extensionAttribute1`` ∈ {"E3", "Exchange 2"}) and an ISO country in ``c``.
``invalid`` of them carry one fault each, in turn: no licence attribute, a country that is no
ISO code ("XX"), or a licence name the service does not know ("E9").

Adding a user costs Samba ~5-20 ms, so a large seed (``SNAPSHOT_MIN`` users or more) resets the
directory to the template, adds the users once, and keeps the result as
``cache/ad-seed-<N>-<K>-<template>.tar.gz``; the next seed of the same size restores that
snapshot in a second or two instead. A small seed adds to whatever the directory holds.
"""

from __future__ import annotations

import random
import secrets
import unicodedata
from dataclasses import dataclass

from ldap3 import MODIFY_ADD, Connection
from ldap3.utils.dn import escape_rdn

from . import ad
from .core import Lab, LabError

SNAPSHOT_MIN = 1000
MEMBERS_PER_MODIFY = 500
LICENSES = ("E3", "Exchange 2")
COUNTRIES = ("DE", "FR", "GB", "US", "IE", "PT", "BR", "ES", "NL", "SE", "PL", "IT", "CH", "NO")
INVALID_KINDS = ("no-license", "bad-country", "unknown-license")

GIVEN = (
    "Zoë", "José", "Anaïs", "Siobhán", "Jürgen", "Ana María", "Björn", "Chloé", "Łukasz",
    "Maël", "Oğuz", "Renée", "Søren", "Thérèse", "Ángel", "Noémie", "Mary Kate", "Seán",
    "Émile", "Inês", "Zoltán", "Daniel", "Sarah", "Liam", "Aoife", "Mateo", "Olivia", "Ravi",
)
SURNAMES = (
    "O'Brien", "da Silva", "Müller", "D'Angelo", "van der Berg", "Ní Bhriain", "García López",
    "Øvergård", "Dubois", "Nowak", "O'Neill", "de la Cruz", "Kowalczyk", "Åström", "Smith",
    "Jones", "McDonald", "Nguyễn", "Łęcka", "Fernández", "St. John", "Rossi", "Yılmaz", "Doe",
)


@dataclass(frozen=True)
class SeedUser:
    dn: str
    sam: str
    attributes: dict[str, object]


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in folded.lower() if ch.isalnum())


def plan_users(n: int, invalid: int, tag: str, rng: random.Random) -> list[SeedUser]:
    """The users a seed creates; ``tag`` keeps sAMAccountNames unique across seeds."""
    if not 0 <= invalid <= n:
        raise LabError(f"seed: --invalid {invalid} must be between 0 and --users {n}")
    realm = ad.REALM.lower()
    users = []
    for index in range(n):
        given, surname = rng.choice(GIVEN), rng.choice(SURNAMES)
        sam = f"{_ascii(given[0] + surname)[:9]}.{tag}{index:05d}"
        display = f"{given} {surname}"
        attributes: dict[str, object] = {
            "givenName": given,
            "sn": surname,
            "displayName": display,
            "sAMAccountName": sam,
            "userPrincipalName": f"{sam}@{realm}",
            "extensionAttribute1": rng.choice(LICENSES),
            "c": rng.choice(COUNTRIES),
            # Enabled, password not required: lab users never sign in, and hashing a password
            # for each of 20,000 users would triple the seed time.
            "userAccountControl": 544,
        }
        if index < invalid:
            kind = INVALID_KINDS[index % len(INVALID_KINDS)]
            if kind == "no-license":
                del attributes["extensionAttribute1"]
            elif kind == "bad-country":
                attributes["c"] = "XX"
            else:
                attributes["extensionAttribute1"] = "E9"
        cn = escape_rdn(f"{display} ({sam})")
        users.append(SeedUser(f"CN={cn},{ad.STAFF_OU}", sam, attributes))
    return users


def add_users(conn: Connection, users: list[SeedUser], group_dn: str) -> None:
    """Add the users on one connection, then make them members, 500 values per modify."""
    for user in users:
        if not conn.add(user.dn, ["top", "person", "organizationalPerson", "user"],
                        user.attributes):
            raise LabError(f"seed: adding {user.dn} failed: {conn.result['description']} "
                           f"{conn.result['message']}")
    for start in range(0, len(users), MEMBERS_PER_MODIFY):
        batch = [user.dn for user in users[start:start + MEMBERS_PER_MODIFY]]
        if not conn.modify(group_dn, {"member": [(MODIFY_ADD, batch)]}):
            raise LabError(f"seed: adding members to {group_dn} failed: "
                           f"{conn.result['description']} {conn.result['message']}")


def seed(lab: Lab, n: int, *, invalid: int = 0) -> list[str]:
    """Add ``n`` users to OU=Staff and O365_Provision; return their sAMAccountNames."""
    if "ad" not in lab.peers or not lab.alive("ad"):
        raise LabError("seed: the lab's AD is not running; run: python -m lab up")
    group_dn = f"CN={ad.PROVISION_GROUP},{ad.GROUPS_OU}"
    if n < SNAPSHOT_MIN:
        users = plan_users(n, invalid, secrets.token_hex(2)[:3], random.Random())
        conn = ad.admin_connection(lab)
        try:
            add_users(conn, users, group_dn)
        finally:
            conn.unbind()
        return [user.sam for user in users]

    users = plan_users(n, invalid, "s", random.Random(n * 7919 + invalid))
    ad.cached_state(lab, f"seed-{n}-{invalid}", lambda conn: add_users(conn, users, group_dn))
    return [user.sam for user in users]
