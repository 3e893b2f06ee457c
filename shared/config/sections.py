"""The service's own settings sections: storage, provisioning, identity, Graph, Key Vault,
mail, schedules and the service itself."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import SettingsConfigDict

from shared.dn import dn_parts, is_dn

from .base import Section, csv_values

DEFAULT_LICENSE_MAP = {"E3": "ENTERPRISEPACK", "Exchange 2": "EXCHANGEENTERPRISE"}
_NCRONTAB = re.compile(r"^\S+( \S+){5}$")


class StorageSettings(Section):
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


class ProvisioningSettings(Section):
    """What the existing scripts hard-coded: groups, attributes, licence names."""

    provision_group: str = Field("O365_Provision", description="a name or a DN")
    license_group: str = Field("O365_License", description="a name or a DN")
    groups_ou: str = Field("", description="where group names are looked up; AD_BASE_DN if unset")
    license_attribute: str = "extensionAttribute1"
    country_attribute: str = "c"
    license_map: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_LICENSE_MAP))
    # managed: the licence step replaces only the SKUs of LICENSE_MAP and keeps add-ons; all:
    # the seed script's -RemoveLicenses of every other SKU
    license_replace: Literal["managed", "all"] = "managed"
    routing_domain: str = Field(description="<tenant>.mail.onmicrosoft.com")
    sync_deadline_hours: float = Field(24.0, gt=0)
    sync_retry_min_seconds: float = Field(60.0, gt=0)
    sync_retry_max_seconds: float = Field(3600.0, gt=0)
    # how often a user waiting for a licence unit is looked at again (shared.flow.transitions)
    shortage_recheck_seconds: float = Field(120.0, gt=0, le=3600)

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


class IdentitySettings(Section):
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


class GraphSettings(Section):
    """Microsoft Graph, and the client-side pacing that keeps us under its write budget."""

    model_config = SettingsConfigDict(env_prefix="GRAPH_")

    url: str = "https://graph.microsoft.com/v1.0"
    timeout_seconds: float = Field(30.0, gt=0)
    writes_per_window: int = Field(3000, ge=1)
    write_window_seconds: float = Field(150.0, gt=0)
    concurrency: int = Field(8, ge=1, le=64)


class KeyVaultSettings(Section):
    model_config = SettingsConfigDict(env_prefix="KEY_VAULT_")

    url: str | None = None
    cache_seconds: float = Field(300.0, ge=0)


class MailSettings(Section):
    """Where reports and alerts go."""

    model_config = SettingsConfigDict(env_prefix="MAIL_")

    transport: Literal["graph", "smtp", "none"] = "graph"
    sender: str = Field("", description="From address (a mailbox when MAIL_TRANSPORT=graph)")
    to: str = Field("", description="comma-separated recipients")
    # A queue writer can repeat a member's invalid data at will; each failure is still recorded
    # and in the digest, but only this many error mails a day name one user.
    errors_per_user_per_day: int = Field(3, ge=1, description="error mails per user and day")

    @model_validator(mode="after")
    def _addresses(self) -> MailSettings:
        if self.transport != "none" and not (self.sender and self.recipients):
            raise ValueError(
                "MAIL_TO: MAIL_SENDER and MAIL_TO are needed unless MAIL_TRANSPORT=none"
            )
        return self

    @property
    def recipients(self) -> tuple[str, ...]:
        return csv_values(self.to)


class SmtpSettings(Section):
    model_config = SettingsConfigDict(env_prefix="SMTP_")

    host: str = ""
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = True
    user: str = ""
    password: SecretStr | None = None
    timeout_seconds: float = Field(30.0, gt=0)


_GUID = re.compile(r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")


class SyncSettings(Section):
    """Asking for the sync instead of waiting for it (``SYNC_TRIGGER``): after a remote mailbox
    is enabled, Entra Connect is asked for a delta cycle (``connect``, coalesced) or Entra Cloud
    Sync provisions the user on demand (``cloud-sync``); ``none`` waits for the schedule."""

    model_config = SettingsConfigDict(env_prefix="SYNC_")

    trigger: Literal["none", "connect", "cloud-sync"] = "none"
    wait_seconds: float = Field(
        60.0, ge=0, description="how long after the mailbox step the licence step first looks: "
        "about one delta cycle with a trigger")
    busy_retry_seconds: float = Field(
        20.0, gt=0, description="Connect answered busy (a cycle runs): ask again after this")
    settle_seconds: float = Field(
        2.0, ge=0, description="how long a trigger waits for more users before it is sent")
    cloud_sync_service_principal_id: str | None = Field(
        None, validation_alias="CLOUD_SYNC_SERVICE_PRINCIPAL_ID",
        description="object id of the Cloud Sync agent's service principal")
    cloud_sync_job_id: str | None = Field(None, validation_alias="CLOUD_SYNC_JOB_ID")
    cloud_sync_rule_id: str | None = Field(None, validation_alias="CLOUD_SYNC_RULE_ID")

    @field_validator("cloud_sync_service_principal_id", "cloud_sync_rule_id")
    @classmethod
    def _guid(cls, value: str | None) -> str | None:
        if value and not _GUID.match(value.strip()):
            raise ValueError(f"'{value}' is not a GUID")
        return value.strip() if value else None

    @model_validator(mode="after")
    def _cloud_sync_complete(self) -> SyncSettings:
        if self.trigger == "cloud-sync" and not (self.cloud_sync_service_principal_id and
                                                 self.cloud_sync_job_id and
                                                 self.cloud_sync_rule_id):
            raise ValueError(
                "SYNC_TRIGGER: 'cloud-sync' needs CLOUD_SYNC_SERVICE_PRINCIPAL_ID, "
                "CLOUD_SYNC_JOB_ID and CLOUD_SYNC_RULE_ID (docs/configuration.md says where to "
                "find them)")
        return self


class ScheduleSettings(Section):
    """NCRONTAB schedules (six fields, seconds first); function_app.py names them as %SETTING%."""

    poll_schedule: str = "*/15 * * * * *"  # every 15 s: a quiet DirSync poll costs ~3 ms
    reconcile_schedule: str = "0 30 * * * *"
    report_schedule: str = "0 0 7 * * *"
    roles_schedule: str = "0 */15 * * * *"
    leavers_schedule: str = "0 */15 * * * *"  # the leavers cycle (issue 27)

    @field_validator("*")
    @classmethod
    def _ncrontab(cls, value: str) -> str:
        if not _NCRONTAB.match(value.strip()):
            raise ValueError(f"'{value}' is not a six-field NCRONTAB expression")
        return value.strip()


class ServiceSettings(Section):
    ca_bundle: Path | None = Field(None, description="PEM of extra CAs (internal CA, lab CA)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    lease_seconds: float = Field(
        300.0, ge=5, description="how long a worker holds a user; longer than any one step"
    )
    reconcile_grace_seconds: float = Field(
        900.0, ge=10, description="how overdue a user's live work may be before reconcile sends "
        "it again (a message or worker lost)",
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


