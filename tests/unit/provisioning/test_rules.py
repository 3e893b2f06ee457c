"""The input rules, in memory: one decision for both steps on the licence name, the country
and the alias, so a user the licence step would refuse never gets a remote mailbox first."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from shared.config import ProvisioningSettings
from shared.provisioning.rules import (
    Invalid,
    Valid,
    check,
    derive_alias,
    expected_routing,
    licence_key,
)

PROV = ProvisioningSettings(routing_domain="contoso.mail.onmicrosoft.com")


@dataclass(frozen=True)
class User:
    sam: str = "ann"
    upn: str | None = "ann@contoso.com"
    license_name: str | None = "E3"
    country: str | None = "DE"
    mail_nickname: str | None = None


def test_a_valid_user_gets_its_licence_country_alias_and_routing_address() -> None:
    """E3 in Germany, no mailNickname yet: the alias is the UPN's left side, as Exchange
    derives it, and the routing address is alias@routing domain."""
    assert Valid("E3", "ENTERPRISEPACK", "DE", "ann", "ann@contoso.mail.onmicrosoft.com",
                 alias_derived=True) == check(User(), PROV)


@pytest.mark.parametrize(("name", "key", "sku"), [
    ("e3", "E3", "ENTERPRISEPACK"),
    (" E3 ", "E3", "ENTERPRISEPACK"),
    ("exchange 2", "Exchange 2", "EXCHANGEENTERPRISE"),
    ("EXCHANGE  2", "Exchange 2", "EXCHANGEENTERPRISE"),
])
def test_licence_names_ignore_case_and_spacing(name: str, key: str, sku: str) -> None:
    """The same rule in both steps: 'e3' is E3 and 'EXCHANGE  2' is Exchange 2 (the mailbox
    step used to accept 'e3 ' and the licence step to refuse it, after the user already had a
    remote mailbox): each name means its own LICENSE_MAP entry and SKU."""
    result = check(User(license_name=name), PROV)
    assert isinstance(result, Valid)
    assert (key, key, sku) == (licence_key(name, PROV.license_map), result.licence, result.sku)


def test_a_blank_licence_name_matches_no_entry_not_even_a_blank_one() -> None:
    """An empty or blank licence attribute is always "empty", even if LICENSE_MAP were given a
    blank name by mistake: a user without a licence name is never licensed."""
    odd = ProvisioningSettings(routing_domain="contoso.mail.onmicrosoft.com",
                               license_map={" ": "ENTERPRISEPACK", "E3": "ENTERPRISEPACK"})
    result = check(User(license_name="  "), odd)
    assert isinstance(result, Invalid)
    assert (None, ("the licence attribute extensionAttribute1 is empty",)) == (
        licence_key("", odd.license_map), result.problems)


@pytest.mark.parametrize(("name", "problem"), [
    (None, "the licence attribute extensionAttribute1 is empty"),
    ("  ", "the licence attribute extensionAttribute1 is empty"),
    ("E5", "the licence 'E5' in extensionAttribute1 is not one of E3, Exchange 2"),
])
def test_an_unknown_licence_is_invalid_with_the_attribute_and_value(name: str | None,
                                                                    problem: str) -> None:
    """The reason names the attribute and the value; the fix lists the known names."""
    result = check(User(license_name=name), PROV)
    assert isinstance(result, Invalid)
    assert (problem,) == result.problems
    assert "set extensionAttribute1 to one of E3, Exchange 2" == result.fix


@pytest.mark.parametrize("country", ["XX", "Germany", "D", "EU"])
def test_a_country_that_is_not_iso_3166_is_invalid(country: str) -> None:
    """Any two letters no longer pass the mailbox step: XX fails before Exchange is asked."""
    result = check(User(country=country), PROV)
    assert isinstance(result, Invalid)
    assert (f"the country '{country}' in c is not an ISO 3166-1 alpha-2 country code",) == \
        result.problems


def test_a_missing_country_is_invalid() -> None:
    """No c at all: said as such, with the fix."""
    result = check(User(country=None), PROV)
    assert isinstance(result, Invalid)
    assert ("the country (c) is not set",) == result.problems
    assert "set c to the user's two-letter country, e.g. DE or US" == result.fix


def test_lower_case_country_is_normalised() -> None:
    """'de' in AD is Germany: usageLocation DE."""
    result = check(User(country=" de "), PROV)
    assert isinstance(result, Valid) and "DE" == result.country


def test_every_problem_is_named_at_once() -> None:
    """Licence and country both wrong: one mail names both, so one fix visit suffices."""
    result = check(User(license_name="E5", country="XX"), PROV)
    assert isinstance(result, Invalid) and 2 == len(result.problems)


def test_a_set_mail_nickname_is_kept() -> None:
    """Exchange keeps an existing mailNickname; so do we (and say it was not derived)."""
    result = check(User(mail_nickname="ann.smith"), PROV)
    assert isinstance(result, Valid)
    assert ("ann.smith", "ann.smith@contoso.mail.onmicrosoft.com", False) == (
        result.alias, result.routing_address, result.alias_derived)


@pytest.mark.parametrize(("source", "alias", "dropped"), [
    ("ann", "ann", ""),
    ("Zoë Müller", "ZoeMueller", " "),
    ("jörg", "joerg", ""),
    ("o'brien", "o'brien", ""),
    ("ann&bob", "annbob", "&"),
    (".ann..b.", "ann.b", ""),
    ("李雷", "", "李雷"),
])
def test_an_alias_is_derived_as_exchange_writes_one(source: str, alias: str,
                                                    dropped: str) -> None:
    """Best-fit ASCII (ö → oe), valid characters only (& is not synced by Entra Connect),
    periods only between characters; what had to go is reported."""
    assert (alias, dropped) == derive_alias(source)


def test_an_alias_never_exceeds_64_characters() -> None:
    """Exchange's limit for an alias."""
    assert 64 == len(derive_alias("a" * 80)[0])


def test_the_alias_comes_from_the_upn_not_the_sam() -> None:
    """Exchange takes the left side of the UPN when no alias is given."""
    result = check(User(sam="asmith", upn="ann.smith@contoso.com"), PROV)
    assert isinstance(result, Valid) and "ann.smith" == result.alias


def test_the_sam_is_used_without_a_upn() -> None:
    """No UPN: the sAMAccountName."""
    result = check(User(upn=None, sam="ann-s"), PROV)
    assert isinstance(result, Valid) and "ann-s" == result.alias


def test_a_upn_of_refused_characters_only_is_the_user_s_error() -> None:
    """Nothing valid remains: the mail names the characters and the fix."""
    result = check(User(upn="李雷@contoso.com", sam="李雷"), PROV)
    assert isinstance(result, Invalid)
    assert ("no alias can be made from '李雷': every character of it (李雷) is one Exchange "
            "refuses in an alias",) == result.problems
    assert "set mailNickname" in result.fix


def test_an_invalid_mail_nickname_is_the_user_s_error() -> None:
    """A mailNickname Exchange would refuse is not silently replaced: it is someone's choice."""
    result = check(User(mail_nickname="ann smith"), PROV)
    assert isinstance(result, Invalid)
    assert ("the mailNickname 'ann smith' holds characters Exchange refuses in an alias ( )",
            ) == result.problems


def test_the_cloud_user_must_show_the_remote_mailbox_s_own_routing_address() -> None:
    """A remote mailbox made with another alias (by the old script) keeps its address: the
    licence step waits for that one; without a target address, for the derived one."""
    valid = check(User(), PROV)
    assert isinstance(valid, Valid)
    assert "old@contoso.mail.onmicrosoft.com" == expected_routing(
        "SMTP:old@contoso.mail.onmicrosoft.com", valid, PROV)
    assert "ann@contoso.mail.onmicrosoft.com" == expected_routing(None, valid, PROV)
    assert "ann@contoso.mail.onmicrosoft.com" == expected_routing(
        "SMTP:ann@elsewhere.example", valid, PROV)


def test_every_fix_is_named_in_one_line() -> None:
    """Licence and country both wrong: the fix names both changes, in one line."""
    result = check(User(license_name="E5", country="XX"), PROV)
    assert isinstance(result, Invalid)
    assert ("set extensionAttribute1 to one of E3, Exchange 2; set c to the user's two-letter "
            "country, e.g. DE or US") == result.fix


def test_an_alias_problem_says_how_to_write_a_good_one() -> None:
    """A mailNickname with a leading period (or a trailing or double one) is refused saying so,
    and the fix says what an alias may hold."""
    result = check(User(mail_nickname=".ann"), PROV)
    assert Invalid(("the mailNickname '.ann' holds characters Exchange refuses in an alias (a "
                    "leading, trailing or double period)",),
                   "set mailNickname to an alias of letters, digits and . - _ (for example the "
                   "user's first and last name joined by a period)") == result


@pytest.mark.parametrize(("source", "alias", "dropped"), [
    ("a⑴", "a1", "⑴"),  # best fit "(1)": the digit stays, the parentheses go, the char is named
    ("Xena.X", "Xena.X", ""),  # letters at either end are kept, only periods are trimmed
    ("a" * 63 + ".b", "a" * 63, ""),  # cut at 64, then no trailing period
])
def test_an_alias_keeps_what_exchange_keeps(source: str, alias: str, dropped: str) -> None:
    """A character whose best fit is partly valid keeps the valid part and is reported; the
    alias loses only periods at its ends, also where the 64-character cut leaves one."""
    assert (alias, dropped) == derive_alias(source)
