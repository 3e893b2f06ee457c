"""The endpoint's HTTP side: ``POST /PowerShell`` over HTTPS (TLS 1.2+, lab-CA certificate,
handshake in the connection's thread), NTLM/Negotiate with channel binding (pyspnego as the
acceptor) or Basic, 401 for bad credentials, WS-Management requests parsed and handed to
``shell``, injected faults applied, and the lab-only ``/lab/knobs`` path.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import socket
import ssl
import sys
import time
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .endpoint import Endpoint
from .shell import dispatch
from .wsman import ACTION_NOT_SUPPORTED, ACTIONS, NS, WSManFault, fault_envelope


class Handler(BaseHTTPRequestHandler):
    """One HTTP/1.1 connection. NTLM authenticates the connection, so its state lives here."""

    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""
    timeout = 300
    endpoint: Endpoint

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.user: str | None = None
        self.auth_ctx: Any = None

    def log_message(self, format: str, *args: Any) -> None:
        sys.stdout.write(f"{self.address_string()} {format % args}\n")

    # -- raw response: headers and body in one send (Nagle would add ~40 ms otherwise) --
    def respond(self, status: int, body: bytes, content_type: str = "",
                headers: dict[str, str] | None = None) -> None:
        self.log_request(status, len(body))
        reason = self.responses.get(status, ("",))[0]
        lines = [f"HTTP/1.1 {status} {reason}", f"Server: {self.server_version}",
                 f"Content-Length: {len(body)}"]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        for key, value in (headers or {}).items():
            lines.append(f"{key}: {value}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + body)

    def drop(self) -> None:
        """Close the TCP connection without an answer (an injected fault)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def do_GET(self) -> None:
        self._read_body()
        if self.path.startswith("/lab/knobs") and self._lab_token_ok():
            self.respond(200, json.dumps(self.endpoint.report()).encode(), "application/json")
            return
        self.respond(404, b"", "text/plain")

    def do_POST(self) -> None:
        body = self._read_body()
        if self.path.startswith("/lab/knobs"):
            if not self._lab_token_ok():
                self.respond(403, b"", "text/plain")
                return
            self.endpoint.set_knobs(json.loads(body or b"{}"))
            self.respond(200, json.dumps(self.endpoint.report()).encode(), "application/json")
            return
        wanted = str(self.endpoint.config.get("path", "/PowerShell")).rstrip("/").lower()
        if urlparse(self.path).path.rstrip("/").lower() != wanted:
            self.respond(404, b"", "text/html")
            return
        challenge = self._authenticate()
        if self.user is None:
            self.respond(401, b"", "text/html", {"WWW-Authenticate": challenge or
                         'Negotiate, Basic realm="' + self.endpoint.machine + '"'})
            return
        self._wsman(body, challenge)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _lab_token_ok(self) -> bool:
        given = self.headers.get("X-Lab-Token", "")
        return hmac.compare_digest(given, self.endpoint.config["admin_token"])

    # -- authentication -----------------------------------------------------------------
    def _authenticate(self) -> str | None:
        """Authenticate the request or the connection. Returns a WWW-Authenticate value to
        send (an NTLM challenge or the final token), or None."""
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            self.user = None
            try:
                user, _, password = base64.b64decode(token).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            if self._basic_ok(user, password):
                self.user = self.endpoint.config["user"].lower()
            else:
                self._failed()
            return None
        if scheme in ("negotiate", "ntlm"):
            import spnego  # the acceptor reads NTLM_USER_FILE on first use

            self.user = None
            if self.auth_ctx is None:
                self.auth_ctx = spnego.server(
                    hostname=self.endpoint.config["host"],
                    service="HTTP",
                    protocol="negotiate" if scheme == "negotiate" else "ntlm",
                    channel_bindings=self.endpoint.config["cbt"],
                )
            try:
                out = self.auth_ctx.step(base64.b64decode(token))
            except Exception:  # any SpnegoError: wrong password, unknown user, bad CBT
                self.auth_ctx = None
                self._failed()
                return None
            value = f"{'Negotiate' if scheme == 'negotiate' else 'NTLM'}"
            if out:
                value += " " + base64.b64encode(out).decode()
            if self.auth_ctx.complete:
                self.user = str(self.auth_ctx.client_principal or "").lower()
                self.auth_ctx = None
                return value if out else None
            return value
        # No header: a connection NTLM already authenticated stays authenticated.
        return None

    def _basic_ok(self, user: str, password: str) -> bool:
        expected_user = self.endpoint.config["user"]
        short = expected_user.split("\\")[-1]
        user_ok = user.lower() in (expected_user.lower(), short.lower())
        pw_ok = hmac.compare_digest(password.encode(), self.endpoint.config["password"].encode())
        return user_ok and pw_ok

    def _failed(self) -> None:
        with self.endpoint.lock:
            self.endpoint.stats["auth_failures"] += 1

    # -- WS-Management ------------------------------------------------------------------
    def _wsman(self, body: bytes, auth_reply: str | None) -> None:
        extra = {"WWW-Authenticate": auth_reply} if auth_reply else {}
        ctype = "application/soap+xml;charset=UTF-8"
        message_id = ""
        try:
            # Only the lab's own clients reach this loopback endpoint.
            request = ET.fromstring(body)  # noqa: S314
            header = request.find("s:Header", NS)
            assert header is not None
            action_uri = header.findtext("wsa:Action", "", NS)
            message_id = header.findtext("wsa:MessageID", "", NS)
            action = ACTIONS.get(action_uri)
            if action is None:
                raise WSManFault(ACTION_NOT_SUPPORTED,
                                 f"The WS-Management service does not support the action "
                                 f"{action_uri}.", "w:ActionNotSupported")
            fault = self.endpoint.take_fault(action, "before")
            if fault and self._inject(fault):
                return
            payload = dispatch(self.endpoint, self.user, self.client_address[0], action,
                               header, request.find("s:Body", NS), message_id)
            fault = self.endpoint.take_fault(action, "after")
            if fault and self._inject(fault):
                return
            self.respond(200, payload, ctype, extra)
        except WSManFault as fault_exc:
            self.respond(500, fault_envelope(fault_exc, message_id, self.endpoint.machine),
                         ctype, extra)
        except ET.ParseError:
            self.respond(400, b"", "text/html", extra)

    def _inject(self, fault: dict[str, Any]) -> bool:
        kind = fault.get("kind")
        if kind == "slow":
            time.sleep(float(fault.get("seconds", 5)))
            return False
        if kind == "drop":
            self.drop()
            return True
        if kind == "http500":
            self.respond(500, b"<html><body><h2>500 - Internal server error.</h2>"
                         b"</body></html>", "text/html")
            return True
        return False


class TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext) -> None:
        super().__init__(address, Handler)
        self.context = context

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        # The TLS handshake runs in the connection's thread, not in the accept loop.
        return self.context.wrap_socket(sock, server_side=True,
                                        do_handshake_on_connect=False), addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.do_handshake()
        except (OSError, ssl.SSLError):
            return
        super().finish_request(request, client_address)


def channel_bindings(cert_path: str) -> Any:
    """RFC 5929 tls-server-end-point bindings of our certificate, as clients compute them
    (pypsrp sends them by default over HTTPS; Exchange with Extended Protection checks)."""
    from cryptography import x509
    from spnego.channel_bindings import GssChannelBindings

    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    der = cert.public_bytes(serialization_der())
    digest = hashlib.sha256(der).digest()
    return GssChannelBindings(application_data=b"tls-server-end-point:" + digest)


def serialization_der() -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.DER
