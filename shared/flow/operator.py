"""What an operator sees of one user (``cli user``, ``cli plan --users``): the stage, what the
next cycle would do with them and why, and whether an operator's retry goes ahead (pure;
the reads are the CLI's)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from shared.store.ledger import LedgerRow, State
from shared.store.messages import Step

from .transitions import Due, due


@dataclass(frozen=True)
class Next:
    """The next cycle's action for one user at one step, and why."""

    action: str  # enqueue, wait, held, nothing
    why: str


def next_action(row: LedgerRow | None, now: dt.datetime, grace: dt.timedelta, *,
                changed: bool = False, invalid: str = "") -> Next:
    """What reconcile and the handlers would do next with a group member whose ledger row is
    ``row``: ``changed`` says the user object changed since a failure (its fingerprint),
    ``invalid`` is the input rules' reason when the step would fail on them."""
    decision = due(row, now, grace)
    fails = f"; the step will fail: {invalid}" if invalid else ""
    if row is None:
        return Next("enqueue", f"new member, no work yet{fails}")
    if decision is Due.IF_CHANGED:
        if changed:
            return Next("enqueue", f"failed, and the user object changed since{fails}")
        return Next("held", f"failed: {row.last_error or 'no reason recorded'}; fix the "
                            "cause, then python -m shared.cli retry <user>")
    if decision is Due.YES:
        why = ("finished, yet still in the group" if row.state is State.DONE
               else "overdue: its message or worker was lost")
        return Next("enqueue", why + fails)
    if row.state is State.WAITING:
        at = f" until {row.next_at:%Y-%m-%d %H:%M:%S} UTC" if row.next_at else ""
        return Next("wait", f"waiting ({row.wait or 'retry'}){at}: {row.last_error}")
    if row.state is State.DONE:
        return Next("nothing", "finished moments ago")
    return Next("nothing", f"{row.state.value}: a message or worker is on it")


def stage(in_provision: bool, in_license: bool, rows: dict[Step, LedgerRow]) -> str:
    """Where the user is: the step they wait for, or provisioned, or outside the flow."""
    if in_provision:
        return "waiting for a remote mailbox (provisioning group)"
    if in_license:
        return "waiting for a licence (licence group)"
    done = rows.get(Step.LICENSE)
    if done is not None and done.state is State.DONE:
        return "provisioned (in neither group)"
    return "not in the flow (in neither group)"


def next_retry(row: LedgerRow | None) -> str:
    """When the next attempt comes by itself: a waiting row's delayed message."""
    if row is None or row.state is not State.WAITING or row.next_at is None:
        return "-"
    return f"{row.next_at:%Y-%m-%d %H:%M:%S} UTC"


# -- an operator's retry -----------------------------------------------------------------------


@dataclass(frozen=True)
class Retry:
    """An operator's retry goes ahead: a new work item for ``step``, now, which goes through
    the same check, claim and step as any other (and supersedes a delayed one)."""

    step: Step


@dataclass(frozen=True)
class Refused:
    """An operator's retry that would do nothing: why, and what to do instead."""

    why: str
    fix: str


def on_retry(step: Step | None, row: LedgerRow | None, now: dt.datetime) -> Retry | Refused:
    """What ``python -m shared.cli retry`` does for a user at ``step`` (the step of the group
    they are in; None: in neither) whose ledger row there is ``row``. A failed user is retried
    whatever changed (the cause may be outside the user object: another object's address, an
    Exchange permission, a licence bought), a waiting one now instead of after its back-off;
    only a user in no group, or one a worker holds this moment, is refused."""
    if step is None:
        return Refused("is in neither provisioning group: nothing to retry",
                       "add the user to the provisioning group to provision them")
    if row is not None and row.state is State.WORKING and row.lease_until is not None \
            and now < row.lease_until:
        return Refused(f"a worker is on its {step.value} step until "
                       f"{row.lease_until:%Y-%m-%d %H:%M:%S} UTC",
                       "wait for it, then look again with python -m shared.cli user")
    return Retry(step)
