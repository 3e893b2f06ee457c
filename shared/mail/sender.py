"""Sending the service's mail: reports, error mails and alerts.

A ``Mail`` is what ``shared.mail.reports`` renders (subject, HTML, plain text, attachments);
``await Mailer.send(mail)`` delivers it as ``MAIL_TRANSPORT`` says, without blocking the event
loop:

- ``graph``: Microsoft Graph ``POST /users/{MAIL_SENDER}/sendMail``, app-only (``Mail.Send``
  application permission), HTML body, attachments as ``fileAttachment``, through the service's
  one Graph client (``shared.graph.client``: its credential, pacing, retries and error classifier).
  Exchange Online adds the plain-text alternative itself;
- ``smtp``: ``smtplib`` in a worker thread, to ``SMTP_HOST:SMTP_PORT`` with STARTTLS
  (certificate checked against the public CAs plus ``CA_BUNDLE``) and AUTH as ``SMTP_USER``;
  ``multipart/alternative`` (text, HTML) inside ``multipart/mixed`` with attachments;
- ``none``: nothing is sent; a ``mail_skipped`` event is logged.

Every mail is redacted as it leaves (``redacted``): subject, both bodies and the attachments,
each secret the provider handed out masked in its raw and its HTML-escaped form.

Failures are ``shared.errors`` types with ``step="mail"``:

    TransientError   the server was unreachable, busy, throttled (429/5xx, SMTP 4xx): retry
    PermanentError   the sender, recipients, permissions, size or TLS trust are wrong: fix first

The SMTP password comes from the secret provider when it is needed; when the server rejects
it, the provider's copy is dropped and the login is tried once more with a fresh read, which is
how a password rotated in Key Vault is picked up.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from pathlib import Path
from typing import NamedTuple

from shared.config import GraphSettings, IdentitySettings, MailSettings, Settings, SmtpSettings
from shared.errors import ConfigError, PermanentError, TransientError
from shared.identity import tls_context
from shared.log import get_logger, redact
from shared.secrets import SecretProvider

log = get_logger(__name__)

STEP = "mail"
# Graph takes attachments inline up to a 4 MB request; larger ones need an upload session.
GRAPH_REQUEST_LIMIT = 4 * 1024 * 1024


class Attachment(NamedTuple):
    """A file attached to a mail: its name, its bytes, its MIME type."""

    filename: str
    content: bytes
    mime: str = "application/octet-stream"


@dataclass(frozen=True)
class Mail:
    """A rendered mail. ``to`` overrides ``MAIL_TO`` when given."""

    subject: str
    html: str
    text: str
    attachments: list[Attachment] = field(default_factory=list)
    to: tuple[str, ...] = ()


def one_line(text: str, limit: int = 200) -> str:
    """Header-safe text: no line breaks (they would start a new header), at most ``limit``."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def to_mime(message: Mail, *, sender: str, recipients: Sequence[str]) -> EmailMessage:
    """The message as MIME: text and HTML as alternatives, then the attachments."""
    mime = EmailMessage()
    mime["Subject"] = one_line(message.subject)
    mime["From"] = sender
    mime["To"] = ", ".join(recipients)
    mime["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
    mime["Message-ID"] = email.utils.make_msgid(domain=sender.rpartition("@")[2] or None)
    mime["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to a robot
    mime.set_content(message.text)
    mime.add_alternative(message.html, subtype="html")
    for attachment in message.attachments:
        maintype, _, subtype = attachment.mime.partition("/")
        mime.add_attachment(
            attachment.content,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=attachment.filename,
        )
    return mime


def redacted(message: Mail) -> Mail:
    """``message`` with every registered secret masked in its subject, bodies and text
    attachments (``shared.log.redact``: raw and HTML-escaped forms)."""
    files = [a._replace(content=redact(a.content.decode("utf-8")).encode("utf-8"))
             if _is_text(a.content) else a for a in message.attachments]
    return replace(message, subject=redact(message.subject), html=redact(message.html),
                   text=redact(message.text), attachments=files)


def _is_text(content: bytes) -> bool:
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def graph_message(message: Mail, recipients: Sequence[str]) -> dict[str, object]:
    """The JSON body of Graph's ``sendMail`` for ``message``."""
    body: dict[str, object] = {
        "subject": one_line(message.subject, 255),
        "body": {"contentType": "HTML", "content": message.html},
        "toRecipients": [{"emailAddress": {"address": r}} for r in recipients],
    }
    if message.attachments:
        body["attachments"] = [
            {
                "@odata.type": "#microsoft.graph.fileAttachment",
                "name": a.filename,
                "contentType": a.mime,
                "contentBytes": base64.b64encode(a.content).decode("ascii"),
            }
            for a in message.attachments
        ]
    return {"message": body, "saveToSentItems": False}


@dataclass(frozen=True)
class MailerSettings:
    """The settings the mailer reads; ``MailerSettings.of(settings)`` picks them out."""

    mail: MailSettings
    smtp: SmtpSettings
    graph: GraphSettings
    identity: IdentitySettings
    ca_bundle: Path | None = None

    @classmethod
    def of(cls, settings: Settings) -> MailerSettings:
        return cls(
            settings.mail, settings.smtp, settings.graph, settings.identity,
            settings.service.ca_bundle,
        )


class Mailer:
    """Sends ``Mail`` through Graph or SMTP, as ``MAIL_TRANSPORT`` says. One per process.

    ``Mailer(settings, secrets)`` with the service's ``Settings`` (or a ``MailerSettings``);
    raises ``ConfigError`` when the SMTP settings would send the password in clear.
    """

    def __init__(self, settings: Settings | MailerSettings, secrets: SecretProvider) -> None:
        chosen = settings if isinstance(settings, MailerSettings) else MailerSettings.of(settings)
        mail, smtp = chosen.mail, chosen.smtp
        if mail.transport == "smtp":
            if not smtp.host:
                raise ConfigError("SMTP_HOST", "is needed when MAIL_TRANSPORT=smtp")
            if smtp.user and not smtp.starttls and smtp.port != 465:
                raise ConfigError(
                    "SMTP_STARTTLS",
                    "is false, which would send SMTP_PASSWORD in clear; set it to true, use "
                    "port 465, or relay without SMTP_USER",
                )
        self._mail = mail
        self._smtp = smtp
        self._settings = chosen
        self._secrets = secrets

    @property
    def transport(self) -> str:
        return self._mail.transport

    async def send(self, message: Mail) -> None:
        """Deliver ``message`` to its recipients (``MAIL_TO`` unless it names its own)."""
        recipients = message.to or self._mail.recipients
        if self._mail.transport == "none":
            log.info("mail_skipped", subject=one_line(message.subject), step=STEP)
            return
        if not recipients:
            raise PermanentError(
                f"'{one_line(message.subject)}' has no recipients",
                step=STEP,
                fix="set MAIL_TO",
            )
        message = redacted(message)
        if self._mail.transport == "graph":
            await self._send_graph(message, recipients)
        else:
            await asyncio.to_thread(self._send_smtp, message, recipients)
        log.info(
            "mail_sent",
            subject=one_line(message.subject),
            recipients=len(recipients),
            attachments=len(message.attachments),
            transport=self._mail.transport,
            step=STEP,
        )

    # -- SMTP --------------------------------------------------------------------------------
    def _send_smtp(self, message: Mail, recipients: Sequence[str]) -> None:
        mime = to_mime(message, sender=self._mail.sender, recipients=recipients)
        what = f"sending '{one_line(message.subject)}' via SMTP {self._smtp.host}:{self._smtp.port}"
        try:
            try:
                self._smtp_once(mime, recipients)
            except smtplib.SMTPAuthenticationError:
                if self._smtp.password is None:
                    raise
                # The password may have been rotated in Key Vault since we read it.
                self._secrets.invalidate("SMTP_PASSWORD")
                self._smtp_once(mime, recipients)
        except smtplib.SMTPAuthenticationError as exc:
            raise PermanentError(
                f"{what}: the server refused the credentials of {self._smtp.user} "
                f"({exc.smtp_code})",
                step=STEP,
                fix="check SMTP_USER and the SMTP_PASSWORD secret, and that the account may "
                "submit mail (SMTP AUTH enabled for it)",
            ) from None
        except smtplib.SMTPNotSupportedError:
            raise PermanentError(
                f"{what}: the server does not offer STARTTLS or AUTH",
                step=STEP,
                fix="point SMTP_HOST/SMTP_PORT at a submission port (587) that offers both",
            ) from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise PermanentError(
                f"{what}: every recipient was refused ({', '.join(exc.recipients)})",
                step=STEP,
                fix="correct MAIL_TO, or allow SMTP_USER to send to these addresses",
            ) from None
        except smtplib.SMTPResponseException as exc:
            reply = _smtp_reply(exc)
            if 400 <= exc.smtp_code < 500:
                raise TransientError(
                    f"{what}: the server answered {reply}",
                    step=STEP,
                    fix="none needed if it passes; otherwise check the SMTP server's queue",
                ) from None
            raise PermanentError(
                f"{what}: the server answered {reply}",
                step=STEP,
                fix="check MAIL_SENDER (SMTP_USER must be allowed to send as it) and the "
                "message size limit",
            ) from None
        except ssl.SSLCertVerificationError:
            raise PermanentError(
                f"{what}: the server's TLS certificate is not trusted",
                step=STEP,
                fix="add the CA that issued it to CA_BUNDLE, or correct SMTP_HOST to the name "
                "on the certificate",
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientError(
                f"{what}: {type(exc).__name__}",
                step=STEP,
                fix="check that the SMTP server is reachable from the app",
            ) from None

    def _smtp_once(self, mime: EmailMessage, recipients: Sequence[str]) -> None:
        smtp = self._smtp
        context = tls_context(self._settings.ca_bundle)
        client: smtplib.SMTP
        if smtp.port == 465:
            client = smtplib.SMTP_SSL(
                smtp.host, smtp.port, timeout=smtp.timeout_seconds, context=context
            )
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_seconds)
        with client:
            client.ehlo()
            if smtp.starttls and smtp.port != 465:
                client.starttls(context=context)
                client.ehlo()
            if smtp.user:
                password = self._secrets.resolve(smtp.password, setting="SMTP_PASSWORD")
                client.login(smtp.user, password)
            refused = client.send_message(
                mime, from_addr=self._mail.sender, to_addrs=list(recipients)
            )
        if refused:
            log.warning(
                "mail_recipients_refused", refused=sorted(refused), step=STEP,
                subject=str(mime["Subject"]),
            )

    # -- Graph -------------------------------------------------------------------------------
    async def _send_graph(self, message: Mail, recipients: Sequence[str]) -> None:
        from shared.graph.client import GraphRefusal, graph_client_for

        sender = self._mail.sender
        what = f"sending '{one_line(message.subject)}' via Graph as {sender}"
        content = json.dumps(graph_message(message, recipients)).encode()
        if len(content) > GRAPH_REQUEST_LIMIT:
            raise PermanentError(
                f"{what}: the message is {len(content) // 1024} KB, over Graph's 4 MB request "
                "limit for sendMail",
                step=STEP,
                fix="use MAIL_TRANSPORT=smtp for mails with large attachments, or shorten the log",
            )
        chosen = self._settings
        graph = graph_client_for(chosen.graph, chosen.identity, chosen.ca_bundle)
        try:
            await graph.send_mail(sender, content, action="send mail")
        except GraphRefusal as exc:
            raise PermanentError(f"{what}: {exc.reason}", step=STEP,
                                 fix=_graph_fix(exc.status, exc.code)) from None
        except TransientError as exc:
            raise TransientError(f"{what}: {exc.reason}", step=STEP, fix=exc.fix,
                                 retry_after=exc.retry_after) from None
        except PermanentError as exc:  # Graph's certificate is not trusted
            raise PermanentError(f"{what}: {exc.reason}", step=STEP, fix=exc.fix) from None


def _smtp_reply(exc: smtplib.SMTPResponseException) -> str:
    text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else ""
    return f"{exc.smtp_code} {one_line(text, 120)}".strip()


def _graph_fix(status: int, code: str) -> str:
    """What an administrator does about Graph refusing a mail (``shared.graph.client.classify``
    decided it is no passing failure)."""
    fixes = {
        400: "correct MAIL_TO (every recipient must be a valid address)"
        if code == "ErrorInvalidRecipients"
        else "report this as a bug: the service built a request Graph does not accept",
        401: "check AZURE_CREDENTIAL: Graph did not accept the app's token",
        403: "grant the app the Mail.Send application permission (with admin consent), and "
        "include MAIL_SENDER in its application access policy if one is set",
        404: "set MAIL_SENDER to a mailbox that exists in Exchange Online",
        413: "use MAIL_TRANSPORT=smtp for mails with large attachments",
    }
    return fixes.get(status, "check MAIL_SENDER, MAIL_TO and the app's Mail.Send permission")
