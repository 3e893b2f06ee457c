"""How the service reaches the premises: Active Directory, Exchange, and the Azure Relay
hybrid connections both may go through (``AD_TRANSPORT`` / ``EXCHANGE_TRANSPORT``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import SettingsConfigDict

from shared.errors import ConfigError

from .base import Section, csv_values, setting_name
from .sections import IdentitySettings, KeyVaultSettings, ServiceSettings

# A relay namespace: its name (``contoso-relay``), its host name, or host:port (the lab's).
_NAMESPACE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9-]+)*(:\d{1,5})?$")
# Hybrid connection names: letters, digits, '.', '-', '_' (and '/' for nested paths).
_HC_PATH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,259}$")
RELAY_SUFFIX = "servicebus.windows.net"
Transport = Literal["direct", "relay"]



class Reached(Section):
    """A peer on the premises, reached directly or through the relay (``<PEER>_TRANSPORT``);
    ``relay`` is the link to use, or None for the direct path."""

    transport: Transport = Field(
        "direct", description="direct (routed network, VNet integration) or relay (Azure Relay)"
    )
    _relay: RelayLink | None = PrivateAttr(None)
    _relay_path: ClassVar[str]

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        if self.transport == "relay":
            self._relay = _relay_link(values, self._relay_path, self._endpoints())

    def _endpoints(self) -> int:
        return 1

    @property
    def relay(self) -> RelayLink | None:
        """How the peer is reached when its transport is ``relay``."""
        return self._relay


class AdSettings(Reached):
    """Active Directory, read and written over LDAPS as a least-privileged service account."""

    model_config = SettingsConfigDict(env_prefix="AD_")

    url: str = Field(description="ldaps://dc1:636 (comma-separated for several DCs)")
    base_dn: str
    user: str = Field(description="service account: DOMAIN\\name, UPN or DN")
    password: SecretStr
    starttls: bool = False
    timeout_seconds: float = Field(10.0, gt=0)
    page_size: int = Field(1000, ge=1, le=5000)
    range_step: int = Field(1500, ge=10, le=5000)
    _relay_path: ClassVar[str] = "ad_path"

    def _endpoints(self) -> int:
        return len(self.urls)  # one hybrid connection per DC

    @field_validator("url")
    @classmethod
    def _urls(cls, value: str) -> str:
        for url in csv_values(value):
            if not re.match(r"^ldaps?://[^/\s]+$", url):
                raise ValueError(f"'{url}' is not an ldap:// or ldaps:// URL")
        return value

    @model_validator(mode="after")
    def _encrypted(self) -> AdSettings:
        if any(u.startswith("ldap://") for u in self.urls) and not self.starttls:
            raise ValueError(
                "AD_URL: ldap:// sends the password in clear; use ldaps:// or AD_STARTTLS=true"
            )
        return self

    @property
    def urls(self) -> tuple[str, ...]:
        return csv_values(self.url)


class ExchangeSettings(Reached):
    """On-premises Exchange PowerShell (WinRM over HTTPS, through the hybrid connection)."""

    model_config = SettingsConfigDict(env_prefix="EXCHANGE_")

    url: str = Field(description="https://exchange.contoso.com/PowerShell (IIS, port 443)")
    user: str
    password: SecretStr
    # Basic over HTTPS: the /PowerShell virtual directory's Windows authentication needs
    # Kerberos, which a Linux app through the relay cannot get (docs/premises.md).
    auth: Literal["negotiate", "ntlm", "kerberos", "basic"] = "basic"
    configuration_name: str = "Microsoft.Exchange"
    timeout_seconds: float = Field(60.0, gt=0)
    sessions: int = Field(
        4, ge=1, le=18,
        description="concurrent PowerShell sessions per worker; Exchange's default throttling "
        "policy allows 18 per user",
    )
    sessions_app_max: int = Field(
        16, ge=1, le=18,
        description="most sessions of the whole app: the deployment caps the instances at "
        "this divided by EXCHANGE_SESSIONS (docs/configuration.md)",
    )
    _relay_path: ClassVar[str] = "exchange_path"

    @model_validator(mode="after")
    def _within_app_bound(self) -> ExchangeSettings:
        if self.sessions > self.sessions_app_max:
            raise ValueError(
                f"EXCHANGE_SESSIONS: {self.sessions} sessions per instance exceed "
                f"EXCHANGE_SESSIONS_APP_MAX ({self.sessions_app_max}), the bound of the whole "
                "app; lower EXCHANGE_SESSIONS (azd env set EXCHANGE_SESSIONS <n>)")
        return self

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not re.match(r"^https://[^/\s]+(/\S*)?$", value):
            raise ValueError(f"'{value}' is not an https:// URL (WinRM must use TLS)")
        return value


class ConnectSettings(Reached):
    """The Entra Connect server's PowerShell endpoint, asked for a delta sync when
    ``SYNC_TRIGGER=connect``: a constrained endpoint (JEA) that exposes ``Start-ADSyncSyncCycle``
    alone (docs/permissions.md), reached directly or through the relay like Exchange."""

    model_config = SettingsConfigDict(env_prefix="CONNECT_")

    url: str | None = Field(None, description="https://aadconnect.contoso.com:5986/wsman")
    user: str | None = None
    password: SecretStr | None = None
    auth: Literal["negotiate", "ntlm", "kerberos", "basic"] = "negotiate"
    configuration_name: str = Field(
        "ADSyncTrigger",
        description="the constrained endpoint's name (Register-PSSessionConfiguration)",
    )
    timeout_seconds: float = Field(60.0, gt=0)
    _relay_path: ClassVar[str] = "connect_path"

    @field_validator("url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https://[^/\s]+(/\S*)?$", value):
            raise ValueError(f"'{value}' is not an https:// URL (WinRM must use TLS)")
        return value or None

    def as_psrp(self) -> ExchangeSettings:
        """These settings in the shape the PSRP client takes (``shared.exchange.client``)."""
        assert self.url and self.user and self.password is not None  # checked at load
        psrp = ExchangeSettings.model_construct(
            url=self.url, user=self.user, password=self.password, auth=self.auth,
            configuration_name=self.configuration_name, timeout_seconds=self.timeout_seconds,
            sessions=1, transport=self.transport)
        psrp._relay = self.relay
        return psrp


class RelaySettings(Section):
    """Azure Relay hybrid connections, the path to the premises when a peer's transport is
    ``relay``: the app is the sender, a bridge on the premises the listener (docs/relay-bridge.md).
    """

    model_config = SettingsConfigDict(env_prefix="RELAY_")

    namespace: str | None = Field(
        None, description="the namespace: its name (contoso-relay), or its full host name"
    )
    exchange_path: str | None = Field(None, description="hybrid connection to Exchange")
    connect_path: str | None = Field(
        None, description="hybrid connection to the Entra Connect server (SYNC_TRIGGER=connect)"
    )
    ad_path: str | None = Field(
        None, description="hybrid connections to the DCs, comma-separated, in AD_URL's order"
    )
    auth: Literal["entra", "sas"] = Field(
        "entra", description="entra: the app's identity; sas: a key, when local auth is on"
    )
    sas_key_name: str | None = None
    sas_key: SecretStr | None = None
    timeout_seconds: float = Field(30.0, gt=0, description="opening one stream, token included")
    idle_seconds: float = Field(240.0, gt=0, description="a stream idle this long is closed")

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            value = value.strip().removeprefix("sb://").removeprefix("https://").rstrip("/")
            if not _NAMESPACE.match(value):
                raise ValueError(f"'{value}' is not a relay namespace name or host name")
            return value
        return None

    @field_validator("exchange_path", "ad_path", "connect_path")
    @classmethod
    def _paths(cls, value: str | None) -> str | None:
        for path in csv_values(value):
            if not _HC_PATH.match(path):
                raise ValueError(f"'{path}' is not a hybrid connection name")
        return value

    @model_validator(mode="after")
    def _sas_complete(self) -> RelaySettings:
        if self.auth == "sas" and not (self.sas_key_name and self.sas_key):
            raise ValueError(
                "RELAY_AUTH: 'sas' needs RELAY_SAS_KEY_NAME and RELAY_SAS_KEY (a Key Vault "
                "reference); the default 'entra' uses the app's identity instead"
            )
        return self

    @property
    def host(self) -> str:
        """The namespace's host name (``contoso-relay.servicebus.windows.net``), with a port
        when one was given."""
        assert self.namespace is not None
        name = self.namespace
        return name if "." in name.split(":")[0] else f"{name}.{RELAY_SUFFIX}"


@dataclass(frozen=True)
class RelayLink:
    """How one peer is reached through Azure Relay: the relay settings, one hybrid connection
    per endpoint of the peer (in the order of its URLs), and the identity that sends.

    AD and Exchange settings carry their link themselves (``AdSettings.relay``), read from the
    same place as they are, so a client given its section alone can open its streams."""

    relay: RelaySettings
    paths: tuple[str, ...]
    identity: IdentitySettings
    key_vault: KeyVaultSettings
    ca_bundle: Path | None  # whom the relay's TLS is trusted by: public CAs plus CA_BUNDLE


def _relay_link(values: dict[str, Any], field: str, endpoints: int) -> RelayLink:
    """The relay link of a section whose transport is ``relay``, read from the same source
    (``_env_file``) as the section; ConfigError naming the setting when it is incomplete."""
    source = {"_env_file": values["_env_file"]} if "_env_file" in values else {}
    sections: list[Any] = []
    for section in (RelaySettings, IdentitySettings, KeyVaultSettings, ServiceSettings):
        try:
            sections.append(section(**source))
        except ValidationError as exc:
            raise ConfigError(*setting_name(section, exc.errors()[0])) from None
    relay, identity, key_vault, service = sections
    peer = field.removesuffix("_path").upper()
    transport = f"{peer}_TRANSPORT"
    setting = f"RELAY_{field.upper()}"
    if relay.namespace is None:
        raise ConfigError("RELAY_NAMESPACE", f"is needed when {transport}=relay")
    paths = csv_values(getattr(relay, field))
    if not paths:
        raise ConfigError(setting, f"is needed when {transport}=relay: the hybrid connection "
                          "name" + (", one per DC in AD_URL's order" if endpoints > 1 else ""))
    if len(paths) != endpoints and field == "ad_path":
        raise ConfigError(setting, f"names {len(paths)} hybrid connection(s) but AD_URL names "
                          f"{endpoints} domain controller(s); give one per DC, in the same order")
    if len(paths) != endpoints:
        raise ConfigError(setting, "names more than one hybrid connection; one is needed")
    return RelayLink(relay, paths, identity, key_vault, service.ca_bundle)


