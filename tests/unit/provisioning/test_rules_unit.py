"""The input rules' edges the mutation run found open (issue 28): a UPN with two '@', a
doubled targetAddress prefix, Exchange's best-fit letters, and how an Invalid reads."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from shared.config import ProvisioningSettings
from shared.provisioning.rules import Invalid, Valid, check, derive_alias, expected_routing

PROV = ProvisioningSettings(routing_domain="contoso.mail.onmicrosoft.com")


@dataclass(frozen=True)
class User:
    sam: str = "ann"
    upn: str | None = "ann@contoso.com"
    license_name: str | None = "E3"
    country: str | None = "DE"
    mail_nickname: str | None = None


def test_a_upn_with_two_at_signs_is_the_user_s_error_not_a_guess() -> None:
    """anna@x@contoso.com has no one left side ("anna"? "anna@x"?): the user is refused with
    the UPN named, and setting mailNickname is the fix."""
    result = check(User(upn="anna@x@contoso.com"), PROV)
    assert Invalid(("the userPrincipalName 'anna@x@contoso.com' holds more than one '@', so it "
                    "has no left side to make an alias from",),
                   "set mailNickname to an alias of letters, digits and . - _ (for example the "
                   "user's first and last name joined by a period)") == result


def test_a_mail_nickname_makes_a_two_at_upn_irrelevant() -> None:
    """With mailNickname set the UPN is not read for the alias."""
    result = check(User(upn="anna@x@contoso.com", mail_nickname="anna.b"), PROV)
    assert isinstance(result, Valid)
    assert ("anna.b", False) == (result.alias, result.alias_derived)


@pytest.mark.parametrize(("upn", "alias"), [
    ("anna", "anna"),  # no '@': all of it is the left side
    (" anna.b@contoso.com ", "anna.b"),
    ("@contoso.com", "ann"),  # nothing left of the '@': sAMAccountName
    (None, "ann"),
])
def test_the_alias_is_the_left_side_of_a_upn_with_at_most_one_at(upn: str | None,
                                                                 alias: str) -> None:
    """Left of the one '@', the whole UPN when it has none, sAMAccountName when that is
    empty."""
    result = check(User(upn=upn), PROV)
    assert isinstance(result, Valid)
    assert alias == result.alias


def _valid(alias: str) -> Valid:
    return Valid("E3", "ENTERPRISEPACK", "DE", alias, f"{alias}@contoso.mail.onmicrosoft.com",
                 alias_derived=True)


@pytest.mark.parametrize("target", [
    "SMTP:smtp:old.anna@contoso.mail.onmicrosoft.com",
    "smtp:SMTP:old.anna@contoso.mail.onmicrosoft.com",
    "SMTP:x:y:old.anna@contoso.mail.onmicrosoft.com",
])
def test_a_doubled_target_address_prefix_is_no_routing_address(target: str) -> None:
    """An admin's typo SMTP:smtp:... leaves a colon in the address part, which no SMTP
    address holds: the derived routing address is expected, not a piece of the typo."""
    assert "anna@contoso.mail.onmicrosoft.com" == expected_routing(target, _valid("anna"), PROV)


@pytest.mark.parametrize(("target", "expected"), [
    ("SMTP:Old.Anna@contoso.mail.onmicrosoft.com", "old.anna@contoso.mail.onmicrosoft.com"),
    ("smtp: old.anna@contoso.mail.onmicrosoft.com ", "old.anna@contoso.mail.onmicrosoft.com"),
    ("SMTP:anna@contoso.com", "anna@contoso.mail.onmicrosoft.com"),
    (None, "anna@contoso.mail.onmicrosoft.com"),
])
def test_one_prefix_and_an_address_in_the_routing_domain_is_kept(target: str | None,
                                                                 expected: str) -> None:
    """One prefix, one colon, an address in the routing domain: the remote mailbox's own
    address (lower case) is expected; any other domain or none gives the derived one."""
    assert expected == expected_routing(target, _valid("anna"), PROV)


def test_exchange_s_best_fit_letters() -> None:
    """The seventeen letters Exchange writes as it names them (ä → ae ... Þ → Th), and an
    accent otherwise dropped (é → e)."""
    assert ("aeoeueAeOeUessaeAeoOoeOedDthThe", "") == derive_alias("äöüÄÖÜßæÆøØœŒðÐþÞé")


def test_an_invalid_user_s_reason_joins_the_problems_with_semicolons() -> None:
    """The reason a helpdesk reads is every problem, "; " between them."""
    assert "a; b; c" == Invalid(("a", "b", "c"), "fix").reason
