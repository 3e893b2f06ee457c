"""Key Vault peer: the secrets part of Key Vault's REST API, over HTTPS on loopback.

What it implements, as Key Vault documents it (any ``api-version`` of the 7.x or dated form):

- ``GET /secrets/{name}[/{version}]`` → the secret bundle (``value``, ``id``, ``attributes``);
  the latest enabled version when no version is given;
- ``PUT /secrets/{name}`` → a new version; ``PATCH /secrets/{name}/{version}`` → attributes
  (``enabled``), content type and tags;
- ``GET /secrets`` and ``GET /secrets/{name}/versions`` → pages of items (``maxresults`` ≤ 25)
  linked by ``nextLink``;
- the bearer challenge: a request without a valid token gets ``401`` with
  ``WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/<tenant>",
  resource="https://vault.azure.net"``; the lab's static token (``AZURE_STATIC_TOKEN``) passes;
- errors in Key Vault's shape ``{"error": {"code", "message"}}``: ``SecretNotFound`` (404),
  ``Forbidden``/``SecretDisabled`` (403), ``BadParameter`` (400), ``Unauthorized`` (401) and
  ``Throttled`` (429, ``Retry-After``) beyond 4,000 secret transactions per 10 seconds, the
  vault's documented limit.

Not implemented (a documented subset): delete/recover/purge, backup/restore, ``nbf``/``exp``.

The vault's host is ``127.0.0.1``, so ``azure-keyvault-secrets`` cannot match the challenge's
resource (``vault.azure.net``) against it; ``shared.secrets`` turns that one check off for
loopback vaults only (see ``SecretProvider._client``).

``start(lab)`` stores the passwords the earlier peers put in ``lab.settings`` as secrets and
rewrites those settings to Key Vault references, so the service reads them as it does in Azure.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import socket
import ssl
import sys
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import tokens
from .core import Lab, LabError, free_port, wait_for_port
from .tls import issue

# The secret settings the earlier peers may have written, and the secret each becomes.
SECRET_SETTINGS = {
    "AD_PASSWORD": "ad-password",
    "EXCHANGE_PASSWORD": "exchange-password",
    "SMTP_PASSWORD": "smtp-password",
}
VAULT_NAME = "o365lab"
LAB_TENANT = "00000000-0000-4000-8000-00000000c0de"
RESOURCE = "https://vault.azure.net"
THROTTLE_LIMIT = 4000
THROTTLE_WINDOW = 10.0
PAGE_MAX = 25
_TOKEN_ENV = "LAB_VAULT_TOKEN"
_KEY_ENV = "LAB_VAULT_TOKEN_KEY"  # any token the lab's key signed is accepted, as Entra's are


class SecretStore:
    """The vault's secrets in a JSON file: name → list of versions, oldest first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, list[dict[str, Any]]] = (
            json.loads(path.read_text()) if path.exists() else {}
        )

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._data, indent=2))
        tmp.chmod(0o600)
        tmp.replace(self.path)

    def put(
        self,
        name: str,
        value: str,
        *,
        content_type: str | None = None,
        tags: dict[str, str] | None = None,
        enabled: bool = True,
    ) -> dict[str, Any]:
        """Add a new version of ``name`` and return it."""
        now = int(time.time())
        version = {
            "version": uuid.uuid4().hex,
            "value": value,
            "enabled": enabled,
            "created": now,
            "updated": now,
            "contentType": content_type,
            "tags": tags or {},
        }
        with self._lock:
            self._data.setdefault(name.lower(), []).append(version)
            self._save()
        return dict(version)

    def ensure(self, name: str, value: str) -> None:
        """Store ``value`` as ``name`` unless it is already the latest version."""
        latest = self.get(name)
        if latest is None or latest["value"] != value or not latest["enabled"]:
            self.put(name, value)

    def get(self, name: str, version: str | None = None) -> dict[str, Any] | None:
        """A version of ``name`` (the latest when ``version`` is None), or None."""
        with self._lock:
            versions = self._data.get(name.lower(), [])
            if version:
                found = [v for v in versions if v["version"] == version.lower()]
                return dict(found[0]) if found else None
            return dict(versions[-1]) if versions else None

    def update(self, name: str, version: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        with self._lock:
            for item in self._data.get(name.lower(), []):
                if item["version"] == version.lower():
                    item.update(changes)
                    item["updated"] = int(time.time())
                    self._save()
                    return dict(item)
        return None

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._data)

    def versions(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(v) for v in self._data.get(name.lower(), [])]


class _Throttle:
    """A sliding window over the vault's transactions (Key Vault counts per vault)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def admit(self) -> float | None:
        """None when the request may go on, else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            while self._times and now - self._times[0] > self.window:
                self._times.popleft()
            if len(self._times) >= self.limit:
                return self.window - (now - self._times[0])
            self._times.append(now)
            return None


class VaultServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], store: SecretStore, token: str, tenant: str, base: str
    ) -> None:
        super().__init__(address, VaultHandler)
        self.store = store
        self.token = token
        self.token_key = ""
        self.tenant = tenant
        self.base = base
        self.throttle = _Throttle(THROTTLE_LIMIT, THROTTLE_WINDOW)
        self.tls: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the connection's own thread, so a client that
        # connects and says nothing (a port probe) cannot stall the accept loop.
        assert isinstance(request, socket.socket) and self.tls is not None
        request.settimeout(30)
        try:
            tls = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            request.close()
            return
        super().finish_request(tls, client_address)


class VaultHandler(BaseHTTPRequestHandler):
    server: VaultServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        # Paths and status only; bodies (which hold values) are never logged.
        print(f"{self.address_string()} {format % args}", flush=True)

    # -- plumbing --------------------------------------------------------------------------
    def _send(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        self.send_header("x-ms-keyvault-service-version", "lab")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(
        self,
        status: int,
        code: str,
        message: str,
        *,
        inner: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        error: dict[str, Any] = {"code": code, "message": message}
        if inner:
            error["innererror"] = {"code": inner}
        self._send(status, {"error": error}, headers)

    def _body(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        challenge = (
            f'Bearer authorization="https://login.microsoftonline.com/{self.server.tenant}", '
            f'resource="{RESOURCE}"'
        )
        if not header.startswith("Bearer "):
            # The body must be read even when rejected, or the connection's next request breaks.
            self._body()
            self._error(
                401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.",
                headers={"WWW-Authenticate": challenge},
            )
            return False
        presented = header[7:]
        if not (hmac.compare_digest(presented.encode(), self.server.token.encode())
                or tokens.verify(self.server.token_key, presented) is not None):
            self._body()
            self._error(
                401, "Unauthorized", "AKV10022: Invalid audience or token.",
                headers={"WWW-Authenticate": challenge},
            )
            return False
        return True

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        api_version = query.get("api-version", "")
        if not api_version:
            self._body()
            self._error(400, "BadParameter", "The api-version query parameter is missing.")
            return
        if not self._authorized():
            return
        wait = self.server.throttle.admit()
        if wait is not None:
            self._body()
            self._error(
                429, "Throttled",
                "Request was not processed because too many requests were received.",
                headers={"Retry-After": str(max(1, int(wait + 0.999)))},
            )
            return
        parts = [p for p in url.path.split("/") if p]
        if not parts or parts[0] != "secrets":
            self._body()
            self._error(404, "NotFound", f"The lab vault does not serve {url.path}.")
            return
        if len(parts) > 1 and not _valid_name(parts[1]):
            self._body()
            self._error(
                400, "BadParameter",
                "The secret name is invalid: it must be 1-127 letters, digits and dashes.",
            )
            return
        handlers = {
            ("GET", 1): self._list_secrets,
            ("GET", 2): self._get,
            ("GET", 3): self._get,
            ("PUT", 2): self._put,
            ("PATCH", 2): self._patch,  # no version: the latest, as Key Vault does
            ("PATCH", 3): self._patch,
        }
        handler = handlers.get((method, len(parts)))
        if len(parts) == 3 and parts[2] == "versions" and method == "GET":
            handler = self._list_versions
        if handler is None:
            self._body()
            self._error(405, "MethodNotAllowed", f"{method} {url.path} is not supported.")
            return
        handler(parts, query)

    def do_GET(self) -> None:
        self._route("GET")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_PATCH(self) -> None:
        self._route("PATCH")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def do_POST(self) -> None:
        self._route("POST")

    # -- operations ------------------------------------------------------------------------
    def _bundle(self, name: str, item: dict[str, Any], *, value: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": f"{self.server.base}/secrets/{name}/{item['version']}",
            "attributes": {
                "enabled": item["enabled"],
                "created": item["created"],
                "updated": item["updated"],
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": 90,
            },
            "tags": item.get("tags") or {},
        }
        if item.get("contentType"):
            body["contentType"] = item["contentType"]
        if value:
            body["value"] = item["value"]
        return body

    def _get(self, parts: list[str], query: dict[str, str]) -> None:
        name = parts[1]
        version = parts[2] if len(parts) == 3 else None
        item = self.server.store.get(name, version)
        if item is None:
            what = f"{name}/{version}" if version else name
            self._error(
                404, "SecretNotFound",
                f"A secret with (name/id) {what} was not found in this key vault. If you "
                "recently deleted this secret you may be able to recover it using the correct "
                "recovery command.",
            )
            return
        if not item["enabled"]:
            self._error(
                403, "Forbidden", "Operation get is not allowed on a disabled secret.",
                inner="SecretDisabled",
            )
            return
        self._send(200, self._bundle(name, item))

    def _put(self, parts: list[str], query: dict[str, str]) -> None:
        body = self._body()
        if body is None or not isinstance(body.get("value"), str):
            self._error(400, "BadParameter", "The request body must carry a string 'value'.")
            return
        attributes = body.get("attributes") or {}
        item = self.server.store.put(
            parts[1],
            body["value"],
            content_type=body.get("contentType"),
            tags=body.get("tags"),
            enabled=bool(attributes.get("enabled", True)),
        )
        self._send(200, self._bundle(parts[1], item))

    def _patch(self, parts: list[str], query: dict[str, str]) -> None:
        body = self._body()
        if body is None:
            self._error(400, "BadParameter", "The request body is not JSON.")
            return
        changes: dict[str, Any] = {}
        if "enabled" in (body.get("attributes") or {}):
            changes["enabled"] = bool(body["attributes"]["enabled"])
        if "contentType" in body:
            changes["contentType"] = body["contentType"]
        if "tags" in body:
            changes["tags"] = body["tags"] or {}
        latest = self.server.store.get(parts[1])
        version = parts[2] if len(parts) == 3 else (latest or {}).get("version", "")
        item = self.server.store.update(parts[1], version, changes) if version else None
        if item is None:
            self._error(
                404, "SecretNotFound",
                f"A secret with (name/id) {'/'.join(parts[1:])} was not found in this key vault.",
            )
            return
        self._send(200, self._bundle(parts[1], item, value=False))

    def _page(self, items: list[dict[str, Any]], query: dict[str, str], path: str) -> None:
        try:
            size = int(query.get("maxresults", PAGE_MAX))
            start = int(query.get("$skiptoken", "0"))
        except ValueError:
            self._error(400, "BadParameter", "maxresults and $skiptoken must be integers.")
            return
        if not 1 <= size <= PAGE_MAX:
            self._error(400, "BadParameter", f"maxresults must be between 1 and {PAGE_MAX}.")
            return
        page = items[start : start + size]
        next_link = None
        if start + size < len(items):
            next_link = (
                f"{self.server.base}{path}?api-version={query['api-version']}"
                f"&maxresults={size}&$skiptoken={start + size}"
            )
        self._send(200, {"value": page, "nextLink": next_link})

    def _list_secrets(self, parts: list[str], query: dict[str, str]) -> None:
        items = []
        for name in self.server.store.names():
            latest = self.server.store.get(name)
            if latest is not None:
                item = self._bundle(name, latest, value=False)
                item["id"] = f"{self.server.base}/secrets/{name}"
                items.append(item)
        self._page(items, query, "/secrets")

    def _list_versions(self, parts: list[str], query: dict[str, str]) -> None:
        name = parts[1]
        versions = self.server.store.versions(name)
        if not versions:
            self._error(
                404, "SecretNotFound",
                f"A secret with (name/id) {name} was not found in this key vault.",
            )
            return
        items = [self._bundle(name, v, value=False) for v in versions]
        self._page(items, query, f"/secrets/{name}/versions")


def _valid_name(name: str) -> bool:
    return 1 <= len(name) <= 127 and all(c.isascii() and (c.isalnum() or c == "-") for c in name)


# -- the lab side ------------------------------------------------------------------------------
def store_path(lab: Lab) -> Path:
    """The JSON file the lab vault keeps its secrets in."""
    return lab.path("vault", "secrets.json")


def lab_secret(lab: Lab, setting: str) -> str:
    """The plain value behind a secret setting the vault took over (for lab code, never the
    service: the service resolves references through ``shared.secrets``)."""
    name = SECRET_SETTINGS[setting]
    item = SecretStore(store_path(lab)).get(name)
    if item is None:
        raise LabError(f"the lab vault holds no secret '{name}' for {setting}")
    return str(item["value"])


def _reference(lab: Lab, setting: str, base: str) -> str:
    name = SECRET_SETTINGS[setting]
    if setting == "EXCHANGE_PASSWORD":
        # The VaultName form too, so both forms Azure writes are exercised on the lab.
        return f"@Microsoft.KeyVault(VaultName={VAULT_NAME};SecretName={name})"
    return f"@Microsoft.KeyVault(SecretUri={base}/secrets/{name}/)"


def start(lab: Lab) -> None:
    """Start the vault, move the earlier peers' passwords into it, and point settings at it."""
    cert, key = issue(lab, "vault", ["127.0.0.1", "localhost"])
    token = tokens.ensure(lab)
    tenant = lab.settings.get("AZURE_TENANT_ID") or LAB_TENANT
    port = free_port()
    base = f"https://127.0.0.1:{port}"
    store = SecretStore(store_path(lab))
    for setting, name in SECRET_SETTINGS.items():
        value = lab.settings.get(setting, "")
        if value and not value.startswith("@Microsoft.KeyVault("):
            store.ensure(name, value)
    proc = lab.spawn(
        "vault",
        [
            sys.executable, "-m", "lab.vault",
            "--port", str(port), "--cert", str(cert), "--key", str(key),
            "--store", str(store_path(lab)), "--tenant", tenant, "--base", base,
        ],
        # The token goes through the environment, not argv, which any local user can read.
        env={_TOKEN_ENV: token, _KEY_ENV: lab.settings[tokens.KEY_SETTING]},
    )
    wait_for_port("127.0.0.1", port, peer="vault", lab=lab, proc=proc)
    lab.endpoint("vault", "https", base)
    lab.settings["KEY_VAULT_URL"] = base
    lab.settings["LAB_VAULT_URL"] = base
    for setting in SECRET_SETTINGS:
        value = lab.settings.get(setting, "")
        if value and not value.startswith("@Microsoft.KeyVault("):
            lab.settings[setting] = _reference(lab, setting, base)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.vault", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--tenant", default=LAB_TENANT)
    parser.add_argument("--base", required=True)
    args = parser.parse_args(argv)
    token = os.environ.get(_TOKEN_ENV, "")
    if not token:
        raise SystemExit(f"{_TOKEN_ENV} is not set")
    server = VaultServer(
        ("127.0.0.1", args.port), SecretStore(Path(args.store)), token, args.tenant, args.base
    )
    server.token_key = os.environ.get(_KEY_ENV, "")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)
    server.tls = context
    print(f"lab vault on {args.base}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
