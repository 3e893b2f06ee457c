"""The digest the report timer mails through the lab's SMTP server holds the leavers section
when leaver outcomes are in the ledger: the mailbox converted, the licence returned, the one
kept and why, and the month's reclaimed units with their cost (``LICENSE_PRICES``).

The outcomes are written as the leaver step writes them (``outcome_row`` in the user's
partition of the ledger table) and read back by the real ``report`` through the real
``Outcomes``; the mail is the one the lab's SMTP server kept."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import re
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from email.message import EmailMessage
from pathlib import Path

import pytest

from lab.core import Lab
from shared import flow
from shared.config import Settings
from shared.flow import timers
from shared.leavers.report import MONTHS
from shared.store.clients import table_service
from shared.store.ledger import LEDGER, now
from shared.store.records import outcome_row

pytestmark = pytest.mark.lab


@pytest.fixture
def svc(settings: Settings) -> Iterator[flow.Service]:
    """The service with prices for two SKUs, mailing through the lab's SMTP server."""
    leavers = settings.leavers.model_copy(
        update={"license_prices": "ENTERPRISEPACK=23.00,EXCHANGEENTERPRISE=8.00 EUR"})
    mail = settings.mail.model_copy(update={"transport": "smtp"})
    service = flow.Service.build(dataclasses.replace(settings, leavers=leavers, mail=mail))
    yield service
    service.close()


def _part(message: EmailMessage, kind: str) -> str:
    body = message.get_body(preferencelist=(kind,))
    assert body is not None, kind
    return str(body.get_content())


def _digests(lab: Lab, since: float, marker: str) -> list[EmailMessage]:
    found = []
    for path in sorted(Path(lab.settings["LAB_MAIL_DIR"]).glob("*.eml")):
        if path.stat().st_mtime < since:
            continue
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        if (message["Subject"] == "Office 365 Provisioning Report"
                and marker in _part(message, "plain")):
            found.append(message)
    return found


def test_the_digest_mail_holds_the_leavers_section(lab: Lab, settings: Settings,
                                                    svc: flow.Service) -> None:
    """Two leavers since the last digest: one converted and unlicensed (E3 and Exchange
    Plan 2), one kept licensed for its size. The digest the SMTP server received lists both,
    the reason, and this month's reclaimed units with their cost in euros."""
    tag = uuid.uuid4().hex[:8]
    left, big = f"left{tag}", f"big{tag}"
    # Only what is recorded from here on is new to this digest.
    svc.cursors.put(timers.REPORT_CURSOR, now().isoformat().encode())
    ledger = table_service(settings.storage).get_table_client(LEDGER)
    one, two = str(uuid.uuid4()), str(uuid.uuid4())
    for user, kind, fields in (
        (one, "leaver_converted", {"name": left, "upn": f"{left}@contoso.com", "hidden": 1}),
        (one, "leaver_unlicensed", {"name": left, "upn": f"{left}@contoso.com",
                                    "skus": "ENTERPRISEPACK,EXCHANGEENTERPRISE", "units": 2}),
        (two, "leaver_converted", {"name": big, "upn": f"{big}@contoso.com", "hidden": 0}),
        (two, "leaver_kept", {"name": big, "upn": f"{big}@contoso.com",
                              "skus": "ENTERPRISEPACK", "reason": "size 61.2 GB > 50 GB"}),
    ):
        ledger.create_entity(outcome_row(user, kind, fields))
    started = time.time() - 1
    asyncio.run(timers.report(svc))
    found = _digests(lab, started, left)
    assert 1 == len(found)
    text, html = _part(found[0], "plain"), _part(found[0], "html")
    month = f"{MONTHS[now().month - 1]} {now().year}"
    for part in (text, html):
        for words in ("Mailboxes converted to shared", f"{left}@contoso.com",
                      "hidden from the address lists", "Licences returned",
                      "ENTERPRISEPACK, EXCHANGEENTERPRISE", "Licences kept, and why",
                      f"{big}@contoso.com", f"Licences reclaimed in {month}"):
            assert words in part, words
    assert "size 61.2 GB > 50 GB" in text
    assert "size 61.2 GB &gt; 50 GB" in html
    # The month may hold other leavers of this lab: each SKU's cost is its units times its price.
    for sku, price in (("ENTERPRISEPACK", Decimal("23.00")), ("EXCHANGEENTERPRISE",
                                                             Decimal("8.00"))):
        row = re.search(rf"{sku}\s+(\d+)\s+([\d.]+) EUR\r?\n", text)
        assert row is not None, sku
        assert int(row[1]) >= 1
        assert price * int(row[1]) == Decimal(row[2])
    assert "Total: " in text
