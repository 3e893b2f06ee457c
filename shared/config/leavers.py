"""The leavers' settings (issue 27): the group, the graces, the daily limit and its guards,
what a converted mailbox gets, and the licence prices for the digest."""

from __future__ import annotations

import datetime as dt

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from .base import Section
from .prices import Prices, parse_prices


class LeaversSettings(Section):
    """Who is a leaver, when, how many a day, and what happens to the mailbox and licence."""

    model_config = SettingsConfigDict(env_prefix="")

    leavers_group: str = Field("O365_Leavers", min_length=1,
                               description="the group whose members are leavers")
    leaver_grace_days: float = Field(0.0, ge=0, description="days in the group before it starts")
    leavers_disabled_accounts: bool = Field(
        False, description="also a provisioned user whose AD account is disabled")
    leaver_disabled_grace_days: float = Field(30.0, ge=0,
                                              description="days disabled before it starts")
    leavers_max_per_day: int = Field(10, ge=0, description="leavers started in a rolling 24 h "
                                     "before the lot is held for approval")
    leaver_hide_from_gal: bool = Field(False, description="hide the shared mailbox from the GAL")
    leaver_manager_access: bool = Field(False, description="full access for the manager "
                                        "(not supported yet: must stay false)")
    leavers_any_licence: bool = Field(False, description="also remove licences this service "
                                      "did not assign")
    license_prices: str = Field("", description="SKU=price per unit a month, for the digest")

    @field_validator("leaver_manager_access")
    @classmethod
    def _manager(cls, value: bool) -> bool:
        if value:
            raise ValueError("is not supported yet; set it to false and give the manager Full "
                             "Access by hand (Add-MailboxPermission -AccessRights FullAccess)")
        return value

    @field_validator("license_prices")
    @classmethod
    def _prices(cls, value: str) -> str:
        parse_prices(value, prefix=False)  # refused as the app starts, with the setting's name
        return value

    @property
    def prices(self) -> Prices:
        """``LICENSE_PRICES`` parsed (``shared.config.prices``); empty when not set."""
        return parse_prices(self.license_prices, prefix=False)

    @property
    def group_grace(self) -> dt.timedelta:
        return dt.timedelta(days=self.leaver_grace_days)

    @property
    def disabled_grace(self) -> dt.timedelta:
        return dt.timedelta(days=self.leaver_disabled_grace_days)
