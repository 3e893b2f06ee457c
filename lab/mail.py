"""Mail peer: an SMTP submission server (aiosmtpd) that keeps every message it accepts.

It behaves like an authenticated submission port (587) of Exchange or any MTA:

- ``STARTTLS`` with a certificate from the lab CA, required before anything else
  (``530 Must issue a STARTTLS command first``);
- ``AUTH PLAIN`` / ``AUTH LOGIN``, offered only over TLS, required before ``MAIL FROM``;
  wrong credentials get ``535 5.7.8 Authentication credentials invalid``;
- messages up to 35 MB (Exchange Online's submission limit);
- each accepted message is written as one ``.eml`` file in ``LAB_MAIL_DIR`` with a
  ``Received`` and a ``Return-Path`` header, as a delivering MTA adds them, and
  ``X-Lab-Envelope-To`` naming the envelope recipients (``Bcc`` leaves no other trace).

``lab.graph.mail`` writes the messages the Graph ``sendMail`` endpoint accepts into the same
folder, so a test reads one place whatever ``MAIL_TRANSPORT`` says.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import hmac
import os
import secrets
import ssl
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from .core import Lab, free_port, wait_for_port
from .tls import issue

SIZE_LIMIT = 35 * 1024 * 1024
_PASSWORD_ENV = "LAB_SMTP_PASSWORD"


def mail_dir(lab: Lab) -> Path:
    """The folder the lab keeps received mail in (``LAB_MAIL_DIR``)."""
    folder = lab.root / "mail"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_eml(folder: Path, content: bytes, *, prefix: str = "smtp") -> Path:
    """Store one message as ``<time>-<prefix>-<id>.eml``; written whole, then renamed, so a
    reader never sees half a message."""
    folder.mkdir(parents=True, exist_ok=True)
    # Nanoseconds first, so the folder's listing sorts in arrival order.
    name = f"{time.time_ns()}-{prefix}-{uuid.uuid4().hex[:12]}.eml"
    target = folder / name
    tmp = folder / f".{name}.tmp"
    tmp.write_bytes(content)
    tmp.replace(target)
    return target


class KeepingHandler:
    """aiosmtpd handler: every accepted message becomes an ``.eml`` in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        if isinstance(envelope.content, bytes):
            content = envelope.content
        received = (
            f"Received: from {session.host_name or 'unknown'} ({_peer(session)}) by lab-smtp "
            f"with ESMTPSA id {uuid.uuid4().hex[:16]}; {email.utils.formatdate(usegmt=True)}\r\n"
        )
        trace = (
            f"Return-Path: <{envelope.mail_from}>\r\n"
            f"X-Lab-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
            f"{received}"
        )
        path = write_eml(self.folder, trace.encode() + content, prefix="smtp")
        print(f"kept {path.name} from {envelope.mail_from} to {len(envelope.rcpt_tos)}", flush=True)
        return "250 2.6.0 Message accepted for delivery"


def _peer(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


class LabAuthenticator:
    """Accepts exactly one lab user, with AUTH PLAIN or LOGIN."""

    def __init__(self, user: str, password: str) -> None:
        self.user = user.encode()
        self.password = password.encode()

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        ok = hmac.compare_digest(data.login, self.user) and hmac.compare_digest(
            data.password, self.password
        )
        if not ok:
            return AuthResult(
                success=False, handled=False, message="535 5.7.8 Authentication credentials invalid"
            )
        return AuthResult(success=True)


def _sender_domain(lab: Lab) -> str:
    for key in ("LAB_MAIL_DOMAIN", "LAB_DOMAIN"):
        if lab.settings.get(key):
            return lab.settings[key]
    return "contoso.example"


def start(lab: Lab) -> None:
    """Start the SMTP server and write the SMTP and mail settings."""
    cert, key = issue(lab, "mail", ["127.0.0.1", "localhost"])
    port = free_port()
    user = f"svc-provisioning@{_sender_domain(lab)}"
    password = "lab-" + secrets.token_urlsafe(18)
    folder = mail_dir(lab)
    proc = lab.spawn(
        "mail",
        [
            sys.executable, "-m", "lab.mail",
            "--port", str(port), "--cert", str(cert), "--key", str(key),
            "--dir", str(folder), "--user", user,
        ],
        env={_PASSWORD_ENV: password},
    )
    wait_for_port("127.0.0.1", port, peer="mail", lab=lab, proc=proc)
    lab.endpoint("mail", "smtp", f"127.0.0.1:{port}")
    domain = _sender_domain(lab)
    lab.settings.update(
        {
            "LAB_MAIL_DIR": str(folder),
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(port),
            "SMTP_STARTTLS": "true",
            "SMTP_USER": user,
            "SMTP_PASSWORD": password,
            "MAIL_TRANSPORT": "smtp",
            "MAIL_SENDER": f"provisioning@{domain}",
            "MAIL_TO": f"o365-admins@{domain}",
        }
    )


async def _serve(args: argparse.Namespace, password: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)
    handler = KeepingHandler(Path(args.dir))
    authenticator = LabAuthenticator(args.user, password)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            hostname="lab-smtp",
            data_size_limit=SIZE_LIMIT,
            tls_context=context,
            require_starttls=True,
            auth_required=True,
            auth_require_tls=True,
            authenticator=authenticator,
            timeout=60,
        ),
        host="127.0.0.1",
        port=args.port,
    )
    print(f"lab smtp on 127.0.0.1:{args.port}, keeping mail in {args.dir}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.mail", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--user", required=True)
    args = parser.parse_args(argv)
    password = os.environ.get(_PASSWORD_ENV, "")
    if not password:
        raise SystemExit(f"{_PASSWORD_ENV} is not set")
    asyncio.run(_serve(args, password))


if __name__ == "__main__":
    main()
