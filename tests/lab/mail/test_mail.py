"""Sending mail through the lab's SMTP server and its Graph sendMail endpoint."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import socket
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest
from azure.keyvault.secrets import SecretClient
from pydantic import SecretStr

from lab.core import Lab, free_port
from shared.config import (
    GraphSettings,
    IdentitySettings,
    KeyVaultSettings,
    MailSettings,
    ServiceSettings,
    SmtpSettings,
)
from shared.errors import ConfigError, PermanentError, TransientError
from shared.graph.client import graph_client_for
from shared.identity import ca_file, credential
from shared.log import register_secret
from shared.mail.reports import (
    FailureReport,
    ProvisionedRow,
    SkuSummary,
    render_digest,
    render_error,
)
from shared.mail.sender import Attachment, Mail, Mailer, MailerSettings, graph_message, to_mime
from shared.secrets import SecretProvider

UNTIL = dt.datetime(2026, 3, 2, 7, 0, tzinfo=dt.UTC)
LOG = Attachment("provisioning.log", b"2026-03-02 anna licensed E3\n", "text/plain")


def _mailer(lab: Lab, transport: str, *, ca: bool = True, smtp: dict | None = None,
            mail: dict | None = None) -> Mailer:
    env = lab.settings_file
    identity = IdentitySettings(_env_file=env)
    service = ServiceSettings(_env_file=env)
    secrets = SecretProvider(identity, KeyVaultSettings(_env_file=env), ca_bundle=service.ca_bundle)
    chosen = MailerSettings(
        MailSettings(_env_file=env).model_copy(update={"transport": transport, **(mail or {})}),
        SmtpSettings(_env_file=env).model_copy(update=smtp or {}),
        GraphSettings(_env_file=env),
        identity,
        service.ca_bundle if ca else None,
    )
    return Mailer(chosen, secrets)


def _digest(to: str) -> Mail:
    mail = render_digest(
        [ProvisionedRow("anna", "anna@contoso.com", "E3", "Anna Müller")],
        [SkuSummary("ENTERPRISEPACK", 3, 25)],
        since=UNTIL - dt.timedelta(days=1),
        until=UNTIL,
    )
    return Mail(mail.subject, mail.html, mail.text, [LOG], to=(to,))


def _received(lab: Lab, recipient: str) -> EmailMessage:
    """The one message in LAB_MAIL_DIR addressed to ``recipient``."""
    folder = Path(lab.settings["LAB_MAIL_DIR"])
    found = []
    for path in sorted(folder.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if recipient in str(message.get("X-Lab-Envelope-To", "")):
            found.append(message)
    assert 1 == len(found), f"expected one message to {recipient}, found {len(found)}"
    message = found[0]
    assert isinstance(message, EmailMessage)
    return message


def _unique() -> str:
    return f"admins+{uuid.uuid4().hex[:10]}@contoso.example"


def _assert_digest_parts(message: EmailMessage) -> None:
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    assert "You have consumed 3 Office 365 E3 licenses and have 22 remaining" in text.get_content()
    assert "<td>anna@contoso.com</td>" in html.get_content()
    attachments = [(a.get_filename(), a.get_content()) for a in message.iter_attachments()]
    assert [("provisioning.log", "2026-03-02 anna licensed E3\n")] == attachments


# -- MIME and Graph shapes, no peer --------------------------------------------------------------
def test_mime_has_text_and_html_alternatives_and_attachment() -> None:
    """SMTP mail is multipart/mixed holding multipart/alternative (text, HTML) and the file."""
    mime = to_mime(
        Mail("s", "<p>h</p>", "t", [LOG]), sender="from@contoso.example", recipients=["a@b.example"]
    )
    assert "multipart/mixed" == mime.get_content_type()
    parts = [p.get_content_type() for p in mime.walk()]
    expected = ["multipart/mixed", "multipart/alternative", "text/plain", "text/html",
                "text/plain"]
    assert expected == (
        parts
    )
    assert "auto-generated" == mime["Auto-Submitted"]


def test_graph_body_is_html_with_file_attachments() -> None:
    """Graph's sendMail body: HTML content, recipients, base64 fileAttachment, no sent copy."""
    body = graph_message(Mail("s", "<p>h</p>", "t", [LOG]), ["a@b.example"])
    message = body["message"]
    assert {"contentType": "HTML", "content": "<p>h</p>"} == message["body"]
    assert [{"emailAddress": {"address": "a@b.example"}}] == message["toRecipients"]
    assert "#microsoft.graph.fileAttachment" == message["attachments"][0]["@odata.type"]
    assert "MjAyNi0wMy0wMiBhbm5hIGxpY2Vuc2VkIEUzCg==" == message["attachments"][0]["contentBytes"]
    assert body["saveToSentItems"] is False


def test_smtp_auth_without_tls_is_refused_at_start() -> None:
    """A mailer that would send SMTP_PASSWORD in clear refuses to be built, naming the setting."""
    with pytest.raises(ConfigError) as caught:
        Mailer(
            MailerSettings(
                MailSettings(transport="smtp", sender="a@b.example", to="c@d.example"),
                SmtpSettings(host="smtp.example", port=587, starttls=False, user="svc"),
                GraphSettings(),
                IdentitySettings(),
            ),
            SecretProvider(IdentitySettings(), KeyVaultSettings()),
        )
    assert "SMTP_STARTTLS" == caught.value.setting


# -- against the lab -----------------------------------------------------------------------------
@pytest.mark.lab
def test_digest_through_smtp_lands_as_eml(lab: Lab) -> None:
    """A digest sent over SMTP (STARTTLS, AUTH with the vault's password) is kept as one .eml
    with text and HTML parts and the attachment."""
    to = _unique()
    asyncio.run(_mailer(lab, "smtp").send(_digest(to)))
    message = _received(lab, to)
    assert "Office 365 Provisioning Report" == message["Subject"]
    _assert_digest_parts(message)


@pytest.mark.lab
def test_digest_through_graph_lands_as_eml(lab: Lab) -> None:
    """A digest sent with Graph sendMail is kept as one .eml with the text part Exchange derives,
    the HTML part and the attachment."""
    to = _unique()
    asyncio.run(_mailer(lab, "graph").send(_digest(to)))
    message = _received(lab, to)
    assert "graph" == message["X-Lab-Transport"]
    _assert_digest_parts(message)


@pytest.mark.lab
def test_graph_unknown_sender_is_permanent(lab: Lab) -> None:
    """A MAIL_SENDER without a mailbox is a permanent error whose fix names MAIL_SENDER."""
    nobody = f"nobody-{uuid.uuid4().hex[:6]}@contoso.example"
    mailer = _mailer(lab, "graph", mail={"sender": nobody})
    with pytest.raises(PermanentError) as caught:
        asyncio.run(mailer.send(_digest(_unique())))
    assert "404 ErrorInvalidUser" in caught.value.reason
    assert "MAIL_SENDER" in caught.value.fix


@pytest.mark.lab
def test_graph_invalid_recipient_is_permanent(lab: Lab) -> None:
    """Graph's ErrorInvalidRecipients becomes a permanent error that says to correct MAIL_TO."""
    with pytest.raises(PermanentError) as caught:
        asyncio.run(_mailer(lab, "graph").send(Mail("s", "<p>x</p>", "x", to=("not an address",))))
    assert "ErrorInvalidRecipients" in caught.value.reason
    assert "MAIL_TO" in caught.value.fix


@pytest.mark.lab
def test_smtp_rotated_password_is_read_again(lab: Lab) -> None:
    """When the server rejects the cached password, the mailer drops it, reads the vault again
    and succeeds: a password rotated in Key Vault needs no restart."""
    env = lab.settings_file
    identity, service = IdentitySettings(_env_file=env), ServiceSettings(_env_file=env)
    vault = SecretClient(
        lab.settings["KEY_VAULT_URL"], credential(identity),
        connection_verify=ca_file(service.ca_bundle), verify_challenge_resource=False,
    )
    real = vault.get_secret("smtp-password").value
    name = "smtp-rotating-" + uuid.uuid4().hex[:6]
    vault.set_secret(name, "stale-" + uuid.uuid4().hex)
    reference = SecretStr(
        f"@Microsoft.KeyVault(SecretUri={lab.settings['KEY_VAULT_URL']}/secrets/{name})"
    )
    mailer = _mailer(lab, "smtp", smtp={"password": reference})
    mailer._secrets.resolve(reference, setting="SMTP_PASSWORD")  # cache the stale value
    vault.set_secret(name, real)
    to = _unique()
    asyncio.run(mailer.send(_digest(to)))
    assert "Office 365 Provisioning Report" == _received(lab, to)["Subject"]


@pytest.mark.lab
def test_smtp_wrong_password_is_permanent(lab: Lab) -> None:
    """Credentials the server refuses twice are a permanent error naming SMTP_USER's account."""
    mailer = _mailer(lab, "smtp", smtp={"password": SecretStr("wrong-" + uuid.uuid4().hex)})
    with pytest.raises(PermanentError) as caught:
        asyncio.run(mailer.send(_digest(_unique())))
    assert lab.settings["SMTP_USER"] in caught.value.reason
    assert "SMTP_PASSWORD" in caught.value.fix


@pytest.mark.lab
def test_smtp_untrusted_certificate_is_permanent(lab: Lab) -> None:
    """Without the lab CA in CA_BUNDLE the STARTTLS certificate is refused, fix names CA_BUNDLE."""
    with pytest.raises(PermanentError) as caught:
        asyncio.run(_mailer(lab, "smtp", ca=False).send(_digest(_unique())))
    assert "CA_BUNDLE" in caught.value.fix


@pytest.mark.lab
def test_smtp_unreachable_is_transient(lab: Lab) -> None:
    """An SMTP server that does not answer is a transient error: the mail is tried again."""
    with pytest.raises(TransientError):
        asyncio.run(_mailer(lab, "smtp", smtp={"port": free_port(), "timeout_seconds": 2}).send(
            _digest(_unique())))


def test_smtp_send_leaves_the_event_loop_free() -> None:
    """An SMTP server that accepts the connection and never answers stalls only the send:
    the event loop keeps running other work until the SMTP timeout makes it a TransientError."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # the handshake completes in the backlog; no greeting ever comes
        mailer = Mailer(
            MailerSettings(
                MailSettings(transport="smtp", sender="a@b.example", to="c@d.example"),
                SmtpSettings(host="127.0.0.1", port=silent.getsockname()[1],
                             timeout_seconds=1.0),
                GraphSettings(),
                IdentitySettings(),
            ),
            SecretProvider(IdentitySettings(), KeyVaultSettings()),
        )

        async def both() -> tuple[int, BaseException | None]:
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                for _ in range(10):
                    await asyncio.sleep(0.05)
                    ticks += 1

            sent, _ = await asyncio.gather(mailer.send(Mail("s", "<p>h</p>", "t")), tick(),
                                           return_exceptions=True)
            return ticks, sent if isinstance(sent, BaseException) else None

        ticks, error = asyncio.run(both())
    assert (10, TransientError) == (ticks, type(error))


@pytest.mark.lab
def test_graph_mail_goes_through_the_service_graph_client(lab: Lab) -> None:
    """sendMail is one more request of the event loop's one Graph client (its pipeline,
    pacing and token), not a client of its own."""
    mailer = _mailer(lab, "graph")
    graph_settings = GraphSettings(_env_file=lab.settings_file)
    identity = IdentitySettings(_env_file=lab.settings_file)
    ca = ServiceSettings(_env_file=lab.settings_file).ca_bundle

    async def send() -> int:
        graph = graph_client_for(graph_settings, identity, ca)
        before = graph.counters.requests
        try:
            await mailer.send(_digest(_unique()))
            return graph.counters.requests - before
        finally:
            await graph.close()

    assert 1 == asyncio.run(send())


@pytest.mark.lab
def test_secret_with_html_characters_is_masked_in_the_delivered_mail(lab: Lab) -> None:
    """A secret containing & and < that reached a report is masked in both parts of the mail
    the SMTP server received: autoescape's &amp;/&lt; form does not slip past the mask."""
    secret = f"R&D<{uuid.uuid4().hex[:10]}>"
    register_secret(secret)
    to = _unique()
    failure = FailureReport(username="anna", error=f"login failed with {secret}", fix="rotate it")
    rendered = render_error(failure)
    asyncio.run(_mailer(lab, "smtp").send(
        Mail(rendered.subject, rendered.html, rendered.text, to=(to,))))
    raw = [p.get_content() for p in _received(lab, to).walk() if not p.is_multipart()]
    escaped = secret.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert [] == [part for part in raw if secret in part or escaped in part]
    assert 2 == sum("***" in part for part in raw)


@pytest.mark.lab
def test_attachments_are_redacted_before_they_leave(lab: Lab) -> None:
    """A secret inside an attached log file is masked in the attachment the server received."""
    secret = f"att-{uuid.uuid4().hex}"
    register_secret(secret)
    to = _unique()
    mail = Mail("log", "<p>see the log</p>", "see the log",
                [Attachment("cycle.log", f"2026-03-02 bind with {secret}\n".encode(),
                            "text/plain")],
                to=(to,))
    asyncio.run(_mailer(lab, "smtp").send(mail))
    attached = [a.get_content() for a in _received(lab, to).iter_attachments()]
    assert ["2026-03-02 bind with ***\n"] == attached
