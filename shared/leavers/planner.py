"""Leavers, decided: who is a leaver this cycle, which of them start (the rolling daily limit,
the held plan and its approval), and for one leaver the next action (pure, no I/O).

Two decisions, each from plain data the flow read:

    cycle(seen, candidates, now, rules, started, approved)
        the directory's candidates (members of ``LEAVERS_GROUP``; with
        ``LEAVERS_DISABLED_ACCOUNTS`` also provisioned users whose account is disabled) and what
        earlier cycles saw ──▶ who starts, who waits out the grace, who is left alone, the plan
        held over ``LEAVERS_MAX_PER_DAY``, and what to remember for the next cycle

    next_action(mailbox, rules)
        one leaver's mailbox on both sides, its facts and licences ──▶ convert, wait for the
        sync, remove the licences (one assignLicense), keep them (and why), leave the group,
        finished, or stop (an excluded account, a user no longer leaving)

The order is fixed: the mailbox becomes shared first; a licence is removed only once BOTH the
on-premises remote mailbox and the cloud mailbox say shared (a user mailbox without a licence
is deleted after 30 days), and only when the mailbox needs none: Microsoft's rule for shared
mailboxes is a licence above 50 GB, with an archive, or on litigation hold ("Shared mailboxes
in Exchange Online", learn.microsoft.com/exchange/collaboration-exo/shared-mailboxes). A fact
nobody could read keeps the licence. Then the user leaves the group.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

# Microsoft: a shared mailbox holds up to 50 GB without a licence (GB as Exchange counts, 2^30).
FREE_BYTES = 50 * 1024**3
GIB = 1024**3
DAY = dt.timedelta(hours=24)
USER, SHARED, NONE = "user", "shared", "none"  # the values of ``peers.MailboxType``


@dataclass(frozen=True)
class Rules:
    """The settings that decide (``LEAVER*`` and the roles' break-glass list)."""

    group_grace: dt.timedelta = dt.timedelta(0)
    disabled_accounts: bool = False
    disabled_grace: dt.timedelta = dt.timedelta(days=30)
    max_per_day: int = 10
    any_licence: bool = False
    excluded: frozenset[str] = frozenset()  # object ids, GUIDs and UPNs, lower case


@dataclass(frozen=True)
class Candidate:
    """One user as the cycle read them: ``user`` is the objectGUID (text)."""

    user: str
    name: str = ""
    upn: str = ""
    in_group: bool = False
    enabled: bool = True
    provisioned: bool = False  # this service provisioned them (a finished licence step)
    started: bool = False  # their leaver step has a ledger row already


@dataclass(frozen=True)
class Seen:
    """What earlier cycles saw of a candidate: since when, and whether disabled meanwhile."""

    since: dt.datetime
    was_disabled: bool = False


class Verdict(StrEnum):
    START = "start"
    HELD = "held"  # over the daily limit: waits for ``leavers approve``
    GRACE = "grace"
    RUNNING = "running"  # already started: the flow carries on
    EXCLUDED = "excluded"
    REENABLED = "re-enabled"


@dataclass(frozen=True)
class Decision:
    user: str
    name: str
    verdict: Verdict
    why: str = ""


@dataclass(frozen=True)
class Held:
    plan_id: str
    users: tuple[str, ...]
    count: int
    limit: int


@dataclass(frozen=True)
class CyclePlan:
    decisions: tuple[Decision, ...]
    seen: dict[str, Seen]
    held: Held | None = None

    @property
    def start(self) -> tuple[str, ...]:
        return tuple(d.user for d in self.decisions if d.verdict is Verdict.START)


def is_excluded(rules: Rules, *keys: str) -> bool:
    """Whether any of ``keys`` (object id, GUID, UPN) is on the break-glass/exclusion list."""
    return any(k and k.lower() in rules.excluded for k in keys)


def plan_id(users: Iterable[str]) -> str:
    """The held plan's id: the same users give the same id, cycle after cycle."""
    digest = hashlib.sha256("\n".join(sorted(users)).encode()).hexdigest()
    return f"leavers-{digest[:12]}"


def _leaving(c: Candidate, rules: Rules) -> bool:
    return c.in_group or (rules.disabled_accounts and not c.enabled and c.provisioned)


def _grace(c: Candidate, rules: Rules) -> dt.timedelta:
    return rules.group_grace if c.in_group else rules.disabled_grace


def observe(seen: Mapping[str, Seen], candidates: Iterable[Candidate], now: dt.datetime,
            rules: Rules) -> dict[str, Seen]:
    """What to remember for the next cycle: each user still leaving, since when first seen,
    and whether their account was seen disabled. A user no longer leaving is forgotten, so
    coming back starts the grace again."""
    out: dict[str, Seen] = {}
    for c in candidates:
        if not _leaving(c, rules):
            continue
        before = seen.get(c.user)
        out[c.user] = Seen(before.since if before else now,
                           (before.was_disabled if before else False) or not c.enabled)
    return out


def cycle(seen: Mapping[str, Seen], candidates: Iterable[Candidate], now: dt.datetime,
          rules: Rules, *, started: int = 0, approved: frozenset[str] = frozenset()
          ) -> CyclePlan:
    """Who starts now. ``started``: leavers started in the last 24 h (the rolling window);
    ``approved``: plan ids an operator approved. Over the limit nobody of the lot starts:
    the whole lot is held as one plan, so a wrong group never strips half a department."""
    users = list(candidates)
    remembered = observe(seen, users, now, rules)
    decisions: list[Decision] = []
    due: list[Candidate] = []
    for c in users:
        if c.started:
            decisions.append(Decision(c.user, c.name, Verdict.RUNNING))
        elif is_excluded(rules, c.user, c.upn):
            decisions.append(Decision(c.user, c.name, Verdict.EXCLUDED,
                                      "on the break-glass/exclusion list"))
        elif not _leaving(c, rules):
            continue  # e.g. disabled but not provisioned by this service: not ours
        elif c.enabled and remembered[c.user].was_disabled:
            decisions.append(Decision(c.user, c.name, Verdict.REENABLED,
                                      "re-enabled during the grace"))
        elif now - remembered[c.user].since < _grace(c, rules):
            until = remembered[c.user].since + _grace(c, rules)
            decisions.append(Decision(c.user, c.name, Verdict.GRACE,
                                      f"grace until {until.isoformat(timespec='minutes')}"))
        else:
            due.append(c)
    held = None
    if due:
        pid = plan_id(c.user for c in due)
        if started + len(due) > rules.max_per_day and pid not in approved:
            held = Held(pid, tuple(sorted(c.user for c in due)), len(due), rules.max_per_day)
    for c in due:
        decisions.append(Decision(c.user, c.name, Verdict.HELD if held else Verdict.START,
                                  f"held as plan {held.plan_id}" if held else ""))
    return CyclePlan(tuple(decisions), remembered, held)


def rolling(starts: Mapping[str, dt.datetime], now: dt.datetime) -> dict[str, dt.datetime]:
    """The starts inside the rolling 24 hours ending ``now``."""
    return {user: at for user, at in starts.items() if now - at < DAY}


# -- one leaver ------------------------------------------------------------------------------


class Action(StrEnum):
    CONVERT = "convert"
    WAIT_SYNC = "wait for the sync"
    REMOVE = "remove licences"
    KEEP = "keep licences"
    LEAVE_GROUP = "leave the group"
    DONE = "done"
    STOP = "stop"  # not a leaver (any more): nothing is changed


@dataclass(frozen=True)
class Facts:
    size_bytes: int | None = None
    archive: bool | None = None
    litigation_hold: bool | None = None


@dataclass(frozen=True)
class Mailbox:
    """One leaver as the step read them, both sides. ``assigned``: the SKUs (part numbers) the
    user holds; ``ours``: those this service may take back (its managed SKUs, when it
    provisioned the user); ``by_group``: those group-based licensing assigned."""

    user: str = ""
    upn: str = ""
    object_id: str = ""
    in_group: bool = True
    enabled: bool = False
    premises: str = USER
    cloud: str = USER
    facts: Facts = field(default_factory=Facts)
    assigned: frozenset[str] = frozenset()
    ours: frozenset[str] = frozenset()
    by_group: frozenset[str] = frozenset()  # assigned through group-based licensing


@dataclass(frozen=True)
class Next:
    action: Action
    skus: tuple[str, ...] = ()
    reason: str = ""


def needs_licence(facts: Facts) -> str:
    """Why a shared mailbox still needs a licence ("" when it needs none)."""
    if facts.size_bytes is None:
        return "size unknown"
    if facts.size_bytes > FREE_BYTES:
        return f"size {facts.size_bytes / GIB:.1f} GB > 50 GB"
    if facts.archive is None:
        return "archive unknown"
    if facts.archive:
        return "archive"
    if facts.litigation_hold is None:
        return "litigation hold unknown"
    if facts.litigation_hold:
        return "litigation hold"
    return ""


def licences(m: Mailbox, rules: Rules) -> Next:
    """The licence decision for a mailbox shared on both sides: what to remove, or why kept."""
    held = m.assigned if rules.any_licence else m.assigned & m.ours
    if not held:
        if m.assigned:
            return Next(Action.KEEP, tuple(sorted(m.assigned)),
                        "licence not assigned by this service")
        return Next(Action.LEAVE_GROUP)
    reason = needs_licence(m.facts)
    if reason:
        return Next(Action.KEEP, tuple(sorted(held)), reason)
    if held & m.by_group:
        return Next(Action.KEEP, tuple(sorted(held)), "group-inherited")
    return Next(Action.REMOVE, tuple(sorted(held)))


def leaving(m: Mailbox, rules: Rules) -> bool:
    """Whether the user still leaves: in the group, or (when configured) disabled."""
    return m.in_group or (rules.disabled_accounts and not m.enabled)


def next_action(m: Mailbox, rules: Rules, *, settled: bool = False) -> Next:
    """The next action for one leaver: the mailbox shared on premises, then shared in the cloud
    (the sync carries it), then the licences, then out of the group. ``settled``: the licences
    were removed or kept in this run already. A user no longer leaving is left alone (STOP),
    unless all that is left is to finish: their licences are gone or kept."""
    if is_excluded(rules, m.user, m.upn, m.object_id):
        return Next(Action.STOP, reason="on the break-glass/exclusion list")
    still = leaving(m, rules)
    if m.premises == NONE:
        return Next(Action.STOP, reason="no remote mailbox on premises")
    if m.premises != SHARED:
        return Next(Action.CONVERT) if still else Next(Action.STOP, reason=_GONE)
    if m.cloud != SHARED:
        return (Next(Action.WAIT_SYNC, reason="the cloud mailbox is not shared yet") if still
                else Next(Action.STOP, reason=_GONE))
    decided = Next(Action.LEAVE_GROUP) if settled else licences(m, rules)
    if decided.action is Action.REMOVE and not still:
        return Next(Action.STOP, reason=_GONE)
    if decided.action is Action.LEAVE_GROUP and not m.in_group:
        return Next(Action.DONE)
    return decided


_GONE = "no longer a leaver (out of the group, or enabled again)"
