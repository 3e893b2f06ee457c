"""What a role cycle returns and keeps: its log (in the shape the PowerShell script's log had),
its audit events, each change's result, and the cycle's result. Values only: the cycle
(``shared.roles.cycle``) fills them and the notification (``shared.roles.notification``) reads
them, so neither imports the other's module for them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Protocol

from shared.errors import SafetyStop
from shared.log import redact
from shared.mail.sender import one_line
from shared.roles.model import RoleChange, RolePlan
from shared.roles.plans import HeldPlan


class CycleLog:
    """The cycle's log file. ``note(level, message, **values)``: ``message`` is a literal with
    ``{name}`` fields; each value is flattened to one line before it is put in."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, level: str, message: str, **values: object) -> None:
        flat = {name: one_line(redact(str(value)), 500) for name, value in values.items()}
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        self.lines.append(f"{stamp} [{level}] {message.format(**flat)}")

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class AuditWriter(Protocol):
    """``shared.store.records.Audit`` (blocking)."""

    def record(self, *, user: str, system: str, action: str, before: object, after: object,
               correlation_id: str) -> None: ...


# -- what the handlers return -------------------------------------------------------------------
@dataclass(frozen=True)
class AuditEvent:
    """One audit row: ``kind`` is planned, applied, skipped or blocked."""

    kind: str
    user: str
    action: str
    after: dict[str, object]

    def write(self, audit: AuditWriter, correlation_id: str) -> None:
        audit.record(user=self.user, system="entra", action=f"role_change_{self.kind}",
                     before=None, after={"what": self.action, **self.after},
                     correlation_id=correlation_id)


@dataclass
class ChangeResult:
    """What ``apply_change`` did. ``changes`` are (action, before, after) for the audit."""

    change: RoleChange
    outcome: str  # applied, already, failed
    detail: str = ""
    changes: list[tuple[str, object, object]] = field(default_factory=list)


@dataclass
class CycleResult:
    """One role cycle: the plan, what to enqueue, and what was logged, audited and mailed."""

    correlation_id: str
    plan: RolePlan | None = None
    to_enqueue: list[RoleChange] = field(default_factory=list)
    held: HeldPlan | None = None
    stopped: SafetyStop | None = None
    applied: list[ChangeResult] = field(default_factory=list)
    audit: list[AuditEvent] = field(default_factory=list)
    log: CycleLog = field(default_factory=CycleLog)
    notified: bool = False
