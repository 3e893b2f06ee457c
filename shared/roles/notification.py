"""What a role cycle tells people: its log, in the shape the PowerShell script's log had (time,
level, text), and the notification mail with that log attached.

Every value written into the log or into the mail's summary passes through
``shared.mail.sender.one_line`` (and ``shared.log.redact``): an AD group name, a UPN or a Graph
message with a line break in it cannot forge a log entry or a "Fix:" line.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from shared.errors import ProvisioningError
from shared.log import get_logger
from shared.mail.sender import Attachment, Mail, one_line
from shared.roles.model import RoleChange, RolePlan
from shared.roles.outcome import CycleResult

log = get_logger(__name__)


class MailSender(Protocol):
    """What the notification needs of ``shared.mail.sender.Mailer``."""

    async def send(self, mail: Mail) -> None: ...


def done(result: CycleResult) -> list[RoleChange]:
    """The changes the cycle made (applied directly) or queued."""
    if result.applied:
        return [r.change for r in result.applied if r.outcome == "applied"]
    return list(result.to_enqueue)


def plan_lines(role_plan: RolePlan, *, fixes: bool = True, held: bool = True) -> list[str]:
    """A line per refusal, hold and unmapped group: the notification and ``cli roles plan``
    say the same."""
    def fix(text: str) -> str:
        return f" Fix: {text}" if fixes else ""

    lines = [f"blocked: {b.reason}.{fix(b.fix)}" for b in role_plan.blocked]
    if held and role_plan.held is not None:
        lines.append(f"held: {role_plan.held.reason}.{fix(role_plan.held.fix)}")
    return lines + [f"ignored: AD group '{n}' matches no Entra role."
                    for n in role_plan.unknown_groups]


def summary(result: CycleResult) -> tuple[str, list[str], str]:
    """Title, summary paragraphs and the fix of the cycle's notification, each one line."""
    if result.stopped is not None:
        return ("Role sync stopped: nothing was changed", [one_line(result.stopped.reason, 500)],
                one_line(result.stopped.fix, 500))
    role_plan = result.plan
    assert role_plan is not None
    made = done(result)
    lines: list[str] = []
    if made:
        lines.append(f"{len(made)} role change(s) {'made' if result.applied else 'queued'}; "
                     "the log is attached.")
    lines += [f"failed: {r.detail}" for r in result.applied if r.outcome == "failed"]
    lines += plan_lines(role_plan, fixes=False, held=result.held is not None)
    fixes = [b.fix for b in role_plan.blocked]
    if result.held is not None and role_plan.held is not None:
        fixes.append(role_plan.held.fix)
    if result.held is not None:
        title = f"Role sync held plan {result.held.plan_id}: approval needed"
    elif role_plan.blocked:
        title = "Role sync blocked changes"
    else:
        title = f"Role sync: {len(made)} change(s)"
    return (title, [one_line(line, 500) for line in lines],
            one_line("; ".join(dict.fromkeys(fixes)), 1000))


async def notify(mailer: MailSender, result: CycleResult) -> bool:
    """Mail the cycle's notification with its log attached as ``rolesync-<time>.log``, as the
    PowerShell script did; True when it went out. A mail failure is logged, not raised: a mail
    outage never stops the role sync itself."""
    from shared.mail.reports import render_alert

    title, paragraphs, fix = summary(result)
    rows = [(c.action.value, c.role_name, c.user, c.group) for c in done(result)]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    alarming = result.stopped or result.held or (result.plan and result.plan.blocked)
    mail = render_alert(
        title, paragraphs, columns=("action", "role", "user", "AD group") if rows else (),
        rows=rows, fix=fix, severity="error" if alarming else "info",
        attachments=[Attachment(f"rolesync-{stamp}.log", result.log.text.encode("utf-8"),
                                "text/plain")],
    )
    try:
        await mailer.send(mail)
    except ProvisioningError as exc:
        log.error("role_notification_failed", reason=str(exc),
                  correlation_id=result.correlation_id)
        return False
    log.info("role_notification_sent", title=title, correlation_id=result.correlation_id)
    return True
