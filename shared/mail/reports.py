"""What the service tells its administrators, rendered as mail (pure functions, no I/O).

- ``render_digest``: the users provisioned since the last report (user, e-mail, licence) and a
  licence summary per SKU (consumed, total = prepaid enabled units, remaining), in the words of
  the report the old script sent;
- ``render_error``: one mail per failed user with the old script's diagnostic fields
  (username, e-mail, licence, usage location, the error) and the fix;
- ``render_alert``: a generic alert (title, summary, a table, what to do, attachments), on which
  ``render_poison`` (a queue message that could not be processed) and ``render_shortage``
  (a SKU without enough units) are built, and which the role sync uses for its notifications.

Templates live in ``shared/mail/templates``: ``<name>.html`` rendered with autoescape on, so a
display name such as ``<img src=x onerror=alert(1)>`` arrives as text, and ``<name>.txt`` for
the plain-text alternative. Every rendered text also passes through ``shared.log.redact``: a
secret that reached a report by mistake is masked there too.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from shared.errors import ProvisioningError, SafetyStop, TransientError
from shared.mail.rendering import Block, render, text_table, when
from shared.mail.sender import Attachment, Mail

PRODUCT = "Office 365 Provisioning"

# Friendly names of common SKUs, as the admin centre shows them; others show their part number.
SKU_NAMES = {
    "ENTERPRISEPACK": "Office 365 E3",
    "ENTERPRISEPREMIUM": "Office 365 E5",
    "STANDARDPACK": "Office 365 E1",
    "EXCHANGESTANDARD": "Exchange Online (Plan 1)",
    "EXCHANGEENTERPRISE": "Exchange Online (Plan 2)",
    "SPE_E3": "Microsoft 365 E3",
    "SPE_E5": "Microsoft 365 E5",
}

# What the error mail says the service was doing; every other step (licence, role) provisions.
_ACTIONS = {"mailbox": "mail-enable users"}

Kind = Literal["permanent", "transient", "safety-stop"]
Severity = Literal["info", "warning", "error"]


@dataclass(frozen=True)
class ProvisionedRow:
    """One provisioned user in the digest."""

    username: str
    email: str
    licence: str
    display_name: str = ""


@dataclass(frozen=True)
class WaitingRow:
    """A user the service cannot move on, in the digest: failed, blocked by a guard, stuck
    after many attempts, or waiting for a licence unit."""

    username: str
    step: str
    status: str
    reason: str
    since: dt.datetime | None = None


@dataclass(frozen=True)
class SkuSummary:
    """A subscribed SKU's units: ``total`` is ``prepaidUnits.enabled``, ``consumed`` is
    ``consumedUnits``."""

    sku: str
    consumed: int
    total: int
    name: str = ""

    @property
    def remaining(self) -> int:
        return self.total - self.consumed

    @property
    def label(self) -> str:
        return self.name or SKU_NAMES.get(self.sku, self.sku)

    @classmethod
    def from_subscribed(cls, sku: SubscribedSkuLike) -> SkuSummary:
        """From Graph's subscribed SKU (``shared.graph.client.SubscribedSku``)."""
        return cls(sku.part_number, sku.consumed, sku.prepaid)


class SubscribedSkuLike(Protocol):
    """What ``render_digest`` needs of a SKU that is not a ``SkuSummary``."""

    @property
    def part_number(self) -> str: ...
    @property
    def prepaid(self) -> int: ...
    @property
    def consumed(self) -> int: ...


@dataclass(frozen=True)
class LeaverRow:
    """One leaver in the digest: converted (``detail`` says if hidden), licence returned
    (``skus``) or licence kept (``skus`` and ``detail``, the reason)."""

    username: str
    upn: str = ""
    skus: str = ""
    detail: str = ""


@dataclass(frozen=True)
class ReclaimedRow:
    """Units of one SKU given back by leavers this month, and their monthly cost ("" when
    the SKU has no price)."""

    sku: str
    units: int
    cost: str = ""

    @property
    def label(self) -> str:
        return SKU_NAMES.get(self.sku, self.sku)


@dataclass(frozen=True)
class LeaversSection:
    """The digest's leavers section (``shared.leavers.report`` builds it from the outcomes):
    since the last digest, the mailboxes converted, the licences returned and kept, the cycles
    held for approval (plan id, leavers, limit); and the month's reclaimed units per SKU."""

    converted: Sequence[LeaverRow] = ()
    returned: Sequence[LeaverRow] = ()
    kept: Sequence[LeaverRow] = ()
    held: Sequence[tuple[str, int, int]] = ()
    month: str = ""
    reclaimed: Sequence[ReclaimedRow] = ()
    total_cost: str = ""
    unpriced: Sequence[str] = ()


@dataclass(frozen=True)
class FailureReport:
    """What the error mail says about one user's failure."""

    username: str
    error: str
    fix: str = ""
    email: str = ""
    licence: str = ""
    usage_location: str = ""
    display_name: str = ""
    step: str = ""
    kind: Kind = "permanent"
    correlation_id: str = ""
    when: dt.datetime | None = None

    @classmethod
    def from_error(
        cls,
        error: ProvisioningError,
        *,
        email: str = "",
        licence: str = "",
        usage_location: str = "",
        display_name: str = "",
        correlation_id: str = "",
        when: dt.datetime | None = None,
    ) -> FailureReport:
        """The report for a ``ProvisioningError`` and the user's diagnostic fields."""
        kind: Kind = "permanent"
        if isinstance(error, TransientError):
            kind = "transient"
        elif isinstance(error, SafetyStop):
            kind = "safety-stop"
        return cls(
            username=error.user,
            error=error.reason,
            fix=error.fix,
            email=email,
            licence=licence,
            usage_location=usage_location,
            display_name=display_name,
            step=error.step,
            kind=kind,
            correlation_id=correlation_id,
            when=when,
        )


@dataclass(frozen=True)
class PoisonReport:
    """A queue message that could not be processed and went to ``<queue>-poison``."""

    queue: str
    message_id: str
    reason: str
    dequeue_count: int = 0
    user: str = ""
    content: str = ""
    correlation_id: str = ""


def render_digest(
    rows: Sequence[ProvisionedRow],
    skus: Sequence[SkuSummary | SubscribedSkuLike],
    *,
    since: dt.datetime | str | None,
    until: dt.datetime,
    waiting: Sequence[WaitingRow] = (),
    leavers: LeaversSection | None = None,
) -> Mail:
    """The report of users provisioned between ``since`` (None: the first report) and
    ``until``, the users waiting and why, the leavers (when there are any) and the licence
    summary per SKU."""
    table = Block(text_table(
        ("Username", "Display Name", "Email Address", "License Assigned"),
        [(r.username, r.display_name, r.email, r.licence) for r in rows],
    ))
    waiting_table = Block(text_table(
        ("Username", "Step", "Status", "Since", "Reason"),
        [(w.username, w.step, w.status, when(w.since), w.reason) for w in waiting],
    ))
    summaries = [s if isinstance(s, SkuSummary) else SkuSummary.from_subscribed(s) for s in skus]
    return render(
        "digest",
        f"{PRODUCT} Report",
        rows=rows,
        skus=summaries,
        since=when(since),
        until=when(until),
        generated=when(until),
        table=table,
        waiting=[(w, when(w.since)) for w in waiting],
        waiting_table=waiting_table,
        leavers=leavers,
        leaver_tables=_leaver_tables(leavers) if leavers else {},
    )


def _leaver_tables(section: LeaversSection) -> dict[str, Block]:
    """The plain-text tables of the leavers section."""
    return {
        "converted": Block(text_table(("Username", "UPN", "Note"), [
            (r.username, r.upn, r.detail) for r in section.converted])),
        "returned": Block(text_table(("Username", "UPN", "Licences returned"), [
            (r.username, r.upn, r.skus) for r in section.returned])),
        "kept": Block(text_table(("Username", "UPN", "Licences kept", "Why"), [
            (r.username, r.upn, r.skus, r.detail) for r in section.kept])),
        "reclaimed": Block(text_table(("License", "SKU", "Units", "Cost a month"), [
            (r.label, r.sku, r.units, r.cost) for r in section.reclaimed])),
    }


def render_error(failure: FailureReport) -> Mail:
    """The error mail for one user: what failed, the diagnostic fields, and the fix."""
    # The old mail always listed these four, so they stay even when empty.
    diagnostics = [
        ("Username", failure.username),
        ("Email Address", failure.email),
        ("License Assigned", failure.licence),
        ("Usage Location", failure.usage_location),
    ]
    diagnostics = [(label, value or "(not set)") for label, value in diagnostics]
    optional = [
        ("Display Name", failure.display_name),
        ("Step", failure.step),
        ("Correlation ID", failure.correlation_id),
    ]
    diagnostics += [(label, value) for label, value in optional if value]
    outcome = {
        "permanent": "The user was left as they are; nothing more is tried for them until the "
        "cause is fixed.",
        "transient": "The service kept retrying and gave up; it tries again once the cause "
        "is fixed.",
        "safety-stop": "A safety guard refused this change; nothing is written until an "
        "operator acts.",
    }[failure.kind]
    return render(
        "error",
        f"{PRODUCT} Error: {failure.username or 'unknown user'}",
        failure=failure,
        action=_ACTIONS.get(failure.step, "provision users in Office 365"),
        diagnostics=diagnostics,
        outcome=outcome,
        generated=when(failure.when),
    )


def render_alert(
    title: str,
    summary: str | Sequence[str],
    *,
    columns: Sequence[str] = (),
    rows: Sequence[Sequence[object]] = (),
    fix: str = "",
    severity: Severity = "warning",
    attachments: Sequence[Attachment] = (),
    subject: str | None = None,
    generated: dt.datetime | None = None,
) -> Mail:
    """A generic alert: a title, one or more summary paragraphs, an optional table
    (``columns`` + ``rows``), what to do, and attachments (named in the body)."""
    paragraphs = [summary] if isinstance(summary, str) else list(summary)
    return render(
        "alert",
        subject or f"{PRODUCT} Alert: {title}",
        attachments,
        title=title,
        summary=paragraphs,
        columns=list(columns),
        rows=[[str(cell) for cell in row] for row in rows],
        table=Block(text_table(columns, rows)),
        fix=fix,
        severity=severity,
        attachment_names=[a.filename for a in attachments],
        generated=when(generated),
    )


def render_poison(report: PoisonReport) -> Mail:
    """The alert for a message that went to the poison queue."""
    excerpt = report.content if len(report.content) <= 300 else report.content[:300] + "…"
    rows: list[tuple[str, object]] = [
        ("Queue", report.queue),
        ("Message ID", report.message_id),
        ("Delivery attempts", report.dequeue_count),
        ("User (objectGUID)", report.user or "(could not be read)"),
        ("Correlation ID", report.correlation_id or "(none)"),
        ("Reason", report.reason),
    ]
    if excerpt:
        rows.append(("Message (excerpt)", excerpt))
    return render_alert(
        f"a message on queue '{report.queue}' could not be processed",
        f"The message went to '{report.queue}-poison' and was recorded there, without any "
        "change being made.",
        columns=("Field", "Value"),
        rows=rows,
        fix="look at the reason above and fix its cause; then, if it names a user, re-drive it "
        f"with `python -m shared.cli redrive {report.queue}`. A message that is not ours needs "
        "nothing: it was recorded and dropped.",
        severity="error",
    )


def render_shortage(skus: Sequence[SkuSummary], needed: Mapping[str, int]) -> Mail:
    """The alert for SKUs whose remaining units are fewer than the users waiting for them."""
    short = [s for s in skus if needed.get(s.sku, 0) > s.remaining]
    rows = [
        (s.label, s.sku, s.total, s.consumed, s.remaining, needed[s.sku],
         needed[s.sku] - max(s.remaining, 0))
        for s in short
    ]
    names = ", ".join(s.sku for s in short) or "none"
    return render_alert(
        f"not enough licences for {names}",
        "These users cannot be licensed until units are free; they stay where they are and "
        "are licensed by a later cycle.",
        columns=("License", "SKU", "Total", "Consumed", "Remaining", "Waiting", "Short by"),
        rows=rows,
        fix="buy the missing units or free units held by leavers, in the Microsoft 365 admin "
        "centre (Billing > Licenses).",
        severity="error",
    )
