"""The command line's views of users and of the pause (``plan --users``, ``user``, ``retry``,
``status``): the reads, the pure decisions of ``shared.flow``, and rich tables and lines."""

from __future__ import annotations

import asyncio
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shared.ad.directory import DirectoryUser
from shared.errors import ProvisioningError
from shared.store.ledger import now
from shared.store.messages import Step, WorkItem
from shared.store.pause import Half, Paused

from . import flow
from .flow.operator import Refused, next_action, next_retry, on_retry, stage


def print_pauses(console: Console, paused: dict[Half, Paused]) -> None:
    """One line per half: paused since when and by whom, or running."""
    for half in Half:
        pause = paused.get(half)
        if pause is None:
            console.print(f"{half.value}: running", highlight=False)
        else:
            why = f", {pause.reason}" if pause.reason else ""
            console.print(escape(f"{half.value}: PAUSED since {pause.since}"
                                 f"{' by ' + pause.by if pause.by else ''}{why}: polls "
                                 "nothing, changes nothing; python -m shared.cli resume "
                                 f"--{half.value} to end it"), style="yellow", highlight=False)


def print_user_plan(svc: flow.Service, console: Console) -> None:
    """Per member of either group: the step, the ledger's state, the next action and why."""
    from shared.provisioning import rules

    p = svc.settings.provisioning
    directory = svc.directory()
    table = Table("user", "step", "state", "attempts", "next", "why",
                  title="next cycle, per user")
    at = now()
    for group, step in ((p.provision_group, Step.MAILBOX), (p.license_group, Step.LICENSE)):
        for guid in directory.group_members(group):
            row = svc.ledger.get(guid, step)
            try:
                ad = directory.user(guid)
            except ProvisioningError as exc:
                table.add_row(str(guid), step.value, "-", "-", "skip", escape(exc.reason))
                continue
            checked = rules.check(ad, p)
            invalid = checked.reason if isinstance(checked, rules.Invalid) else ""
            changed = row is not None and flow.fingerprint(ad) != row.fingerprint
            nxt = next_action(row, at, svc.policy.grace, changed=changed, invalid=invalid)
            table.add_row(escape(ad.sam), step.value, row.state.value if row else "-",
                          str(row.attempts if row else 0), nxt.action, escape(nxt.why))
    console.print(table)


def _find(svc: flow.Service, console: Console, name: str) -> DirectoryUser | None:
    try:
        return svc.directory().find(name)
    except ProvisioningError as exc:
        console.print(escape(str(exc)), style="red", soft_wrap=True)
        return None


def show_user(svc: flow.Service, console: Console, name: str) -> bool:
    """``cli user``: stage, ledger rows, the last failure and its fix; False: no such user."""
    p = svc.settings.provisioning
    directory = svc.directory()
    ad = _find(svc, console, name)
    if ad is None:
        return False
    rows = {step: row for step in (Step.MAILBOX, Step.LICENSE, Step.LEAVER)
            if (row := svc.ledger.get(ad.guid, step)) is not None}
    where = stage(directory.is_member(ad, p.provision_group),
                  directory.is_member(ad, p.license_group), rows)
    console.print(escape(f"{ad.sam} ({ad.upn or 'no UPN'}, objectGUID {ad.guid}): {where}"),
                  highlight=False, soft_wrap=True)
    table = Table("step", "state", "attempts", "first attempt", "finished", "next retry",
                  "last error", title="ledger")
    for step, row in rows.items():
        table.add_row(step.value, row.state.value, str(row.attempts),
                      f"{row.first_attempt_at:%Y-%m-%d %H:%M:%S}" if row.first_attempt_at
                      else "-", f"{row.finished_at:%Y-%m-%d %H:%M:%S}" if row.finished_at
                      else "-", next_retry(row), escape(row.last_error or "-"))
    console.print(table)
    failed = svc.outcomes.of_user(str(ad.guid), "failed")
    if failed:
        last = failed[-1]
        console.print(escape(f"last failure ({last.get('step', '')}): {last.get('reason', '')}"
                             f"; fix: {last.get('fix', '')}"), soft_wrap=True, highlight=False)
        console.print(f"once fixed: python -m shared.cli retry {escape(ad.sam)}",
                      highlight=False)
    return True


def retry_user(svc: flow.Service, console: Console, name: str) -> bool:
    """``cli retry``: the user's step queued now, as ``on_retry`` decides; False: refused."""
    p = svc.settings.provisioning
    directory = svc.directory()
    ad = _find(svc, console, name)
    if ad is None:
        return False
    step = (Step.MAILBOX if directory.is_member(ad, p.provision_group)
            else Step.LICENSE if directory.is_member(ad, p.license_group) else None)
    decision = on_retry(step, svc.ledger.get(ad.guid, step) if step else None, now())
    if isinstance(decision, Refused):
        console.print(escape(f"retry {ad.sam}: not queued: {ad.sam} {decision.why}; "
                             f"{decision.fix}"), style="red", soft_wrap=True)
        return False
    item = WorkItem(user=ad.guid, step=decision.step)
    asyncio.run(flow.enqueue(svc, item))
    flow.log.info("user_retried", user=str(ad.guid), name=ad.sam, step=decision.step.value,
                  correlation_id=item.correlation_id)
    console.print(escape(f"retry {ad.sam}: its {decision.step.value} step is queued now "
                         f"(correlation id {item.correlation_id}); python -m shared.cli user "
                         f"{ad.sam} shows how it went"), soft_wrap=True, highlight=False)
    return True


def print_leavers(svc: flow.Service, console: Console) -> None:
    """The next leavers cycle: who starts, waits, is left alone or held; changes nothing."""
    from shared.flow.leavers import decide, describe

    async def read() -> Any:
        try:
            return await decide(svc)
        finally:
            await svc.aclose()

    plan, _ = asyncio.run(read())
    table = Table("user", "next cycle", "why",
                  title=f"leavers ({svc.settings.leavers.leavers_group})")
    for line in describe(plan):
        table.add_row(*map(escape, line))
    console.print(table)
    if plan.held is not None:
        console.print(f"held: plan {plan.held.plan_id}, {plan.held.count} leavers over "
                      f"LEAVERS_MAX_PER_DAY={plan.held.limit}; approve with python -m "
                      f"shared.cli leavers approve {plan.held.plan_id}", soft_wrap=True)


def approve_leavers(svc: flow.Service, console: Console, plan_id: str) -> bool:
    """``leavers approve``: record the approval, then run the leavers cycle; False when no
    such plan is held. Closes ``svc``."""
    from shared.flow.leavers import approve, leavers_cycle

    async def cycle() -> Any:
        try:
            return await leavers_cycle(svc)
        finally:
            await svc.aclose()

    try:
        held = approve(svc, plan_id)
        result = asyncio.run(cycle())
    except ProvisioningError as exc:
        console.print(escape(str(exc)), style="red", soft_wrap=True)
        return False
    finally:
        svc.close()
    console.print(f"plan {plan_id} approved ({held.count} leavers); the cycle started "
                  f"{len(result.enqueued)}", highlight=False)
    if result.plan.held is not None:
        console.print(f"still held: plan {result.plan.held.plan_id} (the leavers changed "
                      "since; check and approve that one)", style="yellow")
    return True
