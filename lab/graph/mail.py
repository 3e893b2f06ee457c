"""Graph ``sendMail`` on the lab: ``POST /v1.0/users/{id|upn}/sendMail``.

Each accepted message becomes one ``.eml`` file in ``LAB_MAIL_DIR`` (beside those the lab SMTP
server keeps), built as Exchange Online would send it: an HTML body goes out as
``multipart/alternative`` with a plain-text part Exchange derives from the HTML, and
``fileAttachment`` items become MIME attachments. The envelope recipients (To, Cc, Bcc) are
listed in ``X-Lab-Envelope-To``.

What it checks, with Graph's answers:

- the sender must exist (``404 ErrorInvalidUser``) and have an Exchange Online mailbox
  (``404 MailboxNotEnabledForRESTAPI``): a user with an enabled Exchange plan, or a shared
  mailbox: ``MAIL_SENDER`` is one from the start, more come from ``POST /_lab/mail/mailboxes``;
- a JSON body with a ``message`` (``400 ErrorInvalidRequest``), a body ``contentType`` of
  ``text`` or ``html`` (``400 RequestBodyRead``), at least one recipient and only valid
  addresses (``400 ErrorInvalidRecipients``), well-formed ``fileAttachment`` items
  (``400 ErrorInvalidRequest``);
- the whole request at most 4 MB (``413 RequestEntityTooLarge``);
- Exchange Online's sending limit of 30 messages a minute per mailbox
  (``429 ApplicationThrottled`` with ``Retry-After``), a knob: ``LAB_GRAPH_MAIL_PER_MINUTE``.

Not implemented: itemAttachment/referenceAttachment, ``saveToSentItems`` (accepted, ignored),
MIME (base64 ``text/plain``) request bodies.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import html
import json
import re
import time
from collections import deque
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path

from lab.mail import write_eml

from .server import JSON, Graph, GraphError, Reply, Request, control, route

REQUEST_LIMIT = 4 * 1024 * 1024
WINDOW_SECONDS = 60.0
_ADDRESS = re.compile(r"^[^@\s<>(),;:\"]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


class _State:
    """Shared mailboxes and the per-mailbox send times (one event loop, so no locks)."""

    def __init__(self) -> None:
        self.shared: set[str] = set()
        self.sent: dict[str, deque[float]] = {}
        self.seeded = False


STATE = _State()


def _state(graph: Graph) -> _State:
    if not STATE.seeded:
        sender = graph.settings.get("MAIL_SENDER", "")
        if sender:
            STATE.shared.add(sender.lower())
        STATE.seeded = True
    return STATE


def _mailbox_address(graph: Graph, key: str) -> str:
    """The sender's primary SMTP address, or Graph's 404 when it has no mailbox."""
    state = _state(graph)
    if key.lower() in state.shared:
        return key.lower()
    user = graph.tenant.find(key)
    if user is None:
        raise GraphError(404, "ErrorInvalidUser", f"The requested user '{key}' is invalid.")
    has_exchange = any(
        str(plan.get("service", "")).upper().startswith("EXCHANGE_S")
        and plan.get("capabilityStatus") == "Enabled"
        for plan in user.get("assignedPlans", [])
    )
    if not has_exchange:
        raise GraphError(
            404, "MailboxNotEnabledForRESTAPI",
            "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
        )
    return str(user.get("mail") or user["userPrincipalName"])


def _recipients(message: JSON, field: str) -> list[str]:
    items = message.get(field) or []
    if not isinstance(items, list):
        raise GraphError(400, "ErrorInvalidRequest", f"The property '{field}' must be a list.")
    addresses = []
    for item in items:
        address = ""
        if isinstance(item, dict) and isinstance(item.get("emailAddress"), dict):
            address = str(item["emailAddress"].get("address") or "")
        if not _ADDRESS.match(address):
            raise GraphError(
                400, "ErrorInvalidRecipients",
                f"At least one recipient is not valid., Recipient '{address}' is not resolved. "
                "All recipients must be resolved before a message can be submitted.",
            )
        addresses.append(address)
    return addresses


def _attachments(message: JSON) -> list[tuple[str, str, bytes]]:
    items = message.get("attachments") or []
    if not isinstance(items, list):
        raise GraphError(400, "ErrorInvalidRequest", "The property 'attachments' must be a list.")
    result = []
    for item in items:
        kind = item.get("@odata.type") if isinstance(item, dict) else None
        if not isinstance(item, dict) or kind != "#microsoft.graph.fileAttachment":
            raise GraphError(
                400, "ErrorInvalidRequest",
                "The lab accepts only attachments of type #microsoft.graph.fileAttachment.",
            )
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise GraphError(400, "ErrorInvalidRequest", "The attachment's 'name' is missing.")
        try:
            content = base64.b64decode(str(item.get("contentBytes") or ""), validate=True)
        except (binascii.Error, ValueError):
            raise GraphError(
                400, "ErrorInvalidRequest", "The attachment's 'contentBytes' is not base64."
            ) from None
        result.append((name, str(item.get("contentType") or "application/octet-stream"), content))
    return result


class _Text(HTMLParser):
    """HTML to readable text, roughly as Exchange derives a text part from an HTML body."""

    BREAKS = frozenset({"p", "br", "tr", "div", "li", "h1", "h2", "h3", "table", "ul"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "script", "head"):
            self.skip += 1
        elif tag in self.BREAKS:
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append("\t")
        if tag == "li":
            self.parts.append("- ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "head"):
            self.skip = max(0, self.skip - 1)
        elif tag in ("p", "table", "ul"):
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(markup: str) -> str:
    parser = _Text()
    parser.feed(markup)
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    text = "\n".join(lines)
    return html.unescape(re.sub(r"\n{3,}", "\n\n", text)).strip() + "\n"


def _throttle(graph: Graph, sender: str) -> None:
    limit = int(graph.settings.get("LAB_GRAPH_MAIL_PER_MINUTE") or 30)
    sent = _state(graph).sent.setdefault(sender, deque())
    now = time.monotonic()
    while sent and now - sent[0] > WINDOW_SECONDS:
        sent.popleft()
    if len(sent) >= limit:
        wait = WINDOW_SECONDS - (now - sent[0])
        raise GraphError(
            429, "ApplicationThrottled",
            "Message submission rate for this mailbox has exceeded the configured limit.",
            {"Retry-After": str(max(1, int(wait + 0.999)))},
        )
    sent.append(now)


def _mail_dir(graph: Graph) -> Path:
    folder = graph.settings.get("LAB_MAIL_DIR")
    if folder:
        return Path(folder)
    return Path(graph.settings.get("LAB_DIR", ".lab")) / "mail"


@route("POST", "users/{id}/sendMail", ru=1, throttled=False)
async def send_mail(graph: Graph, request: Request) -> Reply:
    """Accept a message for delivery: 202 and an ``.eml`` in ``LAB_MAIL_DIR``."""
    sender = _mailbox_address(graph, request.params["id"])
    body = request.body
    if body is None:
        raise GraphError(400, "BadRequest", "Empty Payload. JSON content expected.")
    if len(json.dumps(body).encode()) > REQUEST_LIMIT:
        raise GraphError(
            413, "RequestEntityTooLarge", "The maximum request length supported is 4MB."
        )
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, dict):
        raise GraphError(
            400, "ErrorInvalidRequest", "The value of the parameter 'Message' is empty."
        )
    content = message.get("body") or {}
    if not isinstance(content, dict):
        raise GraphError(400, "RequestBodyRead", "The property 'body' must be an itemBody.")
    content_type = str(content.get("contentType") or "text").lower()
    if content_type not in ("text", "html"):
        raise GraphError(
            400, "RequestBodyRead",
            f"The value '{content_type}' is not valid for the property 'contentType'.",
        )
    to, cc, bcc = (_recipients(message, f) for f in ("toRecipients", "ccRecipients",
                                                      "bccRecipients"))
    if not (to or cc or bcc):
        raise GraphError(
            400, "ErrorInvalidRecipients",
            "At least one recipient is not valid., A message can't be sent because it contains "
            "no recipients.",
        )
    attachments = _attachments(message)
    _throttle(graph, sender)

    mime = EmailMessage()
    mime["Subject"] = " ".join(str(message.get("subject") or "").split())
    mime["From"] = sender
    if to:
        mime["To"] = ", ".join(to)
    if cc:
        mime["Cc"] = ", ".join(cc)
    mime["Date"] = email.utils.formatdate(usegmt=True)
    mime["Message-ID"] = email.utils.make_msgid(domain=sender.rpartition("@")[2])
    text = str(content.get("content") or "")
    if content_type == "html":
        mime.set_content(html_to_text(text))
        mime.add_alternative(text, subtype="html")
    else:
        mime.set_content(text)
    for name, mime_type, data in attachments:
        maintype, _, subtype = mime_type.partition("/")
        mime.add_attachment(
            data, maintype=maintype or "application", subtype=subtype or "octet-stream",
            filename=name,
        )
    trace = (
        f"Return-Path: <{sender}>\r\nX-Lab-Envelope-To: {', '.join(to + cc + bcc)}\r\n"
        f"X-Lab-Transport: graph\r\n"
    )
    write_eml(_mail_dir(graph), trace.encode() + mime.as_bytes(), prefix="graph")
    return Reply(202, None)


@control("POST", "mail/mailboxes")
async def add_mailboxes(graph: Graph, body: JSON) -> JSON:
    """``{"addresses": [...]}``: shared mailboxes that may send (they need no licence)."""
    state = _state(graph)
    for address in body["addresses"]:
        state.shared.add(str(address).lower())
    return {"shared": sorted(state.shared)}


@control("POST", "mail/reset")
async def reset(graph: Graph, body: JSON) -> JSON:
    """Forget the per-mailbox send counts (the 30-a-minute window)."""
    _state(graph).sent.clear()
    return {"ok": True}
