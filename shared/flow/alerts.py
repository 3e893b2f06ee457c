"""Mails the flow sends as things happen: a user's failure, a user stuck, a licence shortage,
a poisoned message. Each is rendered by ``shared.mail.reports`` and sent off the event loop; a mail
that cannot be sent is logged and never fails the step (the outcome row and the digest still
tell)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import TYPE_CHECKING

from shared.errors import ProvisioningError
from shared.log import get_logger
from shared.store.messages import WorkItem

from .service import io
from .transitions import Alert, ErrorMail, ShortageAlert, StuckAlert

if TYPE_CHECKING:
    from shared.ad.directory import DirectoryUser
    from shared.mail.sender import Mail

    from .service import Service

log = get_logger("shared.flow")


def user_fields(user: DirectoryUser) -> dict[str, str | int]:
    """The user's diagnostic fields, as the error mail and the outcome row show them."""
    return {
        "name": user.sam,
        "display_name": user.display_name or "",
        "mail": user.mail or "",
        "licence": user.license_name or "",
        "usage_location": user.country or "",
    }


async def deliver(svc: Service, mail: Mail, **about: str) -> bool:
    """Send ``mail`` unless MAIL_TRANSPORT=none; False (and one log line) when it failed."""
    if svc.settings.mail.transport == "none":
        return False
    try:
        await svc.mailer().send(mail)
    except ProvisioningError as exc:
        log.error("alert_mail_failed", reason=str(exc), **about)
        return False
    return True


async def send(svc: Service, alert: Alert, *, item: WorkItem,
               user: DirectoryUser | None) -> None:
    """Render and send one alert of a transition."""
    from shared.mail.reports import FailureReport, render_alert, render_error

    if isinstance(alert, ErrorMail):
        if not await _mail_allowed(svc, item):
            return
        report = FailureReport.from_error(alert.error, correlation_id=item.correlation_id)
        if user is not None:
            report = dataclasses.replace(
                report, username=user.sam, email=user.mail or "",
                licence=user.license_name or "", usage_location=user.country or "",
                display_name=user.display_name or "",
            )
        await deliver(svc, render_error(report), user=str(item.user))
    elif isinstance(alert, StuckAlert):
        mail = render_alert(
            f"{alert.user} has waited {alert.attempts} attempts at the {alert.step} step",
            f"The {alert.step} step for {alert.user} keeps waiting: {alert.reason}. The service "
            "goes on retrying; this alert is sent once.",
            columns=("User", "Step", "Attempts", "Waiting for"),
            rows=[(alert.user, alert.step, alert.attempts, alert.reason)],
            fix="look at the reason: a peer that stays down (Exchange, a DC, Graph), a user "
            "outside Entra Connect's scope, or a routing address that never syncs",
        )
        await deliver(svc, mail, user=str(item.user))
    elif isinstance(alert, ShortageAlert):
        await _shortage(svc, alert)


async def _mail_allowed(svc: Service, item: WorkItem) -> bool:
    """Whether another error mail about ``item``'s user may go today
    (``MAIL_ERRORS_PER_USER_PER_DAY``): the failure is recorded and in the digest either way."""
    if svc.settings.mail.transport == "none":
        return False
    limit = svc.settings.mail.errors_per_user_per_day
    count = await io(svc.ledger.count_mail, item.user, dt.datetime.now(dt.UTC).date())
    if count > limit:
        log.warning("error_mail_suppressed", user=str(item.user), step=item.step.value,
                    mails_today=count - 1, limit=limit, correlation_id=item.correlation_id,
                    fix="the failure is in the digest; raise MAIL_ERRORS_PER_USER_PER_DAY "
                    "if one user's mails are wanted more often")
        return False
    return True


async def _shortage(svc: Service, alert: ShortageAlert) -> None:
    from shared.mail.reports import SkuSummary, render_shortage

    group = svc.settings.provisioning.license_group
    waiting = len(await io((await svc.adirectory()).group_members, group))
    summary = SkuSummary(alert.part_number, alert.consumed, alert.prepaid)
    await deliver(svc, render_shortage([summary], {alert.part_number: max(waiting, 1)}),
                  sku=alert.part_number)


async def poison(svc: Service, queue: str, text: str, *, reason: str, dequeue_count: int,
                 item: WorkItem | None) -> None:
    """The alert for a message parked on ``<queue>-poison``."""
    from shared.mail.reports import PoisonReport, render_poison

    report = PoisonReport(
        queue=queue, message_id="", reason=reason, dequeue_count=dequeue_count,
        user=str(item.user) if item else "", content=text[:300],
        correlation_id=item.correlation_id if item else "",
    )
    await deliver(svc, render_poison(report), queue=queue)
