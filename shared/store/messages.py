"""Queue messages: ids, never state.

A message names the user by ``objectGUID`` and the step; the handler re-reads the directory.
It carries a schema version, the user, the step, a correlation id and the time its writer
says it was enqueued, and nothing else (a role change adds the role, the direction and the id
of the plan that released it, which the handler checks against the latest decision).

**Time comes from the storage service, not from the body.** The queue stamps every message
with its insertion time (``QueueMessage.inserted_on``; the Functions host passes it as
``insertion_time``); the handlers decode with it (``decode(..., inserted_at=...)``) and order
and judge staleness by it alone. The body's ``at`` is checked for form and may be logged,
never trusted: a writer cannot date a message into the future or the past.

A message is not trusted for who, what or when: ``decode`` refuses anything that is not exactly
one of ours with ``MalformedMessage`` (the handler parks it on the poison queue without side
effects): a version that is not the integer 1, a user or role that is not a GUID, a
correlation id outside ``[A-Za-z0-9-]{8,64}``, an enqueue time without a zone, an insertion
time further in the future than the clock skew we tolerate (``MAX_FUTURE``: the storage
service's clock and ours may disagree by ten minutes), nesting deep enough to exhaust the
parser.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from shared.errors import PermanentError

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 1024  # ours are ~200 bytes; anything larger was not written by us
# Workers' clocks may disagree by minutes (the fault suite skews one by 10); beyond this an
# enqueue time is not a clock's error but a forgery.
MAX_FUTURE = dt.timedelta(minutes=15)
_CID = re.compile(r"[A-Za-z0-9-]{8,64}")


class Step(StrEnum):
    MAILBOX = "mailbox"
    LICENSE = "license"
    ROLE = "role"
    LEAVER = "leaver"  # one leaver's way: shared mailbox, licence back, out of the group


# One queue per step; Functions moves a message to "<queue>-poison" after maxDequeueCount.
QUEUES: dict[Step, str] = {Step.MAILBOX: "mailbox", Step.LICENSE: "license", Step.ROLE: "roles",
                           Step.LEAVER: "leavers"}


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
    plan: str | None = None  # role step only: the id of the plan that holds this change
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
            body["plan"] = self.plan
        return json.dumps(body, separators=(",", ":"))

    @property
    def key(self) -> str:
        """The ledger's row key: the step, and for a role change also the role and the
        direction, so two changes of one person's roles are tracked apart and a grant can never
        make a revocation look stale (or the reverse)."""
        if self.step is Step.ROLE:
            return f"{self.step.value}:{self.role}:{self.action}"
        return self.step.value

    def next(self, step: Step) -> WorkItem:
        """The follow-up work item for the same user, in the same correlation."""
        return WorkItem(user=self.user, step=step, correlation_id=self.correlation_id)

    def again(self, at: dt.datetime) -> WorkItem:
        """The same work, enqueued anew at ``at`` (a retry): newer than this message, so it
        supersedes it."""
        return WorkItem(user=self.user, step=self.step, correlation_id=self.correlation_id,
                        enqueued_at=max(at, self.enqueued_at + dt.timedelta(microseconds=1)),
                        role=self.role, action=self.action, plan=self.plan)


_FIELDS = {"v", "user", "step", "cid", "at"}
_ROLE_FIELDS = _FIELDS | {"role", "action", "plan"}


def decode(raw: str | bytes, *, now: dt.datetime | None = None,
           inserted_at: dt.datetime | None = None) -> WorkItem:
    """Parse a queue message, refusing anything that is not exactly one of ours. ``now`` is
    the reader's clock (the current time when omitted); ``inserted_at`` the storage service's
    insertion time, which becomes the item's ``enqueued_at`` (the body's ``at`` only when
    there is none: a poisoned message shown to an operator, a redrive)."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    if len(text.encode("utf-8")) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"message of {len(text)} characters is oversized", raw=text)
    try:
        body = json.loads(text)
    except ValueError:
        raise MalformedMessage("message is not JSON", raw=text) from None
    except RecursionError:
        raise MalformedMessage("message is nested too deeply", raw=text) from None
    if not isinstance(body, dict):
        raise MalformedMessage("message is not a JSON object", raw=text)
    version = body.get("v")
    if type(version) is not int or version != SCHEMA_VERSION:  # True == 1, but is no version
        raise MalformedMessage(f"unknown schema version {version!r}", raw=text)
    try:
        step = Step(body["step"])
        expected = _ROLE_FIELDS if step is Step.ROLE else _FIELDS
        if set(body) != expected:
            raise MalformedMessage(f"fields {sorted(body)} are not {sorted(expected)}", raw=text)
        enqueued_at = dt.datetime.fromisoformat(body["at"])
        if enqueued_at.tzinfo is None:
            raise MalformedMessage("enqueue time has no time zone", raw=text)
        role = body.get("role")
        item = WorkItem(
            user=uuid.UUID(_text(body["user"])),
            step=step,
            correlation_id=_text(body["cid"]),
            enqueued_at=_aware(inserted_at) if inserted_at is not None else enqueued_at,
            role=str(uuid.UUID(_text(role))) if step is Step.ROLE else None,
            action=body.get("action"),
            plan=body.get("plan"),
        )
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise MalformedMessage(f"message has a bad field: {exc}", raw=text) from None
    if not _CID.fullmatch(item.correlation_id):
        raise MalformedMessage("correlation id is not 8 to 64 letters, digits or dashes",
                               raw=text)
    if step is Step.ROLE and (item.action not in {"grant", "revoke"} or
                              not isinstance(item.plan, str) or not _CID.fullmatch(item.plan)):
        raise MalformedMessage("role message needs grant/revoke and the plan's id", raw=text)
    if item.enqueued_at > (now or dt.datetime.now(dt.UTC)) + MAX_FUTURE:
        raise MalformedMessage(f"enqueue time {item.enqueued_at.isoformat()} is in the "
                               "future", raw=text)
    return item


def _aware(moment: dt.datetime) -> dt.datetime:
    """A storage time as an aware datetime (the SDKs give UTC, sometimes without a zone)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _text(value: object) -> str:
    """A string field as a string; anything else (a number, a list) is not ours."""
    if not isinstance(value, str):
        raise TypeError(f"{type(value).__name__} where a string belongs")
    return value
