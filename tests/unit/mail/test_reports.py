"""Rendering of the digest, error mails and alerts (pure functions; no peer needed)."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from shared.errors import PermanentError, ProvisioningError, SafetyStop, TransientError
from shared.mail.reports import (
    FailureReport,
    LeaverRow,
    LeaversSection,
    PoisonReport,
    ProvisionedRow,
    ReclaimedRow,
    SkuSummary,
    WaitingRow,
    render_alert,
    render_digest,
    render_error,
    render_poison,
    render_shortage,
    text_table,
)
from shared.mail.sender import Attachment

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
    log = Attachment("roles-2026-03-02.log", b"granted Exchange Administrator to anna\n",
                     "text/plain")
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
# -- the whole text of each mail: what the helpdesk and the operators read --------------------
def test_the_digest_reads_in_full() -> None:
    """The digest's text part, whole: the provisioned users, the users waiting with the step,
    status, since when (in UTC) and why, and the licence summary."""
    since_berlin = dt.datetime(2026, 3, 1, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    mail = render_digest(
        [ProvisionedRow("anna", "anna@contoso.com", "E3", "Anna Berg")],
        [SkuSummary("ENTERPRISEPACK", 48, 50)], since=SINCE, until=UNTIL,
        waiting=[WaitingRow("ben", "license", "stuck", "not synced", since_berlin),
                 WaitingRow("cy", "mailbox", "failed", "country XX")])
    assert (
        "Hello,\n\nThis is an automated report from the Office 365 Provisioning Service. The "
        "following user accounts have been successfully provisioned in Office 365 between "
        "2026-03-01 07:00 UTC and 2026-03-02 07:00 UTC:\n\n"
        "Username  Display Name  Email Address     License Assigned\n"
        "--------  ------------  ----------------  ----------------\n"
        "anna      Anna Berg     anna@contoso.com  E3\n\n"
        "Users waiting (the service cannot move these users on; each line says why):\n\n"
        "Username  Step     Status  Since                 Reason\n"
        "--------  -------  ------  --------------------  ----------\n"
        "ben       license  stuck   2026-03-01 07:30 UTC  not synced\n"
        "cy        mailbox  failed                        country XX\n\n"
        "License Summary:\n"
        "- You have consumed 48 Office 365 E3 licenses and have 2 remaining (of 50)\n\n"
        "Regards,\nProvisioning Service\n"
    ) == mail.text
    assert "<title>Office 365 Provisioning Report</title>" in mail.html
    assert "Sent by the Office 365 Provisioning Service on 2026-03-02 07:00 UTC." in mail.html
    assert ("<tr><td>ben</td><td>license</td><td class=\"error\">stuck</td>"
            "<td>2026-03-01 07:30 UTC</td><td>not synced</td></tr>") in mail.html


def test_report_times_are_utc_whatever_the_host_s_zone(monkeypatch) -> None:
    """A ledger time with an offset is converted, one without is taken as UTC, and the host's
    own time zone (WEBSITE_TIME_ZONE on Azure) changes neither."""
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        mail = render_digest([], [], since="2026-03-01T09:30:00+02:00", until=UNTIL)
        naive = render_digest([], [], since="2026-03-01T07:30:00", until=UNTIL)
    finally:
        monkeypatch.undo()
        time.tzset()
    for part in (mail.text, naive.text):
        assert "between 2026-03-01 07:30 UTC and 2026-03-02 07:00 UTC" in part


def test_an_error_mail_reads_in_full() -> None:
    """A transient failure's mail, whole: what was being done, the error, the fix, the old
    script's four diagnostic fields (empty ones marked), the optional ones that are set, and
    what the service does next."""
    error = TransientError("Exchange did not answer", user="ben", step="mailbox",
                           fix="check the relay")
    mail = render_error(FailureReport.from_error(
        error, email="ben@contoso.com", display_name="Ben Ng", correlation_id="c-1",
        when=UNTIL))
    assert (
        "Hello,\n\nThis is an automated report from the Office 365 Provisioning Service. The "
        "following error occurred when attempting to mail-enable users:\n\n"
        "Exchange did not answer\n\nHow to fix it: check the relay\n\n"
        "Additional Diagnostic Info:\nUsername: ben\nEmail Address: ben@contoso.com\n"
        "License Assigned: (not set)\nUsage Location: (not set)\nDisplay Name: Ben Ng\n"
        "Step: mailbox\nCorrelation ID: c-1\n\n"
        "The service kept retrying and gave up; it tries again once the cause is fixed.\n\n"
        "Regards,\nProvisioning Service\n"
    ) == mail.text
    assert "<title>Office 365 Provisioning Error: ben</title>" in mail.html
    assert "Sent by the Office 365 Provisioning Service on 2026-03-02 07:00 UTC." in mail.html


def test_each_kind_of_failure_says_what_happens_next_and_what_was_being_done() -> None:
    """Permanent, transient and safety stop each end with their own sentence; the opening
    names the step's work, and a step it does not know as provisioning users."""
    def mail(error: ProvisioningError):
        return render_error(FailureReport.from_error(error)).text

    texts = [mail(PermanentError("x", user="ann", step="license")),
             mail(TransientError("x", user="ann", step="roles")),
             mail(SafetyStop("x", user="ann", step="mailbox"))]
    assert [
        ("provision users in Office 365", "The user was left as they are; nothing more is "
         "tried for them until the cause is fixed."),
        ("provision users in Office 365", "The service kept retrying and gave up; it tries "
         "again once the cause is fixed."),
        ("mail-enable users", "A safety guard refused this change; nothing is written until "
         "an operator acts."),
    ] == [(t.split("attempting to ", 1)[1].split(":", 1)[0], t.split("\n\n")[-2])
          for t in texts]


def test_a_failure_report_without_diagnostics_leaves_them_empty() -> None:
    """Built from an error alone, the report's optional fields are empty (the mail marks the
    old four as not set) and it is a permanent failure unless the error says otherwise."""
    report = FailureReport.from_error(PermanentError("x", user="ann", step="license"))
    assert FailureReport(username="ann", error="x", step="license") == report


def test_a_poison_alert_reads_in_full() -> None:
    """The poison alert, whole: queue, message, attempts, user and correlation (or that they
    could not be read), the reason, an excerpt, and what to do."""
    mail = render_poison(PoisonReport("license", "m-2", "not base64", 5, content="%%%"))
    assert "Office 365 Provisioning Alert: a message on queue 'license' could not be " \
        "processed" == mail.subject
    assert (
        "Hello,\n\nThis is an automated alert from the Office 365 Provisioning Service.\n\n"
        "a message on queue 'license' could not be processed\n\n"
        "The message went to 'license-poison' and was recorded there, without any change "
        "being made.\n\n"
        "Field              Value\n"
        "-----------------  -------------------\n"
        "Queue              license\n"
        "Message ID         m-2\n"
        "Delivery attempts  5\n"
        "User (objectGUID)  (could not be read)\n"
        "Correlation ID     (none)\n"
        "Reason             not base64\n"
        "Message (excerpt)  %%%\n\n"
        "What to do: look at the reason above and fix its cause; then, if it names a user, "
        "re-drive it with `python -m shared.cli redrive license`. A message that is not ours "
        "needs nothing: it was recorded and dropped.\n\n"
        "Regards,\nProvisioning Service\n"
    ) == mail.text
    assert '<strong class="error">' in mail.html


def test_a_poison_alert_shows_what_was_read_and_cuts_long_content() -> None:
    """A user and correlation id that were read are shown; content up to 300 characters is
    shown whole, longer content cut at 300 with an ellipsis, and no content means no row."""
    read = render_poison(PoisonReport("mailbox", "m-1", "stale", user="u-1",
                                      correlation_id="c-1", content="x" * 300)).html
    long = render_poison(PoisonReport("mailbox", "m-1", "stale", content="y" * 301)).html
    empty = render_poison(PoisonReport("mailbox", "m-1", "stale")).html
    for row in ("<tr><td>User (objectGUID)</td><td>u-1</td></tr>",
                "<tr><td>Correlation ID</td><td>c-1</td></tr>",
                f"<tr><td>Message (excerpt)</td><td>{'x' * 300}</td></tr>"):
        assert row in read
    assert f"<tr><td>Message (excerpt)</td><td>{'y' * 300}…</td></tr>" in long
    assert (6, False) == (empty.count("<tr><td>"), "Message (excerpt)" in empty)


def test_a_shortage_alert_reads_in_full() -> None:
    """The shortage alert, whole: the SKUs short of units with total, consumed, remaining,
    waiting and missing units (a SKU with none left is short by all who wait), and what to do."""
    mail = render_shortage([SkuSummary("ENTERPRISEPACK", 48, 50), SkuSummary("SPE_E5", 10, 10)],
                           {"ENTERPRISEPACK": 5, "SPE_E5": 1})
    assert "Office 365 Provisioning Alert: not enough licences for ENTERPRISEPACK, SPE_E5" == \
        mail.subject
    assert (
        "Hello,\n\nThis is an automated alert from the Office 365 Provisioning Service.\n\n"
        "not enough licences for ENTERPRISEPACK, SPE_E5\n\n"
        "These users cannot be licensed until units are free; they stay where they are and are "
        "licensed by a later cycle.\n\n"
        "License           SKU             Total  Consumed  Remaining  Waiting  Short by\n"
        "----------------  --------------  -----  --------  ---------  -------  --------\n"
        "Office 365 E3     ENTERPRISEPACK  50     48        2          5        3\n"
        "Microsoft 365 E5  SPE_E5          10     10        0          1        1\n\n"
        "What to do: buy the missing units or free units held by leavers, in the Microsoft 365 "
        "admin centre (Billing > Licenses).\n\n"
        "Regards,\nProvisioning Service\n"
    ) == mail.text
    assert '<strong class="error">not enough licences for ENTERPRISEPACK, SPE_E5</strong>' \
        in mail.html


def test_a_sku_is_short_only_when_more_wait_than_remain() -> None:
    """As many waiting as units remain is not short, and a SKU nobody waits for is not short
    even with no unit left."""
    mail = render_shortage([SkuSummary("ENTERPRISEPACK", 45, 50), SkuSummary("SPE_E5", 10, 10),
                            SkuSummary("STANDARDPACK", 3, 9)],
                           {"ENTERPRISEPACK": 5, "STANDARDPACK": 7})
    assert "Office 365 Provisioning Alert: not enough licences for STANDARDPACK" == mail.subject


def test_a_generic_alert_reads_in_full() -> None:
    """A generic alert, whole: title, each summary paragraph, the table, what to do and the
    attachments; without a fix or attachments those lines are left out, and an error alert's
    title is marked."""
    log = Attachment("roles.log", b"granted\n", "text/plain")
    mail = render_alert("3 role changes", ["First paragraph.", "Second paragraph."],
                        columns=("Member", "Action"), rows=[("anna", "granted")],
                        fix="nothing", attachments=[log], severity="error",
                        generated=UNTIL)
    bare = render_alert("plain", "Only this.")
    assert (
        "Hello,\n\nThis is an automated alert from the Office 365 Provisioning Service.\n\n"
        "3 role changes\n\nFirst paragraph.\n\nSecond paragraph.\n\n"
        "Member  Action\n------  -------\nanna    granted\n\n"
        "What to do: nothing\n\nAttached: roles.log\n\nRegards,\nProvisioning Service\n"
    ) == mail.text
    assert ("Hello,\n\nThis is an automated alert from the Office 365 Provisioning Service.\n\n"
            "plain\n\nOnly this.\n\nRegards,\nProvisioning Service\n") == bare.text
    assert ("Office 365 Provisioning Alert: 3 role changes", "Office 365 Provisioning Alert: "
            "plain") == (mail.subject, bare.subject)
    assert '<p><strong class="error">3 role changes</strong></p>' in mail.html
    assert "<p><strong>plain</strong></p>" in bare.html
    assert "<thead>\n<tr><th>Member</th><th>Action</th></tr>" in mail.html
    assert "Sent by the Office 365 Provisioning Service on 2026-03-02 07:00 UTC." in mail.html


def test_a_text_table_cuts_a_cell_at_80_characters() -> None:
    """A cell longer than 80 characters is cut to 80 with an ellipsis; one of 80 is whole."""
    table = text_table(("A",), [("x" * 80,), ("y" * 81,)])
    assert ["x" * 80, "y" * 79 + "…"] == table.splitlines()[2:]


def test_a_long_value_stays_whole_on_its_line_of_the_plain_text_mail() -> None:
    """One line per value, not a truncated one: a 600-character reason (Exchange's messages
    run long) arrives whole."""
    reason = "Exchange refused it: " + "x" * 580
    mail = render_error(FailureReport(username="eve", error=reason, fix="f", step="mailbox"))
    assert reason in mail.text.splitlines()


def test_common_skus_show_the_admin_centre_s_names() -> None:
    """The seven SKUs with friendly names show them; another shows its part number, and a
    name given wins."""
    parts = ["ENTERPRISEPACK", "ENTERPRISEPREMIUM", "STANDARDPACK", "EXCHANGESTANDARD",
             "EXCHANGEENTERPRISE", "SPE_E3", "SPE_E5", "VISIOCLIENT"]
    assert (["Office 365 E3", "Office 365 E5", "Office 365 E1", "Exchange Online (Plan 1)",
             "Exchange Online (Plan 2)", "Microsoft 365 E3", "Microsoft 365 E5", "VISIOCLIENT"],
            "E3 (EA)") == ([SkuSummary(p, 0, 0).label for p in parts],
                           SkuSummary("ENTERPRISEPACK", 0, 0, name="E3 (EA)").label)


@pytest.mark.parametrize(("step", "action"), [
    ("mailbox", "mail-enable users"), ("license", "provision users in Office 365"),
    ("licence", "provision users in Office 365"), ("role", "provision users in Office 365"),
    ("", "provision users in Office 365")])
def test_the_error_mail_says_what_the_step_was_doing(step: str, action: str) -> None:
    """The mailbox step mail-enables users; every other step, or none, provisions them."""
    text = render_error(FailureReport("anna", "boom", step=step)).text
    assert ("The following error occurred when attempting to " + action + ":") in text


def test_a_failure_report_without_details_is_permanent_and_empty() -> None:
    """A report of only a user and an error: permanent, with no fix, address, licence,
    location, name, step, correlation or time."""
    report = FailureReport("anna", "boom")
    assert ("", "", "", "", "", "", "permanent", "", None) == (
        report.fix, report.email, report.licence, report.usage_location, report.display_name,
        report.step, report.kind, report.correlation_id, report.when)


def test_a_poison_report_without_a_count_shows_no_delivery_attempt() -> None:
    """A poison report built without its dequeue count says 0 delivery attempts."""
    assert "Delivery attempts  0\n" in render_poison(PoisonReport("mailbox", "m-1", "x")).text


# -- the digest's leavers section (built by shared.leavers.report) ------------------------------

LEAVERS = LeaversSection(
    converted=[LeaverRow("jleft", "jleft@contoso.com", detail="hidden from the address lists")],
    returned=[LeaverRow("jleft", "jleft@contoso.com", "ENTERPRISEPACK, SPE_E3")],
    kept=[LeaverRow(XSS, "big@contoso.com", "ENTERPRISEPACK", "size 61.2 GB > 50 GB")],
    held=[("plan-7f3a", 14, 10)],
    month="December 2026",
    reclaimed=[ReclaimedRow("ENTERPRISEPACK", 3, "69.00 EUR"), ReclaimedRow("SPE_E3", 1)],
    total_cost="69.00 EUR",
    unpriced=["SPE_E3"],
)


def _leavers_digest(section: LeaversSection | None = LEAVERS):
    return render_digest([], [SkuSummary("ENTERPRISEPACK", 48, 50)], since=SINCE, until=UNTIL,
                         leavers=section)


def test_digest_without_leavers_has_no_leavers_section() -> None:
    """No leaver activity: the digest reads as before, with no word of leavers."""
    for mail in (_digest(), _leavers_digest(None)):
        for part in (mail.html, mail.text):
            assert ("Leavers" in part, "reclaimed" in part) == (False, False)


def test_digest_leavers_section_lists_converted_returned_kept_and_why() -> None:
    """Both parts list the mailbox converted (hidden), the licences returned with their SKUs,
    the licence kept with the reason, and the held cycle with the command that approves it."""
    mail = _leavers_digest()
    for part in (mail.html, mail.text):
        assert "Leavers" in part and "since the last report" in part
        for words in ("Mailboxes converted to shared", "jleft@contoso.com",
                      "hidden from the address lists", "Licences returned",
                      "ENTERPRISEPACK, SPE_E3", "Licences kept, and why", "big@contoso.com"):
            assert words in part, words
        assert "14 leavers held for approval: more than LEAVERS_MAX_PER_DAY (10)" in part
        assert "python -m shared.cli leavers approve plan-7f3a" in part
    assert "size 61.2 GB &gt; 50 GB" in mail.html
    assert "size 61.2 GB > 50 GB" in mail.text
    # the section sits between the users waiting and the licence summary
    assert mail.text.index("Leavers") < mail.text.index("License Summary")
    assert mail.html.index("Leavers") < mail.html.index("License Summary")


def test_digest_leavers_section_escapes_names_in_html() -> None:
    """A leaver's name holding markup is text in the HTML part (autoescape stays on)."""
    mail = _leavers_digest()
    assert XSS not in mail.html
    assert "&lt;img src=x onerror=alert(1)&gt;" in mail.html
    assert XSS in mail.text


def test_digest_shows_the_months_reclaimed_units_and_cost() -> None:
    """The month's block: each SKU's friendly name, part number, units and cost, the total,
    and the SKU without a price named with what to do."""
    mail = _leavers_digest()
    text = mail.text
    assert "Licences reclaimed in December 2026:" in text
    assert re.search(r"Office 365 E3\s+ENTERPRISEPACK\s+3\s+69\.00 EUR", text)
    assert re.search(r"Microsoft 365 E3\s+SPE_E3\s+1\n", text)
    assert "Total: 69.00 EUR a month" in text
    assert "No price in LICENSE_PRICES for SPE_E3: add one to count its cost." in text
    html = mail.html
    assert "Licences reclaimed in December 2026:" in html
    assert ('<tr><td>Office 365 E3</td><td>ENTERPRISEPACK</td><td class="num">3</td>'
            '<td class="num">69.00 EUR</td></tr>') in html
    assert '<td class="num"><strong>69.00 EUR</strong></td>' in html
    assert "No price in LICENSE_PRICES for SPE_E3" in html


def test_digest_month_block_without_prices_or_units() -> None:
    """No prices: units without a total or a word of prices; nothing reclaimed yet: the
    month says so, with no table."""
    unpriced = LeaversSection(month="December 2026",
                              reclaimed=[ReclaimedRow("ENTERPRISEPACK", 2)])
    mail = _leavers_digest(unpriced)
    for part in (mail.html, mail.text):
        assert ("Total" in part.split("License Summary")[0], "LICENSE_PRICES" in part) == (
            False, False)
    assert re.search(r"Office 365 E3\s+ENTERPRISEPACK\s+2\n", mail.text)
    empty = _leavers_digest(LeaversSection(
        converted=[LeaverRow("jleft", "jleft@contoso.com")], month="December 2026"))
    for part in (empty.html, empty.text):
        assert "Licences reclaimed in December 2026: none yet." in part.replace(
            "</strong>", "")
        assert ("Licences returned" in part, "Licences kept" in part, "Units" in part) == (
            False, False, False)


def test_digest_leavers_text_tables_keep_one_value_per_line() -> None:
    """The text tables' columns, and a reason with a line break cannot start a line of its
    own in the plain-text part."""
    section = LeaversSection(kept=[LeaverRow("x", "x@contoso.com", "E3", "a\nHow to fix it: y")])
    text = _leavers_digest(section).text
    assert re.search(r"Username\s+UPN\s+Licences kept\s+Why\n-+", text)
    assert "\nHow to fix it" not in text
    converted = _leavers_digest(LeaversSection(converted=[LeaverRow("c", "c@contoso.com")]))
    assert re.search(r"Username\s+UPN\s+Note\n-+\s+-+\s+-+\nc\s+c@contoso.com\n",
                     converted.text)
    returned = _leavers_digest(LeaversSection(returned=[LeaverRow("r", "r@x.com", "E3")]))
    assert re.search(r"Username\s+UPN\s+Licences returned\n-+\s+-+\s+-+\nr\s+r@x.com\s+E3\n",
                     returned.text)


def test_reclaimed_row_label_is_the_friendly_name_or_the_part_number() -> None:
    """A known SKU shows the admin centre's name; another its part number."""
    assert ("Office 365 E3", "FOO_BAR") == (ReclaimedRow("ENTERPRISEPACK", 1).label,
                                            ReclaimedRow("FOO_BAR", 1).label)


def test_digest_reclaimed_text_table_has_its_columns() -> None:
    """The month's plain-text table names its four columns."""
    text = _leavers_digest().text
    assert re.search(r"\nLicense\s+SKU\s+Units\s+Cost a month\n-+\s+-+\s+-+\s+-+\n", text)


def test_leaver_rows_and_section_default_to_nothing() -> None:
    """A row with only a name has no UPN, SKUs or detail; a row of units no cost; a section
    built with nothing shows nothing."""
    assert ("", "", "") == (LeaverRow("x").upn, LeaverRow("x").skus, LeaverRow("x").detail)
    assert "" == ReclaimedRow("A", 1).cost
    empty = LeaversSection()
    assert ((), (), (), (), "", (), "", ()) == (
        empty.converted, empty.returned, empty.kept, empty.held, empty.month, empty.reclaimed,
        empty.total_cost, empty.unpriced)
