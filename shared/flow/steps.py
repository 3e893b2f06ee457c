"""Adapters from the queue handler to the four steps (the leaver's is ``leavers``): each runs
one step for one work item and returns its result as a value (``Done``, ``NotYet``,
``PermanentError``, ``SafetyStop``).
A ``TransientError`` (a peer down, busy or throttled) becomes ``NotYet(Wait.OUTAGE)``; any
other exception is a bug and propagates."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING

from shared.errors import PermanentError, SafetyStop, TransientError
from shared.provisioning.looks import on_demand_failed
from shared.results import Done, NotYet, Stale, Wait
from shared.store.ledger import Change
from shared.store.messages import Step, WorkItem

from .transitions import StepResult

if TYPE_CHECKING:
    from .service import Service


async def run_step(svc: Service, item: WorkItem) -> StepResult:
    """Run ``item``'s step; what happened, as a value."""
    try:
        if item.step is Step.MAILBOX:
            return await _mailbox(svc, item)
        if item.step is Step.LICENSE:
            step = await svc.license_step()
            return await _named(svc, await step.run(item.user,
                                                    correlation_id=item.correlation_id))
        if item.step is Step.LEAVER:
            from .leaver_step import run_leaver

            return await run_leaver(svc, item)
        return await _role(svc, item)
    except TransientError as exc:
        return NotYet(Wait.OUTAGE, exc.reason, user=exc.user, fix=exc.fix,
                      retry_after=exc.retry_after)
    except (PermanentError, SafetyStop) as exc:
        return exc


async def _named(svc: Service, result: Done | NotYet | Stale) -> Done | NotYet | Stale:
    """A user not synced whose provisionOnDemand did not export waits for that, by name."""
    if not isinstance(result, NotYet) or result.kind is not Wait.SYNC or not result.dn \
            or svc.settings.sync.trigger != "cloud-sync":
        return result
    named = on_demand_failed((await svc.sync_trigger()).exports.get(result.dn), result.user)
    if named is None:
        return result
    return dataclasses.replace(result, reason=named[0], fix=named[1])


async def check(svc: Service, item: WorkItem) -> str | None:
    """The check made before the work is claimed: why ``item`` is stale, or None. A role
    change is re-decided from what is read now (``shared.roles.cycle.stale``); the mailbox and
    licence steps check membership themselves, and a stale result undoes their claim.
    ``TransientError`` when what decides cannot be read."""
    if item.step is not Step.ROLE:
        return None
    from shared.roles.cycle import stale

    return await stale(svc, item)


async def _mailbox(svc: Service, item: WorkItem) -> Done | Stale:
    def run() -> Done | Stale:
        with svc.mailbox_steps().use() as step:
            outcome = step.run(item.user, correlation_id=item.correlation_id)
        if isinstance(outcome, Stale):
            return outcome
        return Done(outcome.user, outcome.changes, next_step=Step.LICENSE, dn=outcome.dn)

    return await asyncio.to_thread(run)


async def _role(svc: Service, item: WorkItem) -> Done:
    from shared.roles.cycle import apply_change

    result = await apply_change(svc.settings, svc.graph(), item,
                                correlation_id=item.correlation_id)
    changes = tuple(Change(str(what), before, after) for what, before, after in result.changes)
    return Done(result.change.user or str(item.user), changes)
