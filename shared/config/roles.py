"""The admin-role sync's settings and their checks (allow-list, opt-in, break-glass, limits)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)
from pydantic_settings import SettingsConfigDict

from shared.dn import dn_parts

from .base import Section, csv_values

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

_OBJECT_ID = re.compile(r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")
_UPN = re.compile(r"^[^@\s]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


class RolesSettings(Section):
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
        for entry in csv_values(value):
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
        return frozenset(csv_values(self.allow_list))

    @property
    def opted_in_roles(self) -> frozenset[str]:
        return frozenset(csv_values(self.privileged_opt_in))

    @property
    def break_glass_object_ids(self) -> frozenset[str]:
        return frozenset(e.lower() for e in csv_values(self.break_glass_ids) if _OBJECT_ID.match(e))

    @property
    def break_glass_upns(self) -> frozenset[str]:
        return frozenset(e.casefold() for e in csv_values(self.break_glass_ids) if "@" in e)


