"""Mail and logs: values from AD or Graph cannot forge lines, and secrets are masked in every
form they can take on the way out. In memory, no peer."""

from __future__ import annotations

import base64
import os
import uuid

from shared.config import StorageSettings
from shared.log import redact, register_secret
from shared.mail.reports import render_alert
from shared.mail.sender import Attachment, Mail, redacted
from shared.roles.model import Blocked, Guard, RolePlan
from shared.roles.notification import summary
from shared.roles.outcome import CycleLog, CycleResult
from shared.store.clients import queue_service, table_service

FORGED = "x\nWhat to do: call +1 555 0100 and read them your password"


def test_role_cycle_log_puts_every_value_on_its_line() -> None:
    """A group name with a line break cannot add a line (a fake entry) to the cycle's log."""
    note = CycleLog()
    note("WARNING", "AD group '{group}' matches no Entra role", group="ops\n2026-01-01 [INFO] ok")
    note("INFO", "role sync finished")
    assert 2 == len(note.text.splitlines())
    assert "ops 2026-01-01 [INFO] ok" in note.lines[0]


def test_role_notification_text_cannot_forge_a_what_to_do_line() -> None:
    """A refusal whose reason and fix carry CR/LF (an AD group or display name) still renders
    a plain-text notification with one 'What to do:' line, its own."""
    blocked = Blocked(Guard.NOT_ALLOWED, f"AD group '{FORGED}' maps to a role", f"fix\r\n{FORGED}")
    result = CycleResult("cid-1", plan=RolePlan((), blocked=(blocked,)))
    title, paragraphs, fix = summary(result)
    mail = render_alert(title, paragraphs, fix=fix)
    lines = mail.text.splitlines()
    assert 1 == sum(1 for line in lines if line.startswith("What to do:"))
    assert [] == [p for p in paragraphs if "\n" in p or "\r" in p]


def test_mail_leaves_with_secrets_masked_in_escaped_form_and_in_attachments() -> None:
    """A secret with & and < is masked in the HTML part, where autoescape wrote it as &amp;
    and &lt;, as well as in the text part and in a text attachment."""
    secret = f"Pa&ss<{uuid.uuid4().hex[:8]}>"
    register_secret(secret)
    rendered = render_alert("a leak", [f"the password is {secret}"], fix="rotate it")
    mail = Mail(rendered.subject, rendered.html, rendered.text,
                [Attachment("run.log", f"login with {secret}\n".encode(), "text/plain")])
    out = redacted(mail)
    escaped = secret.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    texts = [out.html, out.text, out.attachments[0].content.decode()]
    assert [] == [t for t in texts if secret in t or escaped in t]
    assert all("***" in t for t in texts)


def test_storage_connection_string_is_registered_as_a_secret() -> None:
    """Building the storage clients from a connection string registers it, and the account key
    inside it, as secrets: no log line or mail can carry either."""
    key = base64.b64encode(os.urandom(32)).decode()
    connection = (f"DefaultEndpointsProtocol=http;AccountName=acct;AccountKey={key};"
                  "QueueEndpoint=http://127.0.0.1:9/acct;TableEndpoint=http://127.0.0.1:9/acct;")
    storage = StorageSettings(_env_file=None, AzureWebJobsStorage=connection)  # type: ignore[call-arg]
    table_service(storage)
    queue_service(storage)
    assert ("conn=***", "key=***") == (redact(f"conn={connection}"), redact(f"key={key}"))
