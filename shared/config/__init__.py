"""App settings, parsed once at start into frozen, typed objects.

Every setting is an upper-case app setting (an environment variable in Azure Functions,
a line of ``.lab/settings.env`` on the lab). ``load_settings()`` reads them all, validates
them, and fails with one line naming the setting and what is wrong. Nothing else in the
service reads ``os.environ``.

Secret-valued settings (``AD_PASSWORD``, ``EXCHANGE_PASSWORD``, ``SMTP_PASSWORD``,
``AZURE_STATIC_TOKEN``, ``AzureWebJobsStorage``) are ``SecretStr``: they never print. Their value
is either the secret itself (as Azure leaves it after resolving a Key Vault reference) or a
Key Vault reference ``@Microsoft.KeyVault(SecretUri=https://<vault>/secrets/<name>)``, which
the secret provider (``shared.secrets``) resolves when the secret is first needed.

Settings sit near the bottom: every room may read them, and they read only errors and DNs.
May import: `errors`, `dn`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from shared.dn import dn_within, is_dn
from shared.errors import ConfigError

from .base import Section, field_setting, setting_name
from .leavers import LeaversSettings
from .premises import (
    AdSettings,
    ConnectSettings,
    ExchangeSettings,
    RelayLink,
    RelaySettings,
    Transport,
)
from .roles import DEFAULT_ROLE_ALLOW_LIST, RolesSettings
from .sections import (
    DEFAULT_LICENSE_MAP,
    GraphSettings,
    IdentitySettings,
    KeyVaultSettings,
    MailSettings,
    ProvisioningSettings,
    ScheduleSettings,
    ServiceSettings,
    SmtpSettings,
    StorageSettings,
    SyncSettings,
)

__all__ = [
    "DEFAULT_LICENSE_MAP", "DEFAULT_ROLE_ALLOW_LIST", "AdSettings", "ConnectSettings",
    "ExchangeSettings",
    "GraphSettings", "IdentitySettings", "KeyVaultSettings", "LeaversSettings", "MailSettings",
    "ProvisioningSettings", "RelayLink", "RelaySettings", "RolesSettings", "ScheduleSettings",
    "ServiceSettings", "Settings", "SmtpSettings", "StorageSettings", "SyncSettings",
    "Transport",
    "load_settings", "setting_names",
]


@dataclass(frozen=True)
class Settings:
    """All settings of the service. Build it with ``load_settings()``."""

    storage: StorageSettings
    ad: AdSettings
    provisioning: ProvisioningSettings
    exchange: ExchangeSettings
    identity: IdentitySettings
    graph: GraphSettings
    key_vault: KeyVaultSettings
    mail: MailSettings
    smtp: SmtpSettings
    roles: RolesSettings
    schedules: ScheduleSettings
    service: ServiceSettings
    relay: RelaySettings
    sync: SyncSettings
    connect: ConnectSettings
    leavers: LeaversSettings


_SECTIONS: dict[str, type[Section]] = {
    "storage": StorageSettings,
    "ad": AdSettings,
    "provisioning": ProvisioningSettings,
    "exchange": ExchangeSettings,
    "identity": IdentitySettings,
    "graph": GraphSettings,
    "key_vault": KeyVaultSettings,
    "mail": MailSettings,
    "smtp": SmtpSettings,
    "roles": RolesSettings,
    "schedules": ScheduleSettings,
    "service": ServiceSettings,
    "relay": RelaySettings,
    "sync": SyncSettings,
    "connect": ConnectSettings,
    "leavers": LeaversSettings,
}


def setting_names() -> dict[str, bool]:
    """Every app setting the service reads, mapped to whether it is required."""
    names: dict[str, bool] = {}
    for section in _SECTIONS.values():
        prefix = str(section.model_config.get("env_prefix", ""))
        for field_name, field in section.model_fields.items():
            alias = field.validation_alias
            name = alias if isinstance(alias, str) else f"{prefix}{field_name}".upper()
            names[name] = field.is_required()
    return names


def load_settings(env_file: str | Path | None = None) -> Settings:
    """Read and validate every setting; raise ``ConfigError`` naming the first bad one.

    Values come from the environment, then from ``env_file`` (KEY=VALUE lines) where given.
    """
    sections: dict[str, Any] = {}
    for key, section in _SECTIONS.items():
        try:
            sections[key] = section(_env_file=env_file)
        except ValidationError as exc:
            raise ConfigError(*setting_name(section, exc.errors()[0])) from None
        except SettingsError as exc:  # a JSON-valued setting that is not JSON
            match = re.search(r'field "(\w+)"', str(exc))
            field = match.group(1) if match else "?"
            raise ConfigError(field_setting(section, field), "is not valid JSON") from None
    _check_within_base(sections["ad"], sections["provisioning"], sections["roles"])
    _check_connect(sections["sync"], sections["connect"])
    return Settings(**sections)


def _check_connect(sync: SyncSettings, connect: ConnectSettings) -> None:
    """``SYNC_TRIGGER=connect`` needs the Connect server's endpoint and account."""
    if sync.trigger != "connect":
        return
    for setting, value in (("CONNECT_URL", connect.url), ("CONNECT_USER", connect.user),
                           ("CONNECT_PASSWORD", connect.password)):
        if not value:
            raise ConfigError(setting, "is needed when SYNC_TRIGGER=connect")


def _check_within_base(ad: AdSettings, provisioning: ProvisioningSettings,
                       roles: RolesSettings) -> None:
    """The OUs and group DNs the service reads must lie in the directory it is given: a
    ROLES_OU elsewhere would let groups outside AD_BASE_DN drive admin roles."""
    groups = [("PROVISION_GROUP", provisioning.provision_group),
              ("LICENSE_GROUP", provisioning.license_group)]
    named = [("ROLES_OU", roles.ou), ("GROUPS_OU", provisioning.groups_ou)]
    for setting, dn in named + [(s, g) for s, g in groups if is_dn(g)]:
        if dn and not dn_within(dn, ad.base_dn):
            raise ConfigError(setting, f"'{dn}' is not under AD_BASE_DN ({ad.base_dn}); "
                              "give an OU or group inside the directory the service reads")
