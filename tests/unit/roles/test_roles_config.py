"""Settings of the role guards and of the groups the service reads: refused at start, in one
line naming the setting, when they would point the service outside its directory or name a
break-glass account it cannot recognise."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from shared.config import load_settings, setting_names
from shared.errors import ConfigError
from tests.unit.config.test_config import MINIMAL

GUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Factory: a settings file with MINIMAL plus ``extra``; returns its path."""
    for name in setting_names():
        monkeypatch.delenv(name, raising=False)

    def make(**extra: str) -> Path:
        path = tmp_path / "settings.env"
        values = {**MINIMAL, **extra}
        path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        return path

    return make


def test_roles_ou_outside_the_base_dn_is_refused_at_start(write: Callable[..., Path]) -> None:
    """A ROLES_OU outside AD_BASE_DN would let groups the service was not given drive admin
    roles: start-up fails naming ROLES_OU. One inside it (any case, any spacing) is taken."""
    with pytest.raises(ConfigError) as caught:
        load_settings(write(ROLES_ENABLED="true", ROLES_OU="OU=Admin Roles,DC=fabrikam,DC=com"))
    inside = load_settings(write(ROLES_ENABLED="true",
                                 ROLES_OU="ou=Admin Roles, dc=CONTOSO,dc=com"))
    assert "ROLES_OU" == caught.value.setting
    assert "\n" not in str(caught.value)
    assert "ou=Admin Roles, dc=CONTOSO,dc=com" == inside.roles.ou


def test_provisioning_groups_by_dn_must_lie_in_the_directory(write: Callable[..., Path]) -> None:
    """PROVISION_GROUP may be a DN (read as it is, never looked up by name), but not one
    outside AD_BASE_DN; GROUPS_OU, where names are looked up, likewise."""
    dn = "CN=O365_Provision,OU=Groups,DC=contoso,DC=com"
    taken = load_settings(write(PROVISION_GROUP=dn, GROUPS_OU="OU=Groups,DC=contoso,DC=com"))
    refused = []
    for setting, value in (("PROVISION_GROUP", "CN=O365_Provision,DC=fabrikam,DC=com"),
                           ("GROUPS_OU", "OU=Groups,DC=fabrikam,DC=com"),
                           ("LICENSE_GROUP", "CN=broken,,DC=contoso")):
        with pytest.raises(ConfigError) as caught:
            load_settings(write(**{setting: value}))
        refused.append(caught.value.setting)
    assert (dn, "OU=Groups,DC=contoso,DC=com") == (taken.provisioning.provision_group,
                                                  taken.provisioning.groups_ou)
    assert ["PROVISION_GROUP", "GROUPS_OU", "LICENSE_GROUP"] == refused


def test_break_glass_takes_object_ids_and_upns(write: Callable[..., Path]) -> None:
    """ROLES_BREAK_GLASS_IDS holds object ids and UPNs, each kept for what it is."""
    settings = load_settings(write(ROLES_BREAK_GLASS_IDS=f"{GUID.upper()}, BreakGlass@Contoso.com"))
    assert ({GUID}, {"breakglass@contoso.com"}) == (
        set(settings.roles.break_glass_object_ids), set(settings.roles.break_glass_upns))


@pytest.mark.parametrize("entry", [f"{{{GUID}}}", "breakglass", GUID[:-1], "a@b"])
def test_malformed_break_glass_entry_is_refused_at_start(
    write: Callable[..., Path], entry: str
) -> None:
    """A braced GUID, a bare name, a short GUID or a UPN without a domain would be silently
    ignored: start-up fails naming ROLES_BREAK_GLASS_IDS and the entry instead."""
    with pytest.raises(ConfigError) as caught:
        load_settings(write(ROLES_BREAK_GLASS_IDS=f"{GUID},{entry}"))
    assert "ROLES_BREAK_GLASS_IDS" == caught.value.setting
    assert entry in caught.value.problem


def test_role_limits_have_safe_defaults(write: Callable[..., Path]) -> None:
    """Direct members only, 10 grants a cycle, 5 revocations in 24 h, the share rule from 2
    revocations, approvals valid for 24 h."""
    roles = load_settings(write()).roles
    assert (False, 10, 5, 24.0, 2, 24.0) == (
        roles.nested, roles.max_grants, roles.max_revocations, roles.revocation_window_hours,
        roles.share_min_revocations, roles.approval_hours)
