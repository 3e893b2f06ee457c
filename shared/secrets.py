"""The secret provider: the one place a secret-valued setting becomes a usable string.

A secret setting (``AD_PASSWORD``, ``EXCHANGE_PASSWORD``, ``SMTP_PASSWORD``, ...) holds either
the secret itself (as the Functions host leaves it after resolving an app-setting reference) or
a Key Vault reference in either of the forms Azure App Service writes::

    @Microsoft.KeyVault(SecretUri=https://<vault>.vault.azure.net/secrets/<name>[/<version>])
    @Microsoft.KeyVault(VaultName=<vault>;SecretName=<name>[;SecretVersion=<version>])

References are read with ``azure-keyvault-secrets`` (``SecretClient``) under the app's identity
(``shared.identity.credential``), kept for ``KEY_VAULT_CACHE_SECONDS`` and read again after
that, so a rotated password is picked up without a restart. A caller that sees the password
rejected calls ``invalidate(setting)`` and resolves again.

Every value handed out is registered with ``shared.log.register_secret`` so that logs mask it.
Failures name the setting and the vault and secret, never a value:

    ConfigError     the reference is malformed, the secret does not exist or is disabled,
                    or the identity may not read it (an operator must act)
    TransientError  the vault was unreachable, throttled or failing (retry later)
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.keyvault.secrets import SecretClient
from pydantic import SecretStr

from .config import IdentitySettings, KeyVaultSettings, Settings
from .errors import ConfigError, TransientError
from .identity import ca_file
from .identity import credential as make_credential
from .log import get_logger, register_secret

log = get_logger(__name__)

STEP = "secrets"
_REFERENCE = re.compile(r"^@Microsoft\.KeyVault\((?P<body>.*)\)$", re.IGNORECASE | re.DOTALL)
# Key Vault object names: 1-127 letters, digits and dashes.
_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
_VERSION = re.compile(r"^[0-9A-Za-z]{1,64}$")
_VAULT_NAME = re.compile(r"^[A-Za-z][0-9A-Za-z-]{1,22}[0-9A-Za-z]$")
_PUBLIC_VAULT_SUFFIX = "vault.azure.net"


@dataclass(frozen=True)
class SecretReference:
    """Where a secret lives: the vault's URL, the secret's name, and a version when pinned."""

    vault_url: str
    name: str
    version: str | None = None

    @property
    def vault(self) -> str:
        """The vault as people name it: its host (``contoso-kv.vault.azure.net``)."""
        return urlsplit(self.vault_url).netloc

    def describe(self) -> str:
        pinned = f" (version {self.version})" if self.version else ""
        return f"secret '{self.name}'{pinned} in Key Vault {self.vault}"


def is_reference(value: str) -> bool:
    """Whether a setting's value is a Key Vault reference rather than the secret itself."""
    return bool(_REFERENCE.match(value.strip()))


def parse_reference(
    value: str, *, setting: str, default_vault_url: str | None = None
) -> SecretReference:
    """Parse a Key Vault reference; raise ``ConfigError`` naming ``setting`` when it is malformed.

    ``VaultName=<v>`` means ``https://<v>.vault.azure.net``, except when ``default_vault_url``
    (``KEY_VAULT_URL``) is a vault of that name elsewhere (a national cloud, or the lab).
    """
    match = _REFERENCE.match(value.strip())
    if not match:
        raise ConfigError(setting, "is not a Key Vault reference")
    fields: dict[str, str] = {}
    for part in match.group("body").split(";"):
        key, sep, item = part.partition("=")
        if not sep:
            continue
        fields[key.strip().lower()] = item.strip()
    if "secreturi" in fields:
        return _from_uri(fields["secreturi"], setting)
    vault, name = fields.get("vaultname", ""), fields.get("secretname", "")
    if not vault or not name:
        raise ConfigError(
            setting,
            "the Key Vault reference needs SecretUri=..., or VaultName=...;SecretName=...; "
            "correct the app setting",
        )
    if not _VAULT_NAME.match(vault):
        raise ConfigError(setting, f"'{vault}' is not a Key Vault name; correct the reference")
    vault_url = f"https://{vault}.{_PUBLIC_VAULT_SUFFIX}"
    if default_vault_url and urlsplit(default_vault_url).hostname:
        host = urlsplit(default_vault_url).hostname or ""
        if host.split(".", 1)[0].lower() == vault.lower() or _is_loopback(default_vault_url):
            vault_url = default_vault_url.rstrip("/")
    version = fields.get("secretversion") or None
    return _checked(SecretReference(vault_url, name, version), setting)


def _from_uri(uri: str, setting: str) -> SecretReference:
    parts = urlsplit(uri)
    segments = [s for s in parts.path.split("/") if s]
    if parts.scheme != "https" or not parts.netloc or len(segments) not in (2, 3):
        raise ConfigError(
            setting,
            "SecretUri must look like https://<vault>.vault.azure.net/secrets/<name>[/<version>]; "
            "correct the Key Vault reference",
        )
    if segments[0] != "secrets":
        raise ConfigError(setting, "SecretUri does not point at /secrets/; correct the reference")
    version = segments[2] if len(segments) == 3 else None
    reference = SecretReference(f"https://{parts.netloc}", segments[1], version)
    return _checked(reference, setting)


def _checked(reference: SecretReference, setting: str) -> SecretReference:
    if not _NAME.match(reference.name):
        raise ConfigError(
            setting, f"'{reference.name}' is not a Key Vault secret name; correct the reference"
        )
    if reference.version is not None and not _VERSION.match(reference.version):
        raise ConfigError(
            setting, f"'{reference.version}' is not a secret version; correct the reference"
        )
    return reference


def _is_loopback(url: str) -> bool:
    try:
        return ipaddress.ip_address(urlsplit(url).hostname or "").is_loopback
    except ValueError:
        return False


@dataclass
class _Cached:
    value: str
    fetched: float


class SecretProvider:
    """Resolves secret settings, reading Key Vault references through ``SecretClient``.

    Thread-safe: handlers in threads and the event loop may share one provider. ``clock``
    (seconds, monotonic) times the cache; tests give their own instead of sleeping.
    """

    def __init__(
        self,
        identity: IdentitySettings,
        key_vault: KeyVaultSettings,
        *,
        ca_bundle: Path | None = None,
        credential: TokenCredential | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._identity = identity
        self._key_vault = key_vault
        self._ca_bundle = ca_bundle
        self._credential = credential
        self._clock = clock
        self._clients: dict[str, SecretClient] = {}
        # Keyed by setting and reference, so a value is never served for another reference.
        self._cache: dict[tuple[str, SecretReference], _Cached] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretProvider:
        """The provider for the service's settings (identity, Key Vault, CA bundle)."""
        return cls(settings.identity, settings.key_vault, ca_bundle=settings.service.ca_bundle)

    def resolve(self, value: SecretStr | None, *, setting: str) -> str:
        """The secret for ``setting``: the value itself, or what its Key Vault reference names.

        Raises ``ConfigError`` when the setting is empty, malformed, or names a secret that
        cannot be read, and ``TransientError`` when the vault cannot be reached right now
        (unless a value read earlier is still at hand, which is then used).
        """
        if value is None or not value.get_secret_value().strip():
            raise ConfigError(setting, "is not set; give the secret or a Key Vault reference")
        raw = value.get_secret_value().strip()
        if not is_reference(raw):
            register_secret(raw)
            return raw
        reference = parse_reference(raw, setting=setting, default_vault_url=self._key_vault.url)
        with self._lock:
            cached = self._cache.get((setting, reference))
            fresh = cached and self._clock() - cached.fetched < self._key_vault.cache_seconds
            if cached and fresh:
                return cached.value
            try:
                secret = self._fetch(reference, setting)
            except TransientError:
                if cached is None:
                    raise
                # A vault outage should not stop the service while it still has the last value;
                # a rotated password shows up as an auth failure, and the caller invalidates.
                log.warning(
                    "secret_refresh_failed", setting=setting, vault=reference.vault,
                    secret=reference.name, step=STEP,
                )
                return cached.value
            register_secret(secret)
            self._cache[(setting, reference)] = _Cached(secret, self._clock())
        log.info(
            "secret_resolved", setting=setting, vault=reference.vault, secret=reference.name,
            version=reference.version or "latest", step=STEP,
        )
        return secret

    async def aresolve(self, value: SecretStr | None, *, setting: str) -> str:
        """``resolve`` in a worker thread, for async callers (the vault client is blocking)."""
        return await asyncio.to_thread(self.resolve, value, setting=setting)

    def invalidate(self, setting: str) -> None:
        """Forget the cached value of ``setting``; the next ``resolve`` reads the vault again.

        Call it when a peer rejected the password: it may have been rotated.
        """
        with self._lock:
            for key in [k for k in self._cache if k[0] == setting]:
                del self._cache[key]
        log.info("secret_invalidated", setting=setting, step=STEP)

    def close(self) -> None:
        """Close the vault clients' connections."""
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    # -- the vault ---------------------------------------------------------------------------
    def _client(self, vault_url: str) -> SecretClient:
        client = self._clients.get(vault_url)
        if client is None:
            if self._credential is None:
                self._credential = make_credential(self._identity)
            client = SecretClient(
                vault_url,
                self._credential,
                connection_verify=ca_file(self._ca_bundle),
                # SecretClient checks that the challenge's resource (vault.azure.net) is a parent
                # domain of the vault's host. A vault on a loopback address (the lab's) has no
                # such parent; no Azure vault is ever on loopback, so nothing is lost there.
                verify_challenge_resource=not _is_loopback(vault_url),
                retry_total=2,
                connection_timeout=10,
                read_timeout=20,
            )
            self._clients[vault_url] = client
        return client

    def _fetch(self, reference: SecretReference, setting: str) -> str:
        where = reference.describe()
        try:
            secret = self._client(reference.vault_url).get_secret(
                reference.name, reference.version
            )
        except ResourceNotFoundError:
            raise ConfigError(
                setting, f"{where} does not exist; create it there or correct the reference"
            ) from None
        except ClientAuthenticationError as exc:
            raise ConfigError(
                setting,
                f"the app's identity could not read {where} ({_code(exc)}); grant it the "
                "'Key Vault Secrets User' role on the vault, or check AZURE_CREDENTIAL",
            ) from None
        except HttpResponseError as exc:
            status = exc.status_code or 0
            if status == 429 or status >= 500:
                raise TransientError(
                    f"Key Vault answered {status} ({_code(exc)}) reading {setting} from {where}",
                    step=STEP,
                    fix="none needed if it passes; otherwise check the vault's health and limits",
                ) from None
            if status == 403:
                raise ConfigError(
                    setting,
                    f"reading {where} was refused ({_code(exc)}); enable the secret, or grant "
                    "the app's identity 'Key Vault Secrets User' and allow its network",
                ) from None
            raise ConfigError(
                setting, f"reading {where} failed with {status} ({_code(exc)}); check the reference"
            ) from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise ConfigError(
                    setting,
                    f"the TLS certificate of Key Vault {reference.vault} is not trusted; add its "
                    "CA to CA_BUNDLE",
                ) from None
            raise TransientError(
                f"Key Vault {reference.vault} could not be reached to read {setting}",
                step=STEP,
                fix="check the network path to the vault (DNS, private endpoint, firewall)",
            ) from None
        except ValueError:
            # SecretClient's challenge check: the vault answered for a resource its host is not
            # part of. That is a wrong KEY_VAULT_URL or reference, or something posing as a vault.
            raise ConfigError(
                setting,
                f"{reference.vault} did not answer as a Key Vault (challenge resource mismatch); "
                "correct the reference",
            ) from None
        if secret.value is None:
            raise ConfigError(setting, f"{where} has no value; set one")
        return secret.value


def _code(exc: HttpResponseError) -> str:
    """Key Vault's error code (``SecretNotFound``, ``Forbidden``...), never its message text."""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    return str(code) if code else f"HTTP {exc.status_code}"
