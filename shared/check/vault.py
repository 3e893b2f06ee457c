"""Key Vault: each secret setting that holds a Key Vault reference is read, as the service reads
it (``shared.secrets.SecretProvider``, the app's identity). The value is never shown."""

from __future__ import annotations

from pydantic import SecretStr

from shared.config import Settings
from shared.secrets import SecretProvider, is_reference, parse_reference

from .probe import Probe, in_thread


def secret_settings(settings: Settings) -> dict[str, SecretStr | None]:
    """The secret settings the enabled features read, by setting name."""
    found: dict[str, SecretStr | None] = {
        "AD_PASSWORD": settings.ad.password, "EXCHANGE_PASSWORD": settings.exchange.password}
    if settings.mail.transport == "smtp" and settings.smtp.user:
        found["SMTP_PASSWORD"] = settings.smtp.password
    if settings.sync.trigger == "connect":
        found["CONNECT_PASSWORD"] = settings.connect.password
    if settings.relay.auth == "sas" and settings.relay.namespace:
        found["RELAY_SAS_KEY"] = settings.relay.sas_key
    return found


def check_name(setting: str) -> str:
    return f"key vault {setting}"


def referenced(settings: Settings) -> dict[str, SecretStr]:
    """The secret settings whose value is a Key Vault reference."""
    return {name: value for name, value in secret_settings(settings).items()
            if value is not None and is_reference(value.get_secret_value())}


def probes(settings: Settings) -> list[Probe]:
    """One probe per referenced secret."""
    provider = SecretProvider.from_settings(settings)

    def probe(setting: str, value: SecretStr) -> Probe:
        async def run() -> str:
            await in_thread(lambda: provider.resolve(value, setting=setting))
            where = parse_reference(value.get_secret_value(), setting=setting,
                                    default_vault_url=settings.key_vault.url)
            return f"{where.describe()} is readable by the app's identity"

        return Probe(check_name(setting), run)

    return [probe(name, value) for name, value in referenced(settings).items()]
