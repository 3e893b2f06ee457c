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
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from .dn import dn_parts, dn_within, is_dn
from .errors import ConfigError

DEFAULT_LICENSE_MAP = {"E3": "ENTERPRISEPACK", "Exchange 2": "EXCHANGEENTERPRISE"}

# Roles the sync may change. Those the tenant marks privileged (Helpdesk Administrator, User
# Administrator, Global Reader among these) also need ROLES_PRIVILEGED_OPT_IN.
DEFAULT_ROLE_ALLOW_LIST = (
    "Exchange Administrator",
    "Helpdesk Administrator",
    "User Administrator",
    "License Administrator",
    "Groups Administrator",
    "SharePoint Administrator",
    "Teams Administrator",
    "Service Support Administrator",
    "Global Reader",
    "Reports Reader",
    "Message Center Reader",
)

_NCRONTAB = re.compile(r"^\S+( \S+){5}$")
_OBJECT_ID = re.compile(r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")
_UPN = re.compile(r"^[^@\s]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
# A relay namespace: its name (``contoso-relay``), its host name, or host:port (the lab's).
_NAMESPACE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9-]+)*(:\d{1,5})?$")
# Hybrid connection names: letters, digits, '.', '-', '_' (and '/' for nested paths).
_HC_PATH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,259}$")
RELAY_SUFFIX = "servicebus.windows.net"
Transport = Literal["direct", "relay"]


class _Section(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)


def _csv(value: Any) -> tuple[str, ...]:
    """Accept a JSON list or a comma-separated string; return stripped, non-empty items."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else text.split(",")
    return tuple(str(item).strip() for item in value if str(item).strip())



class StorageSettings(_Section):
    """Azure Storage for queues and tables: a connection string (lab) or identity-based URIs."""

    connection: SecretStr | None = Field(None, validation_alias="AzureWebJobsStorage")
    queue_service_uri: str | None = Field(
        None, validation_alias="AzureWebJobsStorage__queueServiceUri"
    )
    table_service_uri: str | None = Field(
        None, validation_alias="AzureWebJobsStorage__tableServiceUri"
    )
    client_id: str | None = Field(None, validation_alias="AzureWebJobsStorage__clientId")

    @model_validator(mode="after")
    def _one_way_in(self) -> StorageSettings:
        has_uris = bool(self.queue_service_uri and self.table_service_uri)
        if self.connection is None and not has_uris:
            raise ValueError(
                "AzureWebJobsStorage: is not set; give a connection string, or both "
                "AzureWebJobsStorage__queueServiceUri and AzureWebJobsStorage__tableServiceUri"
            )
        return self


class AdSettings(_Section):
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
    transport: Transport = Field(
        "direct", description="direct (routed network, VNet integration) or relay (Azure Relay)"
    )
    _relay: RelayLink | None = PrivateAttr(None)

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        if self.transport == "relay":
            self._relay = _relay_link(values, "ad_path", len(self.urls))

    @property
    def relay(self) -> RelayLink | None:
        """How the DCs are reached when AD_TRANSPORT=relay: one hybrid connection per DC."""
        return self._relay

    @field_validator("url")
    @classmethod
    def _urls(cls, value: str) -> str:
        for url in _csv(value):
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
        return _csv(self.url)


class ProvisioningSettings(_Section):
    """What the existing scripts hard-coded: groups, attributes, licence names."""

    provision_group: str = Field("O365_Provision", description="a name or a DN")
    license_group: str = Field("O365_License", description="a name or a DN")
    groups_ou: str = Field("", description="where group names are looked up; AD_BASE_DN if unset")
    license_attribute: str = "extensionAttribute1"
    country_attribute: str = "c"
    license_map: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_LICENSE_MAP))
    routing_domain: str = Field(description="<tenant>.mail.onmicrosoft.com")
    sync_deadline_hours: float = Field(24.0, gt=0)
    sync_retry_min_seconds: float = Field(60.0, gt=0)
    sync_retry_max_seconds: float = Field(3600.0, gt=0)

    @field_validator("license_map")
    @classmethod
    def _non_empty_map(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("the licence map is empty; give at least one name → SKU part number")
        return value

    @field_validator("provision_group", "license_group", "groups_ou")
    @classmethod
    def _dn_if_dn(cls, value: str, info: ValidationInfo) -> str:
        if is_dn(value) or (info.field_name == "groups_ou" and value.strip()):
            dn_parts(value)
        return value.strip()

    @field_validator("routing_domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$", value):
            raise ValueError(f"'{value}' is not a domain name")
        return value.lower()


class ExchangeSettings(_Section):
    """On-premises Exchange PowerShell (WinRM over HTTPS, through the hybrid connection)."""

    model_config = SettingsConfigDict(env_prefix="EXCHANGE_")

    url: str = Field(description="https://exchange.contoso.com/PowerShell")
    user: str
    password: SecretStr
    auth: Literal["negotiate", "ntlm", "kerberos", "basic"] = "negotiate"
    configuration_name: str = "Microsoft.Exchange"
    timeout_seconds: float = Field(60.0, gt=0)
    sessions: int = Field(
        4, ge=1, le=18,
        description="concurrent PowerShell sessions per worker; Exchange's default throttling "
        "policy allows 18 per user",
    )
    transport: Transport = Field(
        "direct", description="direct (routed network, VNet integration) or relay (Azure Relay)"
    )
    _relay: RelayLink | None = PrivateAttr(None)

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        if self.transport == "relay":
            self._relay = _relay_link(values, "exchange_path", 1)

    @property
    def relay(self) -> RelayLink | None:
        """How Exchange is reached when EXCHANGE_TRANSPORT=relay."""
        return self._relay

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not re.match(r"^https://[^/\s]+(/\S*)?$", value):
            raise ValueError(f"'{value}' is not an https:// URL (WinRM must use TLS)")
        return value


class IdentitySettings(_Section):
    """How the app authenticates to Graph and Key Vault (azure-identity)."""

    model_config = SettingsConfigDict(env_prefix="AZURE_")

    credential: Literal["managed-identity", "certificate", "static"] = "managed-identity"
    client_id: str | None = None
    tenant_id: str | None = None
    client_certificate_path: Path | None = None
    static_token: SecretStr | None = Field(None, description="lab only: a fixed bearer token")

    @model_validator(mode="after")
    def _complete(self) -> IdentitySettings:
        if self.credential == "certificate" and not (
            self.client_id and self.tenant_id and self.client_certificate_path
        ):
            raise ValueError(
                "AZURE_CREDENTIAL: 'certificate' needs AZURE_CLIENT_ID, AZURE_TENANT_ID "
                "and AZURE_CLIENT_CERTIFICATE_PATH"
            )
        if self.credential == "static" and self.static_token is None:
            raise ValueError("AZURE_STATIC_TOKEN: is needed when AZURE_CREDENTIAL=static")
        return self


class RelaySettings(_Section):
    """Azure Relay hybrid connections, the path to the premises when a peer's transport is
    ``relay``: the app is the sender, a bridge on the premises the listener (docs/relay-bridge.md).
    """

    model_config = SettingsConfigDict(env_prefix="RELAY_")

    namespace: str | None = Field(
        None, description="the namespace: its name (contoso-relay), or its full host name"
    )
    exchange_path: str | None = Field(None, description="hybrid connection to Exchange")
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

    @field_validator("exchange_path", "ad_path")
    @classmethod
    def _paths(cls, value: str | None) -> str | None:
        for path in _csv(value):
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
            raise ConfigError(*_setting_name(section, exc.errors()[0])) from None
    relay, identity, key_vault, service = sections
    transport = "AD_TRANSPORT" if field == "ad_path" else "EXCHANGE_TRANSPORT"
    setting = f"RELAY_{field.upper()}"
    if relay.namespace is None:
        raise ConfigError("RELAY_NAMESPACE", f"is needed when {transport}=relay")
    paths = _csv(getattr(relay, field))
    if not paths:
        raise ConfigError(setting, f"is needed when {transport}=relay: the hybrid connection "
                          "name" + (", one per DC in AD_URL's order" if endpoints > 1 else ""))
    if len(paths) != endpoints and field == "ad_path":
        raise ConfigError(setting, f"names {len(paths)} hybrid connection(s) but AD_URL names "
                          f"{endpoints} domain controller(s); give one per DC, in the same order")
    if len(paths) != endpoints:
        raise ConfigError(setting, "names more than one hybrid connection; Exchange needs one")
    return RelayLink(relay, paths, identity, key_vault, service.ca_bundle)


class GraphSettings(_Section):
    """Microsoft Graph, and the client-side pacing that keeps us under its write budget."""

    model_config = SettingsConfigDict(env_prefix="GRAPH_")

    url: str = "https://graph.microsoft.com/v1.0"
    timeout_seconds: float = Field(30.0, gt=0)
    writes_per_window: int = Field(3000, ge=1)
    write_window_seconds: float = Field(150.0, gt=0)
    concurrency: int = Field(8, ge=1, le=64)


class KeyVaultSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="KEY_VAULT_")

    url: str | None = None
    cache_seconds: float = Field(300.0, ge=0)


class MailSettings(_Section):
    """Where reports and alerts go."""

    model_config = SettingsConfigDict(env_prefix="MAIL_")

    transport: Literal["graph", "smtp", "none"] = "graph"
    sender: str = Field("", description="From address (a mailbox when MAIL_TRANSPORT=graph)")
    to: str = Field("", description="comma-separated recipients")

    @model_validator(mode="after")
    def _addresses(self) -> MailSettings:
        if self.transport != "none" and not (self.sender and self.recipients):
            raise ValueError(
                "MAIL_TO: MAIL_SENDER and MAIL_TO are needed unless MAIL_TRANSPORT=none"
            )
        return self

    @property
    def recipients(self) -> tuple[str, ...]:
        return _csv(self.to)


class SmtpSettings(_Section):
    model_config = SettingsConfigDict(env_prefix="SMTP_")

    host: str = ""
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = True
    user: str = ""
    password: SecretStr | None = None
    timeout_seconds: float = Field(30.0, gt=0)


class RolesSettings(_Section):
    """Admin-role sync from AD groups in one OU, with its guards."""

    model_config = SettingsConfigDict(env_prefix="ROLES_")

    enabled: bool = False
    ou: str = ""
    nested: bool = Field(False, description="expand nested groups, only those under ROLES_OU")
    group_map: dict[str, str] = Field(default_factory=dict, description="group → role template id")
    allow_list: str = ",".join(DEFAULT_ROLE_ALLOW_LIST)
    privileged_opt_in: str = Field("", description="privileged roles explicitly allowed")
    break_glass_ids: str = Field("", description="object ids and UPNs never touched")
    max_grants: int = Field(10, ge=0)
    max_revocations: int = Field(5, ge=0)
    revocation_window_hours: float = Field(24.0, gt=0)
    max_revocation_share: float = Field(0.25, ge=0, le=1)
    share_min_revocations: int = Field(2, ge=1)
    approval_hours: float = Field(24.0, gt=0)
    mode: Literal["active", "eligible"] = "active"
    pim_justification: str = "Granted from AD group by the O365 provisioning service"
    pim_duration_days: int | None = Field(None, ge=1)

    @field_validator("ou")
    @classmethod
    def _ou_is_dn(cls, value: str) -> str:
        if value.strip():
            dn_parts(value)
        return value.strip()

    @field_validator("break_glass_ids")
    @classmethod
    def _ids_or_upns(cls, value: str) -> str:
        for entry in _csv(value):
            if not (_OBJECT_ID.match(entry) or _UPN.match(entry)):
                raise ValueError(
                    f"'{entry}' is neither an object id (8-4-4-4-12 hex digits, no braces) "
                    "nor a UPN (name@domain)")
        return value

    @model_validator(mode="after")
    def _ou_when_enabled(self) -> RolesSettings:
        if self.enabled and not self.ou:
            raise ValueError("ROLES_OU: is needed when ROLES_ENABLED=true")
        return self

    @property
    def allowed_roles(self) -> frozenset[str]:
        return frozenset(_csv(self.allow_list))

    @property
    def opted_in_roles(self) -> frozenset[str]:
        return frozenset(_csv(self.privileged_opt_in))

    @property
    def break_glass_object_ids(self) -> frozenset[str]:
        return frozenset(e.lower() for e in _csv(self.break_glass_ids) if _OBJECT_ID.match(e))

    @property
    def break_glass_upns(self) -> frozenset[str]:
        return frozenset(e.casefold() for e in _csv(self.break_glass_ids) if "@" in e)


class ScheduleSettings(_Section):
    """NCRONTAB schedules (six fields, seconds first); function_app.py names them as %SETTING%."""

    poll_schedule: str = "0 */5 * * * *"
    reconcile_schedule: str = "0 30 * * * *"
    report_schedule: str = "0 0 7 * * *"
    roles_schedule: str = "0 */15 * * * *"

    @field_validator("*")
    @classmethod
    def _ncrontab(cls, value: str) -> str:
        if not _NCRONTAB.match(value.strip()):
            raise ValueError(f"'{value}' is not a six-field NCRONTAB expression")
        return value.strip()


class ServiceSettings(_Section):
    ca_bundle: Path | None = Field(None, description="PEM of extra CAs (internal CA, lab CA)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    lease_seconds: float = Field(
        300.0, ge=5, description="how long a worker holds a user; longer than any one step"
    )
    stuck_after: int = Field(
        6, ge=2, description="attempts after which a waiting user is reported stuck (one alert)"
    )

    @field_validator("ca_bundle")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no file at {value}")
        return value


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


_SECTIONS: dict[str, type[_Section]] = {
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


def _setting_name(section: type[_Section], error: Any) -> tuple[str, str]:
    """The app setting an error is about, and the problem. Model-level checks say
    ``"SETTING: problem"``; field-level errors carry the field in ``loc``."""
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if error.get("type") == "missing":
        message = "is required but not set"
    loc = error.get("loc") or ()
    if not loc:
        name, _, problem = message.partition(": ")
        return name, problem
    return _field_setting(section, str(loc[0])), message


def _field_setting(section: type[_Section], field: str) -> str:
    if field in section.model_fields:
        alias = section.model_fields[field].validation_alias
        if isinstance(alias, str):
            return alias
        return f"{section.model_config.get('env_prefix', '')}{field}".upper()
    return field


def load_settings(env_file: str | Path | None = None) -> Settings:
    """Read and validate every setting; raise ``ConfigError`` naming the first bad one.

    Values come from the environment, then from ``env_file`` (KEY=VALUE lines) where given.
    """
    sections: dict[str, Any] = {}
    for key, section in _SECTIONS.items():
        try:
            sections[key] = section(_env_file=env_file)
        except ValidationError as exc:
            raise ConfigError(*_setting_name(section, exc.errors()[0])) from None
        except SettingsError as exc:  # a JSON-valued setting that is not JSON
            match = re.search(r'field "(\w+)"', str(exc))
            field = match.group(1) if match else "?"
            raise ConfigError(_field_setting(section, field), "is not valid JSON") from None
    _check_within_base(sections["ad"], sections["provisioning"], sections["roles"])
    return Settings(**sections)


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
