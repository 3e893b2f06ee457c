"""Queue messages: ids, never state.

A message names the user by ``objectGUID`` and the step; the handler re-reads the directory.
It carries a schema version, the user, the step, a correlation id and the enqueue time, and
nothing else (a role change adds the role and the direction, which are the work item's id).

``decode`` refuses anything else with ``MalformedMessage``: the handler records it and moves
it to the poison queue without side effects.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .errors import PermanentError

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 1024  # ours are ~200 bytes; anything larger was not written by us


class Step(StrEnum):
    MAILBOX = "mailbox"
    LICENSE = "license"
    ROLE = "role"


# One queue per step; Functions moves a message to "<queue>-poison" after maxDequeueCount.
QUEUES: dict[Step, str] = {Step.MAILBOX: "mailbox", Step.LICENSE: "license", Step.ROLE: "roles"}


def poison_queue(queue: str) -> str:
    return f"{queue}-poison"


class MalformedMessage(PermanentError):
    """A message that is not ours, not whole, too large, or of a schema version we do not know."""

    def __init__(self, reason: str, *, raw: str) -> None:
        super().__init__(
            reason,
            step="decode",
            fix="nothing to redo: the message was moved to the poison queue; the reconcile "
            "timer re-enqueues the user if they are still in a provisioning group",
        )
        self.raw = raw[:200]


@dataclass(frozen=True)
class WorkItem:
    """One step of work for one user: ``user`` is the AD ``objectGUID`` for the mailbox and
    licence steps, and the Entra object id of the principal for a role change."""

    user: uuid.UUID
    step: Step
    correlation_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    enqueued_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    role: str | None = None  # role step only: role definition id
    action: str | None = None  # role step only: "grant" or "revoke"
    version: int = SCHEMA_VERSION

    def encode(self) -> str:
        body: dict[str, Any] = {
            "v": self.version,
            "user": str(self.user),
            "step": self.step.value,
            "cid": self.correlation_id,
            "at": self.enqueued_at.isoformat(),
        }
        if self.step is Step.ROLE:
            body["role"] = self.role
            body["action"] = self.action
        return json.dumps(body, separators=(",", ":"))

    @property
    def key(self) -> str:
        """The ledger's row key: the step, and for a role change also the role, so two
        changes of one person's roles are tracked apart."""
        return f"{self.step.value}:{self.role}" if self.step is Step.ROLE else self.step.value

    def next(self, step: Step) -> WorkItem:
        """The follow-up work item for the same user, in the same correlation."""
        return WorkItem(user=self.user, step=step, correlation_id=self.correlation_id)

    def again(self, at: dt.datetime) -> WorkItem:
        """The same work, enqueued anew at ``at`` (a retry): newer than this message, so it
        supersedes it."""
        return WorkItem(user=self.user, step=self.step, correlation_id=self.correlation_id,
                        enqueued_at=max(at, self.enqueued_at + dt.timedelta(microseconds=1)),
                        role=self.role, action=self.action)


_FIELDS = {"v", "user", "step", "cid", "at"}
_ROLE_FIELDS = _FIELDS | {"role", "action"}


def decode(raw: str | bytes) -> WorkItem:
    """Parse a queue message, refusing anything that is not exactly one of ours."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    if len(text.encode("utf-8")) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"message of {len(text)} characters is oversized", raw=text)
    try:
        body = json.loads(text)
    except ValueError:
        raise MalformedMessage("message is not JSON", raw=text) from None
    if not isinstance(body, dict):
        raise MalformedMessage("message is not a JSON object", raw=text)
    if body.get("v") != SCHEMA_VERSION:
        raise MalformedMessage(f"unknown schema version {body.get('v')!r}", raw=text)
    try:
        step = Step(body["step"])
        expected = _ROLE_FIELDS if step is Step.ROLE else _FIELDS
        if set(body) != expected:
            raise MalformedMessage(f"fields {sorted(body)} are not {sorted(expected)}", raw=text)
        enqueued_at = dt.datetime.fromisoformat(body["at"])
        if enqueued_at.tzinfo is None:
            raise MalformedMessage("enqueue time has no time zone", raw=text)
        item = WorkItem(
            user=uuid.UUID(body["user"]),
            step=step,
            correlation_id=str(body["cid"]),
            enqueued_at=enqueued_at,
            role=body.get("role"),
            action=body.get("action"),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise MalformedMessage(f"message has a bad field: {exc}", raw=text) from None
    if not 8 <= len(item.correlation_id) <= 64:
        raise MalformedMessage("correlation id is not 8 to 64 characters", raw=text)
    if step is Step.ROLE and (not item.role or item.action not in {"grant", "revoke"}):
        raise MalformedMessage("role message needs a role and grant/revoke", raw=text)
    return item
