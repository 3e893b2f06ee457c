"""The input rules: what a user's AD attributes must hold before anything is changed for them.
Pure: the mailbox step and the licence step both ask ``check``, so a user whose licence name or
country the licence step would refuse never gets a remote mailbox first.

- The licence name (``LICENSE_ATTRIBUTE``) names a ``LICENSE_MAP`` entry, ignoring case and
  surrounding spaces (``e3`` is ``E3``).
- The country (``COUNTRY_ATTRIBUTE``) is an ISO 3166-1 alpha-2 code, in any case; it becomes
  the cloud user's ``usageLocation``.
- The alias, as Exchange derives one (Enable-RemoteMailbox, parameter ``-Alias``, on
  learn.microsoft.com): ``mailNickname`` when it is set; otherwise the left side of the
  user principal name (``sAMAccountName`` when there is none). A UPN with more than one ``@``
  (AD does not check its syntax; Entra ID takes none) has no left side to take: that is the
  user's error, not a guess. An alias may hold letters,
  digits and ``! # $ % ' * + - / = ? ^ _ ` { | } ~``; a period only between other valid
  characters; ``&`` is left out because Entra Connect does not sync it. Latin-1 letters are
  written as Exchange's best-fit ASCII does for addresses (``ö`` → ``oe``). What cannot be
  written so is dropped; only when nothing remains is it the user's error.
- The remote routing address is ``<alias>@<ROUTING_DOMAIN>``. A remote mailbox's
  ``targetAddress`` counts as its routing address when it is one prefix (``SMTP:``), one
  colon and an address in the routing domain; a doubled prefix (``SMTP:smtp:anna@...``) is no
  address, so the derived one is expected.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import iso3166

from shared.config import ProvisioningSettings

ALIAS_MAX = 64
_ALIAS_CHARS = re.compile(r"[A-Za-z0-9!#$%'*+\-/=?^_`{|}~.]")
# Exchange's best fit for the letters it names (U+00F6 ö → oe); the rest of Latin-1 loses its
# accent (é → e).
_BEST_FIT = {"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ß": "ss",
             "æ": "ae", "Æ": "Ae", "ø": "o", "Ø": "O", "œ": "oe", "Œ": "Oe", "ð": "d", "Ð": "D",
             "þ": "th", "Þ": "Th"}


class Attributes(Protocol):
    """What the rules read of a user (``shared.ad.directory.DirectoryUser`` has all of it)."""

    @property
    def sam(self) -> str: ...
    @property
    def upn(self) -> str | None: ...
    @property
    def license_name(self) -> str | None: ...
    @property
    def country(self) -> str | None: ...
    @property
    def mail_nickname(self) -> str | None: ...


@dataclass(frozen=True)
class Valid:
    """The user's inputs, normalised: what the steps act on."""

    licence: str  # the LICENSE_MAP key
    sku: str  # its SKU part number
    country: str  # ISO 3166-1 alpha-2, upper case
    alias: str
    routing_address: str
    alias_derived: bool  # True when mailNickname was empty and the alias was derived here


@dataclass(frozen=True)
class Invalid:
    """Why the user cannot be provisioned, and what the helpdesk should change."""

    problems: tuple[str, ...]
    fix: str

    @property
    def reason(self) -> str:
        return "; ".join(self.problems)


def licence_key(name: str | None, licence_map: Mapping[str, str]) -> str | None:
    """The ``LICENSE_MAP`` key ``name`` means (case and outer spaces ignored), or None."""
    wanted = " ".join((name or "").split()).casefold()
    return next((key for key in licence_map if " ".join(key.split()).casefold() == wanted),
                None) if wanted else None


def country_code(value: str | None) -> str | None:
    """``value`` as an upper-case ISO 3166-1 alpha-2 code, or None when it is not one."""
    code = (value or "").strip().upper()
    return code if len(code) == 2 and code in iso3166.countries_by_alpha2 else None


def derive_alias(text: str) -> tuple[str, str]:
    """(alias, the characters that had to go) for ``text``: best-fit ASCII, valid characters
    only, periods only between others, at most 64 characters."""
    kept: list[str] = []
    dropped: list[str] = []
    for char in text:
        fitted = _BEST_FIT.get(char)
        if fitted is None:
            fitted = unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode()
        good = "".join(c for c in fitted if _ALIAS_CHARS.fullmatch(c))
        if good:
            kept.append(good)
        if not good or len(good) < len(fitted) or not fitted:
            dropped.append(char)
    alias = re.sub(r"\.{2,}", ".", "".join(kept)).strip(".")[:ALIAS_MAX].rstrip(".")
    return alias, "".join(dict.fromkeys(dropped))


def valid_alias(alias: str) -> bool:
    """Whether Exchange would take ``alias`` as it is."""
    return derive_alias(alias) == (alias, "") and bool(alias)


def check(user: Attributes, provisioning: ProvisioningSettings) -> Valid | Invalid:
    """The one decision on a user's inputs, for both steps."""
    problems: list[str] = []
    fixes: list[str] = []
    attribute, country_attribute = provisioning.license_attribute, provisioning.country_attribute
    key = licence_key(user.license_name, provisioning.license_map)
    if not (user.license_name or "").strip():
        problems.append(f"the licence attribute {attribute} is empty")
    elif key is None:
        problems.append(f"the licence '{user.license_name}' in {attribute} is not one of "
                        f"{', '.join(sorted(provisioning.license_map))}")
    if key is None:
        fixes.append(f"set {attribute} to one of {', '.join(sorted(provisioning.license_map))}")
    country = country_code(user.country)
    if not (user.country or "").strip():
        problems.append(f"the country ({country_attribute}) is not set")
    elif country is None:
        problems.append(f"the country '{user.country}' in {country_attribute} is not an "
                        "ISO 3166-1 alpha-2 country code")
    if country is None:
        fixes.append(f"set {country_attribute} to the user's two-letter country, e.g. DE or US")
    alias, derived, alias_problem = _alias(user)
    if alias_problem:
        problems.append(alias_problem)
        fixes.append("set mailNickname to an alias of letters, digits and . - _ (for example "
                     "the user's first and last name joined by a period)")
    if problems or key is None or country is None:
        return Invalid(tuple(problems), "; ".join(fixes))
    return Valid(key, provisioning.license_map[key], country, alias,
                 f"{alias}@{provisioning.routing_domain}".lower(), derived)


def _alias(user: Attributes) -> tuple[str, bool, str]:
    """(alias, derived here, problem)."""
    nickname = (user.mail_nickname or "").strip()
    if nickname:
        if valid_alias(nickname):
            return nickname, False, ""
        _, bad = derive_alias(nickname)
        return "", False, (f"the mailNickname '{nickname}' holds characters Exchange refuses "
                           f"in an alias ({bad or 'a leading, trailing or double period'})")
    upn = (user.upn or "").strip()
    if upn.count("@") > 1:
        return "", True, (f"the userPrincipalName '{upn}' holds more than one '@', so it has no "
                          "left side to make an alias from")
    source = upn.partition("@")[0] or user.sam
    alias, bad = derive_alias(source)
    if not alias:
        return "", True, (f"no alias can be made from '{source}': every character of it "
                          f"({bad}) is one Exchange refuses in an alias")
    return alias, True, ""


def expected_routing(target_address: str | None, inputs: Valid,
                     provisioning: ProvisioningSettings) -> str:
    """The routing address the cloud user must show: the remote mailbox's own (its
    ``targetAddress``, which an older alias may have made) when it is in the routing domain,
    else the one the rules derive."""
    current = (target_address or "").split(":", 1)[-1].strip().lower()
    if ":" not in current and current.endswith(f"@{provisioning.routing_domain}"):
        return current
    return inputs.routing_address
