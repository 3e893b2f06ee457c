"""What one step returns to the flow: it is done, or not yet and why.

A step (mailbox, licence, role change) either finishes (``Done``, with the changes it made
for the audit and what the digest should say), or finds that the user cannot move on yet
(``NotYet``, with the reason and the kind of wait), or fails for good (it raises
``PermanentError``) or is refused by a guard (it raises ``SafetyStop``). A peer that is down or
busy raises ``TransientError``; the flow turns that into ``NotYet(Wait.OUTAGE)``.

Steps never decide *when* to try again: one back-off, in ``shared.flow.transitions``, does,
from the kind of wait and the attempts so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from shared.store.ledger import Change
from shared.store.messages import Step


class Wait(StrEnum):
    """Why a user cannot move on yet; each kind has its own back-off and deadline."""

    OUTAGE = "outage"  # a peer was unreachable, busy or throttled
    SYNC = "sync"  # the user has not synced to Entra ID yet
    ROUTING = "routing"  # the cloud user does not show the remote routing address yet
    SHORTAGE = "shortage"  # the SKU has no free unit


@dataclass(frozen=True)
class Shortage:
    """A SKU without a free unit, as Graph's subscribedSkus counted it; ``first_today`` is
    true for the one call per SKU and day that sends the alert."""

    part_number: str
    prepaid: int
    consumed: int
    first_today: bool


@dataclass(frozen=True)
class Done:
    """The step finished. ``report`` holds the fields of the digest row (licence step only);
    ``next_step`` is the step that follows for the same user, if any."""

    user: str
    changes: tuple[Change, ...] = ()
    report: dict[str, str] | None = None
    next_step: Step | None = None
    dn: str = ""  # the AD user's DN: whom a sync trigger names (``shared.provisioning.sync``)
    records: tuple[tuple[str, dict[str, str | int]], ...] = ()  # outcome rows: (kind, fields)


@dataclass(frozen=True)
class Stale:
    """The message names work that is not this step's to do: the user is not (or no longer) in
    the step's group. Nothing is changed; the message is recorded and dropped."""

    reason: str
    user: str = ""


@dataclass(frozen=True)
class NotYet:
    """The user cannot move on yet. ``late`` is what the wait means once its deadline has
    passed (a wait without a deadline leaves it empty); ``retry_after`` is a peer's own word
    on when to come back (Retry-After), which the back-off honours."""

    kind: Wait
    reason: str
    user: str = ""
    fix: str = "none needed; retried later"
    late: str = ""
    late_fix: str = ""
    retry_after: float | None = None
    changes: tuple[Change, ...] = ()
    shortage: Shortage | None = None
    report: dict[str, str] = field(default_factory=dict)
    dn: str = ""  # the AD user's DN, for a sync trigger while the user waits for the sync
    records: tuple[tuple[str, dict[str, str | int]], ...] = ()  # outcome rows: (kind, fields)
