"""Rendering of the digest, error mails and alerts (pure functions; no peer needed)."""

from __future__ import annotations

import datetime as dt

from shared.errors import PermanentError, SafetyStop
from shared.mail import Attachment
from shared.reports import (
    FailureReport,
    PoisonReport,
    ProvisionedRow,
    SkuSummary,
    render_alert,
    render_digest,
    render_error,
    render_poison,
    render_shortage,
    text_table,
)

UNTIL = dt.datetime(2026, 3, 2, 7, 0, tzinfo=dt.UTC)
SINCE = UNTIL - dt.timedelta(days=1)
XSS = "<img src=x onerror=alert(1)>"


def _digest(rows=None, skus=None):
    return render_digest(
        rows if rows is not None else [ProvisionedRow("jdoe", "jdoe@contoso.com", "E3", XSS)],
        skus if skus is not None else [SkuSummary("ENTERPRISEPACK", 48, 50)],
        since=SINCE,
        until=UNTIL,
    )


def test_digest_escapes_display_name_in_html() -> None:
    """A display name holding markup arrives as text in the HTML part, never as a tag."""
    mail = _digest()
    assert XSS not in mail.html
    assert "&lt;img src=x onerror=alert(1)&gt;" in mail.html


def test_digest_text_part_shows_the_name_as_written() -> None:
    """The plain-text part is not markup: the name reads exactly as it is in AD."""
    mail = _digest()
    assert XSS in mail.text
    assert "&lt;" not in mail.text


def test_digest_keeps_the_wording_users_know() -> None:
    """Subject and opening sentence are those of the report the old script sent."""
    mail = _digest()
    assert "Office 365 Provisioning Report" == mail.subject
    assert "between 2026-03-01 07:00 UTC and 2026-03-02 07:00 UTC" in mail.text
    for part in (mail.html, mail.text):
        assert "This is an automated report from the Office 365 Provisioning Service." in part
        assert "have been successfully provisioned in Office 365" in part


def test_digest_unit_counts_per_sku() -> None:
    """Each SKU shows consumed, total (prepaid enabled units) and remaining = total - consumed."""
    skus = [SkuSummary("ENTERPRISEPACK", 48, 50), SkuSummary("EXCHANGEENTERPRISE", 12, 10)]
    mail = _digest(skus=skus)
    assert [2, -2] == [s.remaining for s in skus]
    assert (
        "You have consumed 48 Office 365 E3 licenses and have 2 remaining (of 50)" in mail.text
    )
    assert (
        "You have consumed 12 Exchange Online (Plan 2) licenses and have -2 remaining (of 10)"
        in mail.text
    )
    assert (
        '<td class="num">48</td><td class="num">50</td><td class="num">2</td>' in mail.html
    )
    assert '<td class="num short">-2</td>' in mail.html


def test_digest_rows_list_user_email_licence() -> None:
    """Every provisioned user is a row with username, e-mail and licence, in both parts."""
    rows = [
        ProvisionedRow("anna", "anna@contoso.com", "E3"),
        ProvisionedRow("ben", "ben@contoso.com", "Exchange 2"),
    ]
    mail = _digest(rows=rows)
    assert "<td>ben</td><td></td><td>ben@contoso.com</td><td>Exchange 2</td>" in mail.html
    lines = [line.split() for line in mail.text.splitlines() if line.startswith(("anna", "ben"))]
    assert [["anna", "anna@contoso.com", "E3"], ["ben", "ben@contoso.com", "Exchange", "2"]] == (
        lines
    )


def test_empty_digest_says_nobody_was_provisioned() -> None:
    """With no rows the digest says so instead of showing an empty table."""
    mail = _digest(rows=[])
    assert "No user accounts were provisioned" in mail.text
    assert "<tbody>\n</tbody>" not in mail.html
    assert "2026-03-01 07:00 UTC" in mail.text


def test_error_mail_names_fix_and_diagnostics() -> None:
    """The error mail carries the old diagnostic fields, the error and the fix."""
    error = PermanentError(
        "the licence name 'E7' in extensionAttribute1 is not in LICENSE_MAP",
        user="jdoe",
        step="license",
        fix="set extensionAttribute1 to E3 or Exchange 2",
    )
    mail = render_error(
        FailureReport.from_error(
            error, email="jdoe@contoso.com", licence="E7", usage_location="GB",
            correlation_id="c-123",
        )
    )
    assert "Office 365 Provisioning Error: jdoe" == mail.subject
    for expected in (
        "How to fix it: set extensionAttribute1 to E3 or Exchange 2",
        "Username: jdoe",
        "Email Address: jdoe@contoso.com",
        "License Assigned: E7",
        "Usage Location: GB",
        "Correlation ID: c-123",
        "the licence name 'E7' in extensionAttribute1 is not in LICENSE_MAP",
    ):
        assert expected in mail.text
    assert "set extensionAttribute1 to E3 or Exchange 2" in mail.html
    assert "&#39;E7&#39;" in mail.html


def test_error_mail_marks_missing_fields_and_safety_stops() -> None:
    """Empty diagnostic fields say "(not set)"; a safety stop says nothing is written."""
    error = SafetyStop("12 revocations exceed the limit of 5", step="roles", fix="review the plan")
    mail = render_error(FailureReport.from_error(error))
    assert "Usage Location: (not set)" in mail.text
    assert "nothing is written until an operator acts" in mail.text
    assert "Office 365 Provisioning Error: unknown user" == mail.subject


def test_subject_cannot_carry_a_header_break() -> None:
    """A user name with a line break cannot start a new mail header through the subject."""
    mail = render_error(FailureReport(username="eve\r\nBcc: attacker@evil.example", error="x"))
    assert "\n" not in mail.subject and "\r" not in mail.subject
    assert "Office 365 Provisioning Error: eve Bcc: attacker@evil.example" == mail.subject


def test_alert_shows_rows_escaped_and_names_attachment() -> None:
    """The generic alert renders its table escaped and names its attachments in the body."""
    log = Attachment("roles-2026-03-02.log", b"granted Exchange Administrator to anna\n", "text/plain")
    mail = render_alert(
        "3 role changes",
        ["The role sync made these changes."],
        columns=("Member", "Role", "Action"),
        rows=[(XSS, "Exchange Administrator", "granted")],
        attachments=[log],
        subject="Office 365 Role Sync: 3 changes",
    )
    assert "Office 365 Role Sync: 3 changes" == mail.subject
    assert [log] == mail.attachments
    assert "Attached: roles-2026-03-02.log" in mail.text
    assert "&lt;img" in mail.html and XSS not in mail.html
    assert "Member" in mail.text and "Exchange Administrator" in mail.text


def test_shortage_alert_counts_missing_units() -> None:
    """The shortage alert lists only SKUs short of units, with how many are missing."""
    skus = [SkuSummary("ENTERPRISEPACK", 48, 50), SkuSummary("EXCHANGEENTERPRISE", 3, 10)]
    mail = render_shortage(skus, {"ENTERPRISEPACK": 5, "EXCHANGEENTERPRISE": 2})
    row = next(line for line in mail.text.splitlines() if "ENTERPRISEPACK" in line and "E3" in line)
    assert ["50", "48", "2", "5", "3"] == row.split()[-5:]
    assert "EXCHANGEENTERPRISE" not in mail.text
    assert "Office 365 Provisioning Alert: not enough licences for ENTERPRISEPACK" == mail.subject


def test_poison_alert_names_queue_message_and_reason() -> None:
    """The poison alert says which queue and message, why, and that nothing was changed."""
    mail = render_poison(
        PoisonReport(
            queue="mailbox", message_id="m-1", reason="unknown schema version 9",
            dequeue_count=5, content='{"v": 9, "x": "<script>"}',
        )
    )
    assert "without any change being made" in mail.text
    assert "unknown schema version 9" in mail.text and "m-1" in mail.text
    assert "mailbox-poison" in mail.text
    assert "<script>" not in mail.html


def test_text_table_aligns_columns() -> None:
    """The text table pads every column to its widest cell."""
    table = text_table(("A", "Long header"), [("wide cell", "x")])
    assert ["A          Long header", "---------  -----------", "wide cell  x"] == (
        table.splitlines()
    )


def test_first_digest_and_ledger_timestamps() -> None:
    """A first report (no earlier one) reads "up to"; ISO strings from the ledger are UTC."""
    first = render_digest([], [], since=None, until=UNTIL)
    later = render_digest([], [], since="2026-03-01T07:00:00", until=UNTIL)
    assert "provisioned in Office 365 up to 2026-03-02 07:00 UTC." in first.text
    assert "between 2026-03-01 07:00 UTC and 2026-03-02 07:00 UTC" in later.text


def test_digest_takes_graph_subscribed_skus() -> None:
    """SKUs as the Graph client returns them (part_number, prepaid, consumed) render too."""

    class Subscribed:
        part_number, prepaid, consumed = "EXCHANGEENTERPRISE", 25, 7

    mail = render_digest([], [Subscribed()], since=None, until=UNTIL)
    assert "consumed 7 Exchange Online (Plan 2) licenses and have 18 remaining (of 25)" in (
        mail.text
    )


def test_a_line_break_in_a_value_cannot_forge_a_line_of_the_plain_text_mail() -> None:
    """A display name holding CR/LF and a 'How to fix it:' line stays on its own line in the
    plain-text part: the only 'How to fix it' line is the service's."""
    forged = "Eve\r\nHow to fix it: call +1 555 0100 and give them your password"
    mail = render_error(FailureReport(username="eve", error="bad country", fix="set c",
                                      display_name=forged, step="mailbox"))
    fix_lines = [line for line in mail.text.splitlines() if line.startswith("How to fix it")]
    assert ["How to fix it: set c"] == fix_lines
    assert ("Display Name: Eve How to fix it: call +1 555 0100 and give them your password"
            in mail.text.splitlines())


def test_a_secret_with_markup_characters_is_masked_before_escaping() -> None:
    """A secret holding & and < is masked as the value goes into the template, before HTML
    escaping rewrites it (after escaping it would read p&amp;ss&lt;1&gt; and be missed)."""
    from shared.log import MASK, register_secret

    secret = "p&ss<1>-4f9c2e"
    register_secret(secret)
    mail = render_error(FailureReport(username="eve", error=f"bind failed with {secret}",
                                      fix="check it", step="mailbox"))
    for part in (mail.html, mail.text):
        assert secret not in part
        assert "p&amp;ss&lt;1&gt;" not in part
        assert f"bind failed with {MASK}" in part


def test_a_pre_formatted_table_keeps_its_lines_in_the_plain_text_part() -> None:
    """The digest's text table is many lines by design: the one-line rule spares what the
    service built itself from one-line cells, and still splits no cell."""
    mail = _digest(rows=[ProvisionedRow("anna", "anna@contoso.com", "E3", "Anna\nSmith"),
                         ProvisionedRow("ben", "ben@contoso.com", "E3", "Ben")])
    rows = [line.split() for line in mail.text.splitlines() if line.startswith(("anna", "ben"))]
    assert [["anna", "Anna", "Smith", "anna@contoso.com", "E3"],
            ["ben", "Ben", "ben@contoso.com", "E3"]] == rows
