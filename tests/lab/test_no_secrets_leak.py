"""No secret in any log, exception text, rendered mail or delivered message.

``assert_no_secrets`` and ``secret_variants`` are for reuse (``from tests.lab.test_no_secrets_leak
import assert_no_secrets``): pass every text a run produced and every secret the lab holds.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import uuid
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

import pytest
import structlog
from pydantic import SecretStr

from lab.core import Lab
from lab.vault import SECRET_SETTINGS
from shared.config import (
    GraphSettings,
    IdentitySettings,
    KeyVaultSettings,
    MailSettings,
    ServiceSettings,
    SmtpSettings,
)
from shared.errors import PermanentError
from shared.mail.reports import (
    FailureReport,
    ProvisionedRow,
    SkuSummary,
    render_digest,
    render_error,
)
from shared.mail.sender import Mail, Mailer, MailerSettings
from shared.secrets import SecretProvider


def secret_variants(secret: str) -> set[str]:
    """The forms a secret takes when it leaks: as is, URL-quoted, JSON-escaped, base64."""
    raw = secret.encode()
    return {
        secret,
        quote(secret, safe=""),
        json.dumps(secret)[1:-1],
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }


def assert_no_secrets(texts: Iterable[str], secrets: Iterable[str]) -> None:
    """Fail if any text holds any secret in any of its ``secret_variants``.

    The failure names the text's index and the secret's length, never the secret.
    """
    wanted = [s for s in secrets if s and len(s) >= 4]
    assert wanted, "no secrets to look for: the check would prove nothing"
    texts = list(texts)
    for index, text in enumerate(texts):
        for number, secret in enumerate(wanted):
            for variant in secret_variants(secret):
                if variant in text:
                    raise AssertionError(
                        f"text #{index} (of {len(texts)}) holds secret #{number} "
                        f"({len(secret)} characters) or an encoding of it"
                    )


def test_helper_finds_raw_and_encoded_secrets_without_printing_them() -> None:
    """The helper catches a secret as is and base64-encoded, and does not repeat it."""
    secret = "s3cr3t-" + uuid.uuid4().hex
    encoded = base64.b64encode(secret.encode()).decode()
    for leaky in (f"password={secret}", f"Authorization: Basic {encoded}"):
        with pytest.raises(AssertionError) as caught:
            assert_no_secrets(["clean", leaky], [secret])
        assert secret not in str(caught.value)
        assert "text #1" in str(caught.value)
    assert_no_secrets(["nothing here"], [secret])


@pytest.mark.lab
def test_no_secret_leaks_into_logs_errors_or_mail(lab: Lab,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Resolving the lab's secrets, sending mail both ways, failing to authenticate and to find
    a secret, and rendering reports leave no secret in logs, exception texts or messages."""
    env = lab.settings_file
    identity, service = IdentitySettings(_env_file=env), ServiceSettings(_env_file=env)
    provider = SecretProvider(identity, KeyVaultSettings(_env_file=env),
                              ca_bundle=service.ca_bundle)
    settings = [s for s in SECRET_SETTINGS if lab.settings.get(s)]
    to = f"leak-check+{uuid.uuid4().hex[:8]}@contoso.example"
    texts: list[str] = []
    caplog.set_level(logging.DEBUG)
    # shared.log.configure() (run by any earlier test of the session) quiets azure-core: hear it
    caplog.set_level(logging.DEBUG, logger="azure")

    def mailer(transport: str, **smtp: object) -> Mailer:
        return Mailer(
            MailerSettings(
                MailSettings(_env_file=env).model_copy(update={"transport": transport}),
                SmtpSettings(_env_file=env).model_copy(update=smtp),
                GraphSettings(_env_file=env),
                identity,
                service.ca_bundle,
            ),
            provider,
        )

    with structlog.testing.capture_logs() as events:
        secrets = [provider.resolve(SecretStr(lab.settings[s]), setting=s) for s in settings]
        secrets.append(lab.settings["AZURE_STATIC_TOKEN"])
        digest = render_digest(
            [ProvisionedRow("anna", "anna@contoso.com", "E3")],
            [SkuSummary("ENTERPRISEPACK", 1, 25)],
            since=dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
            until=dt.datetime(2026, 3, 2, tzinfo=dt.UTC),
        )
        mail = Mail(digest.subject, digest.html, digest.text, to=(to,))
        asyncio.run(mailer("smtp").send(mail))
        asyncio.run(mailer("graph").send(mail))
        caught: list[Exception] = []
        for attempt in (
            lambda: asyncio.run(
                mailer("smtp", password=SecretStr(secrets[0] + "-wrong")).send(mail)),
            lambda: provider.resolve(
                SecretStr(
                    f"@Microsoft.KeyVault(SecretUri={lab.settings['KEY_VAULT_URL']}"
                    "/secrets/absent-secret)"
                ),
                setting="AD_PASSWORD",
            ),
        ):
            try:
                attempt()
            except Exception as exc:  # every failure's text is scanned
                caught.append(exc)
                texts.extend([str(exc), repr(exc)])
        error_mail = render_error(
            FailureReport.from_error(
                PermanentError("Exchange refused the login", user="anna", step="mailbox",
                               fix="check EXCHANGE_PASSWORD")
            )
        )

    assert settings, "the lab has no secret settings to check"
    assert ["PermanentError", "ConfigError"] == [type(e).__name__ for e in caught]
    # The scan covers real output: the provider and mailer logged, and so did azure-core.
    assert {"secret_resolved", "mail_sent"} <= {e["event"] for e in events}
    assert "Request URL" in caplog.text
    texts += [json.dumps(event, default=str) for event in events]
    texts.append(caplog.text)
    texts += [digest.html, digest.text, error_mail.html, error_mail.text]
    folder = Path(lab.settings["LAB_MAIL_DIR"])
    delivered = [p.read_text(errors="replace") for p in folder.glob("*.eml")]
    texts += [t for t in delivered if to in t]
    assert 2 <= len([t for t in delivered if to in t])
    assert_no_secrets(texts, secrets)
