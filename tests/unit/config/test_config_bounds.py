"""The admin-role sync's settings (``shared/config/roles.py``) as the operator's guide
documents them: each default and each bound stated as its number here, not read back from
the module (issue 28: ROLES_SHARE_MIN_REVOCATIONS' ge=1, on which a guard relies, was
untested)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from shared.config import RolesSettings

OBJECT_ID = "3C1B2A4D-0E5F-4A6B-8C7D-9E0F1A2B3C4D"


def roles(**values: Any) -> RolesSettings:
    return RolesSettings(_env_file=None, **values)  # type: ignore[call-arg]


def test_the_defaults_are_the_documented_ones() -> None:
    """Off, no OU, no nesting, no map; 10 grants and 5 revocations per 24 h, a quarter of a
    role's members from 2 revocations on, approvals for 24 h, active assignments."""
    s = roles()
    assert (False, "", False, {}, "", "", 10, 5, 24.0, 0.25, 2, 24.0, "active",
            "Granted from AD group by the O365 provisioning service", None) == (
        s.enabled, s.ou, s.nested, s.group_map, s.privileged_opt_in, s.break_glass_ids,
        s.max_grants, s.max_revocations, s.revocation_window_hours, s.max_revocation_share,
        s.share_min_revocations, s.approval_hours, s.mode, s.pim_justification,
        s.pim_duration_days)


def test_the_default_allow_list_names_eleven_roles() -> None:
    """The roles the sync may change unless ROLES_ALLOW_LIST says otherwise."""
    assert frozenset({
        "Exchange Administrator", "Helpdesk Administrator", "User Administrator",
        "License Administrator", "Groups Administrator", "SharePoint Administrator",
        "Teams Administrator", "Service Support Administrator", "Global Reader",
        "Reports Reader", "Message Center Reader"}) == roles().allowed_roles


def test_settings_are_read_with_the_roles_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """ROLES_MAX_GRANTS sets max_grants; MAX_GRANTS alone does not."""
    monkeypatch.setenv("MAX_GRANTS", "3")
    monkeypatch.setenv("ROLES_MAX_REVOCATIONS", "7")
    assert (10, 7) == (roles().max_grants, roles().max_revocations)


@pytest.mark.parametrize(("name", "lowest", "refused"), [
    ("max_grants", 0, -1),
    ("max_revocations", 0, -1),
    ("share_min_revocations", 1, 0),
    ("pim_duration_days", 1, 0),
])
def test_whole_number_limits_start_at_their_documented_lowest(name: str, lowest: int,
                                                               refused: int) -> None:
    """max grants and revocations from 0, ROLES_SHARE_MIN_REVOCATIONS and the PIM duration
    from 1: the lowest is taken, one below refused."""
    assert lowest == getattr(roles(**{name: lowest}), name)
    with pytest.raises(ValidationError):
        roles(**{name: refused})


@pytest.mark.parametrize("name", ["revocation_window_hours", "approval_hours"])
def test_hours_are_more_than_zero(name: str) -> None:
    """A window or an approval of half an hour is taken; of zero hours refused."""
    assert 0.5 == getattr(roles(**{name: 0.5}), name)
    with pytest.raises(ValidationError):
        roles(**{name: 0})


def test_the_revocation_share_is_from_0_to_1() -> None:
    """0 and 1 are taken; below 0 and above 1 refused."""
    assert (0.0, 1.0) == (roles(max_revocation_share=0).max_revocation_share,
                          roles(max_revocation_share=1).max_revocation_share)
    for refused in (-0.01, 1.01):
        with pytest.raises(ValidationError):
            roles(max_revocation_share=refused)


def test_the_ou_is_a_dn_trimmed_and_blank_is_none() -> None:
    """ROLES_OU is trimmed; blank is no OU; text that is not a DN is refused."""
    assert ("OU=Roles,DC=contoso,DC=com", "") == (
        roles(ou="  OU=Roles,DC=contoso,DC=com ").ou, roles(ou="   ").ou)
    with pytest.raises(ValidationError):
        roles(ou="not a dn")


def test_enabled_needs_an_ou() -> None:
    """ROLES_ENABLED=true without ROLES_OU is refused, naming both settings; with one, or
    disabled without one, is fine."""
    with pytest.raises(ValidationError) as caught:
        roles(enabled=True)
    assert ["Value error, ROLES_OU: is needed when ROLES_ENABLED=true"] == [
        e["msg"] for e in caught.value.errors()]
    assert (True, False) == (roles(enabled=True, ou="OU=Roles,DC=contoso,DC=com").enabled,
                             roles().enabled)


def test_break_glass_entries_are_object_ids_or_upns() -> None:
    """Object ids (lower-cased) and UPNs (case-folded) are taken and told apart; anything
    else is refused with the entry named."""
    s = roles(break_glass_ids=f"{OBJECT_ID}, BreakGlass1@Contoso.com")
    assert (frozenset({OBJECT_ID.lower()}), frozenset({"breakglass1@contoso.com"})) == (
        s.break_glass_object_ids, s.break_glass_upns)
    with pytest.raises(ValidationError, match=re.escape("'{3C1B}' is neither an object id")):
        roles(break_glass_ids="{3C1B}")


def test_opt_in_lists_its_roles() -> None:
    """ROLES_PRIVILEGED_OPT_IN and ROLES_ALLOW_LIST are comma-separated names."""
    s = roles(privileged_opt_in="Global Administrator, Privileged Role Administrator",
              allow_list="Global Reader")
    assert (frozenset({"Global Administrator", "Privileged Role Administrator"}),
            frozenset({"Global Reader"})) == (s.opted_in_roles, s.allowed_roles)
