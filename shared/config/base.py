"""What every settings section shares: frozen, case-insensitive, unknown keys ignored."""

from __future__ import annotations

import json
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict


class Section(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)


def csv_values(value: Any) -> tuple[str, ...]:
    """Accept a JSON list or a comma-separated string; return stripped, non-empty items."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else text.split(",")
    return tuple(str(item).strip() for item in value if str(item).strip())


def setting_name(section: type[Section], error: Any) -> tuple[str, str]:
    """The app setting an error is about, and the problem. Model-level checks say
    ``"SETTING: problem"``; field-level errors carry the field in ``loc``."""
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if error.get("type") == "missing":
        message = "is required but not set"
    loc = error.get("loc") or ()
    if not loc:
        name, _, problem = message.partition(": ")
        return name, problem
    return field_setting(section, str(loc[0])), message


def field_setting(section: type[Section], field: str) -> str:
    if field in section.model_fields:
        alias = section.model_fields[field].validation_alias
        if isinstance(alias, str):
            return alias
        return f"{section.model_config.get('env_prefix', '')}{field}".upper()
    return field
