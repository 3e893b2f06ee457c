"""Settings: parsed once, defaults as the existing scripts had them, one-line errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.config import load_settings, setting_names
from shared.errors import ConfigError

MINIMAL = {
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    "AD_URL": "ldaps://dc1.contoso.com:636",
    "AD_BASE_DN": "DC=contoso,DC=com",
    "AD_USER": "CONTOSO\\svc-o365",
    "AD_PASSWORD": "not-a-real-password",
    "ROUTING_DOMAIN": "contoso.mail.onmicrosoft.com",
    "EXCHANGE_URL": "https://exchange.contoso.com/PowerShell",
    "EXCHANGE_USER": "CONTOSO\\svc-o365",
    "EXCHANGE_PASSWORD": "not-a-real-password",
    "MAIL_TRANSPORT": "none",
}


@pytest.fixture
def env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in setting_names():
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "settings.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in MINIMAL.items()))
    return path


def test_defaults_match_the_existing_scripts(env_file: Path) -> None:
    """Groups, attributes and licence names default to what the PowerShell script used."""
    settings = load_settings(env_file)
    assert settings.provisioning.provision_group == "O365_Provision"
    assert settings.provisioning.license_group == "O365_License"
    assert settings.provisioning.license_attribute == "extensionAttribute1"
    assert settings.provisioning.country_attribute == "c"
    assert settings.provisioning.license_map == {
        "E3": "ENTERPRISEPACK",
        "Exchange 2": "EXCHANGEENTERPRISE",
    }


def test_settings_are_frozen(env_file: Path) -> None:
    """Settings are read once: a section refuses a new value (pydantic's frozen_instance
    error, naming the field), the settings refuse a new section, and both keep what was read."""
    settings = load_settings(env_file)
    ad = settings.ad
    with pytest.raises(ValidationError) as caught:
        settings.ad.url = "ldaps://elsewhere"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.ad = ad.model_copy(update={"url": "ldaps://elsewhere"})  # type: ignore[misc]
    assert [("frozen_instance", ("url",))] == [(e["type"], e["loc"]) for e in caught.value.errors()]
    assert ("ldaps://dc1.contoso.com:636", ad) == (settings.ad.url, settings.ad)


def test_secrets_do_not_print(env_file: Path) -> None:
    settings = load_settings(env_file)
    assert "not-a-real-password" not in repr(settings)
    assert "not-a-real-password" not in str(settings.ad)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("AD_URL", "http://dc1", "setting AD_URL: 'http://dc1' is not an ldap:// or ldaps:// URL"),
        ("AD_URL", "ldap://dc1", "setting AD_URL: ldap:// sends the password in clear"),
        ("EXCHANGE_URL", "http://ex/PowerShell", "setting EXCHANGE_URL: 'http://ex/PowerShell'"),
        ("GRAPH_TIMEOUT_SECONDS", "-1", "setting GRAPH_TIMEOUT_SECONDS: Input should be greater"),
        ("LICENSE_MAP", "{}", "setting LICENSE_MAP: the licence map is empty"),
        ("LICENSE_MAP", "E3", "setting LICENSE_MAP: "),
        ("POLL_SCHEDULE", "*/5 * * * *", "setting POLL_SCHEDULE: '*/5 * * * *' is not a six-field"),
        ("ROLES_ENABLED", "true", "setting ROLES_OU: is needed when ROLES_ENABLED=true"),
        ("AZURE_CREDENTIAL", "static", "setting AZURE_STATIC_TOKEN: is needed"),
        ("MAIL_TRANSPORT", "smtp", "setting MAIL_TO: "),
    ],
)
def test_a_bad_setting_fails_naming_it(
    env_file: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    """A bad value fails start-up with one line that names the setting and the problem."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file)
    message = str(caught.value)
    assert message.startswith(expected)
    assert "\n" not in message


@pytest.mark.parametrize("missing", ["AD_URL", "AD_PASSWORD", "ROUTING_DOMAIN", "EXCHANGE_URL"])
def test_a_missing_setting_fails_naming_it(env_file: Path, missing: str) -> None:
    env_file.write_text("".join(f"{k}={v}\n" for k, v in MINIMAL.items() if k != missing))
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file)
    assert str(caught.value) == f"setting {missing}: is required but not set"


def test_allow_list_and_privileged_opt_in_are_read_as_given(
    env_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The allow-list and the opt-in are kept as listed; which roles are privileged is the
    tenant's isPrivileged, decided by the guards (tests/unit/roles/test_roles_plan.py), not by
    names here."""
    monkeypatch.setenv("ROLES_ALLOW_LIST", "Helpdesk Administrator,Global Administrator")
    monkeypatch.setenv("ROLES_PRIVILEGED_OPT_IN", "Global Administrator")
    roles = load_settings(env_file).roles
    assert ({"Helpdesk Administrator", "Global Administrator"}, {"Global Administrator"}) == (
        roles.allowed_roles, roles.opted_in_roles)
