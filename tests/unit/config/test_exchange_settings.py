"""Exchange's settings (``shared/config/premises.py``) as docs/configuration.md and
docs/premises.md document them: the /PowerShell virtual directory, Basic over HTTPS by default,
and the app-wide session bound (issue 29)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from shared.config import ExchangeSettings


def exchange(**values: Any) -> ExchangeSettings:
    base: dict[str, Any] = {"url": "https://ex01.contoso.com/PowerShell", "user": "svc",
                            "password": SecretStr("not-a-real-password")}
    return ExchangeSettings(_env_file=None, **{**base, **values})  # type: ignore[call-arg]


def test_basic_is_the_default_authentication_and_four_of_sixteen_sessions() -> None:
    """Basic over HTTPS (no KDC through the relay), 4 sessions per instance, 16 for the app."""
    s = exchange()
    assert ("basic", 4, 16) == (s.auth, s.sessions, s.sessions_app_max)


def test_sessions_per_instance_may_not_exceed_the_app_bound() -> None:
    """EXCHANGE_SESSIONS above EXCHANGE_SESSIONS_APP_MAX stops at start, naming the setting
    and the azd command that lowers it."""
    with pytest.raises(ValidationError) as caught:
        exchange(sessions=8, sessions_app_max=6)
    assert "EXCHANGE_SESSIONS: 8 sessions per instance exceed EXCHANGE_SESSIONS_APP_MAX (6)" in (
        str(caught.value))
    assert 6 == exchange(sessions=6, sessions_app_max=6).sessions


def test_the_app_bound_stays_under_exchanges_eighteen() -> None:
    """Exchange's PowerShellMaxConcurrency is 18 per account: no bound above it is accepted."""
    with pytest.raises(ValidationError):
        exchange(sessions_app_max=19)
