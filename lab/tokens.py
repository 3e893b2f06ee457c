"""The lab's Entra ID access tokens: JWT-shaped, with the claims a real app-only token carries
(``aud``, ``tid``, ``appid``, ``idtyp=app``, and ``roles``: the application permissions granted
to the app), signed with the lab's key (HMAC-SHA256) where Entra signs with its own key.

The lab's Graph, Key Vault and relay accept any token that verifies under the lab's key, as a
real resource accepts any token Entra signed; Graph then answers 403 Authorization_RequestDenied
to a call whose permission is not in the token's ``roles``, as Graph does. ``AZURE_STATIC_TOKEN``
is one such token with every permission the service can need; ``POST /_lab/token`` on the lab
Graph mints another with fewer (``{"roles": [...]}``), for a test that takes one away without
changing the lab everyone else uses.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

from lab.core import Lab

KEY_SETTING = "LAB_TOKEN_KEY"
# Every application permission the service can need (docs/permissions.md), granted to the lab's
# app: a test removes one from its own token, never from this list.
APP_ROLES = (
    "LicenseAssignment.ReadWrite.All", "LicenseAssignment.Read.All", "User.ReadWrite.All",
    "User.Read.All", "RoleManagement.ReadWrite.Directory", "RoleManagement.Read.Directory",
    "RoleEligibilitySchedule.ReadWrite.Directory", "Mail.Send", "Synchronization.ReadWrite.All",
    "MailboxSettings.Read", "Reports.Read.All",
)
APP_ID = "00000000-0000-0000-0000-0000000a11ab"  # the lab app's client id (a made-up one)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint(key: str, roles: list[str] | tuple[str, ...], *, tenant: str = "",
         lifetime: int = 365 * 24 * 3600) -> str:
    """An app-only token with these ``roles``, signed with ``key``."""
    now = int(time.time())
    header = {"typ": "JWT", "alg": "HS256", "kid": "lab"}
    claims = {"aud": "https://graph.microsoft.com", "iss": f"https://sts.windows.net/{tenant}/",
              "tid": tenant, "appid": APP_ID, "oid": APP_ID, "idtyp": "app", "iat": now,
              "nbf": now, "exp": now + lifetime, "roles": list(roles),
              "jti": secrets.token_hex(8)}
    signed = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(key.encode(), signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{_b64(signature)}"


def verify(key: str, token: str) -> dict[str, Any] | None:
    """The token's claims when ``key`` signed it and it has not expired; None otherwise."""
    parts = token.strip().split(".")
    if len(parts) != 3 or not key:
        return None
    expected = hmac.new(key.encode(), f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(expected, _unb64(parts[2])):
            return None
        claims = json.loads(_unb64(parts[1]))
    except ValueError:
        return None
    if not isinstance(claims, dict) or int(claims.get("exp", 0)) < time.time():
        return None
    return claims


def ensure(lab: Lab) -> str:
    """The lab's key and its app token (``AZURE_STATIC_TOKEN``, every permission), made once
    per ``lab up`` by whichever peer needs them first; returns the token."""
    settings = lab.settings
    key = settings.setdefault(KEY_SETTING, secrets.token_urlsafe(32))
    token = settings.get("AZURE_STATIC_TOKEN", "")
    claims = verify(key, token)
    # A token from before a permission joined APP_ROLES is made again with all of them.
    if claims is None or set(APP_ROLES) - set(claims.get("roles") or []):
        token = mint(key, APP_ROLES, tenant=settings.get("LAB_GRAPH_TENANT_ID", ""))
        settings["AZURE_STATIC_TOKEN"] = token
    settings["AZURE_CREDENTIAL"] = "static"
    return token
