"""The app's identity towards Entra ID: one ``TokenCredential`` for Graph and Key Vault.

``AZURE_CREDENTIAL`` picks it:

- ``managed-identity`` (Azure): the user-assigned identity ``AZURE_CLIENT_ID``, or the
  system-assigned one when that is not set;
- ``certificate`` (a server outside Azure): an app registration with a certificate;
- ``static`` (the lab only): a fixed bearer token, ``AZURE_STATIC_TOKEN``, that the lab's
  Graph and Key Vault peers accept. No real service accepts a token that never expires.

``credential()`` works for both the sync clients (``SecretClient``) and the Graph SDK, whose
Kiota token provider awaits ``get_token`` only when it returns an awaitable.
"""

from __future__ import annotations

import atexit
import ssl
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import certifi
from azure.core.credentials import (
    AccessToken,
    AccessTokenInfo,
    TokenCredential,
    TokenRequestOptions,
)
from azure.identity import CertificateCredential, ManagedIdentityCredential
from pydantic import SecretStr

from .config import IdentitySettings
from .log import register_secret

# A static token is valid "for a year": long enough that no client ever tries to refresh it.
_STATIC_LIFETIME = 365 * 24 * 3600


class StaticTokenCredential:
    """A credential that always hands out one fixed bearer token (lab only).

    It implements both halves of azure-core's token protocols (``get_token`` and
    ``get_token_info``) so every Azure SDK client and Kiota accept it.
    """

    def __init__(self, token: SecretStr) -> None:
        self._token = token
        register_secret(token.get_secret_value())

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        """The static token, whatever the scope: the lab's peers all accept it."""
        return AccessToken(self._token.get_secret_value(), int(time.time()) + _STATIC_LIFETIME)

    def get_token_info(
        self, *scopes: str, options: TokenRequestOptions | None = None
    ) -> AccessTokenInfo:
        """The static token as ``AccessTokenInfo`` (the newer azure-core protocol)."""
        return AccessTokenInfo(
            self._token.get_secret_value(), int(time.time()) + _STATIC_LIFETIME
        )

    def close(self) -> None:
        """Nothing to release; present so the credential can be used as a client's credential."""

    def __repr__(self) -> str:
        return "StaticTokenCredential(token=***)"


def credential(identity: IdentitySettings) -> TokenCredential:
    """The credential ``AZURE_CREDENTIAL`` names, built from the identity settings."""
    if identity.credential == "static":
        assert identity.static_token is not None  # IdentitySettings validates this
        return StaticTokenCredential(identity.static_token)
    if identity.credential == "certificate":
        assert identity.client_id and identity.tenant_id and identity.client_certificate_path
        return CertificateCredential(
            identity.tenant_id,
            identity.client_id,
            certificate_path=str(identity.client_certificate_path),
        )
    if identity.client_id:
        return ManagedIdentityCredential(client_id=identity.client_id)
    return ManagedIdentityCredential()


def scope_for(url: str) -> str:
    """The ``.default`` scope of the resource at ``url`` (``https://graph.microsoft.com/.default``).

    Deriving it from the configured URL keeps national clouds working without a setting.
    """
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/.default"


# -- whom we trust ---------------------------------------------------------------------------
# CA_BUNDLE names CAs to trust *in addition to* the public ones (an internal CA, the lab CA):
# the same process talks to the organisation's SMTP relay and to public Graph and Key Vault.


def tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """A client TLS context trusting the system's CAs plus those in ``CA_BUNDLE``."""
    context = ssl.create_default_context()
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    return context


@lru_cache(maxsize=8)
def ca_file(ca_bundle: Path | None) -> str | bool:
    """A CA file for clients that take a path rather than a context (requests, hence
    ``SecretClient(connection_verify=...)``): certifi's public CAs plus ``CA_BUNDLE``.

    A path given to requests replaces its default CAs, so the two are joined into one file.
    """
    if ca_bundle is None:
        return True
    joined = Path(certifi.where()).read_bytes() + b"\n" + ca_bundle.read_bytes()
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - removed at exit
        prefix="o365-ca-", suffix=".pem", delete=False
    )
    with handle:
        handle.write(joined)
    atexit.register(Path(handle.name).unlink, missing_ok=True)
    return handle.name
