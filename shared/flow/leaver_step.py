"""The leaver step (issue 27): one leaver, idempotently, through convert → (the sync) →
licence → out of the group, as ``shared.leavers.planner.next_action`` decides.

Both sides are read again at every run (``shared.leavers.peers``), so a step killed anywhere is
redone without doing anything twice: a shared mailbox is not converted again, a removed licence
is not in ``assigned`` any more, a user out of the group is out. The step waits for the sync
(``NotYet(Wait.SYNC)``, the sync trigger asked for the user) until the cloud mailbox is shared
too, finishes (``Done`` with the ``leaver_*`` outcome rows) or stops (``Stale``: nothing
changed, the claim undone).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

from shared.errors import PermanentError
from shared.leavers import planner
from shared.leavers.planner import Action, Facts, Mailbox, Rules
from shared.log import get_logger
from shared.results import Done, NotYet, Stale, Wait
from shared.store.ledger import Change, State
from shared.store.messages import Step, WorkItem

from .service import io

if TYPE_CHECKING:
    from shared.ad.directory import DirectoryUser
    from shared.config import Settings

    from .service import Service

log = get_logger("shared.flow")


def rules_of(settings: Settings) -> Rules:
    """The planner's rules from the settings; the roles' break-glass list excludes too."""
    s, r = settings.leavers, settings.roles
    return Rules(group_grace=s.group_grace, disabled_accounts=s.leavers_disabled_accounts,
                 disabled_grace=s.disabled_grace, max_per_day=s.leavers_max_per_day,
                 any_licence=s.leavers_any_licence,
                 excluded=r.break_glass_object_ids | r.break_glass_upns)


def _fields(user: DirectoryUser) -> dict[str, str | int]:
    return {"name": user.sam, "upn": user.upn or ""}


async def run_leaver(svc: Service, item: WorkItem) -> Done | NotYet | Stale:
    """One leaver, as far as it can go now (see the module's docstring)."""
    from shared.leavers import peers

    s = svc.settings.leavers
    rules = rules_of(svc.settings)
    directory = await svc.adirectory()
    user = await io(directory.user, item.user)
    who = user.sam
    graph = svc.graph()
    cloud = await graph.find_user(user.immutable_id, user.upn)
    if cloud is None:
        return NotYet(Wait.SYNC, f"{who} is not in Entra ID", user=who, dn=user.dn,
                      late="the leaver is not in Entra ID",
                      late_fix="check that Entra Connect syncs the user's OU")
    identity = str(user.guid)
    ledger_row = await io(svc.ledger.get, item.user, Step.LICENSE.value)
    ours = (frozenset(svc.settings.provisioning.license_map.values())
            if ledger_row is not None and ledger_row.state is State.DONE else frozenset())
    part_of = {sku.sku_id: sku.part_number for sku in await graph.subscribed_skus(max_age=5)}
    id_of = {part: sku_id for sku_id, part in part_of.items()}
    records: list[tuple[str, dict[str, str | int]]] = []
    changes: list[Change] = []
    async with svc.exchange_clients().ause() as exchange:
        m = Mailbox(user=identity, upn=(user.upn or "").lower(), object_id=cloud.id.lower(),
                    in_group=await io(directory.is_member, user, s.leavers_group),
                    enabled=user.enabled,
                    premises=await asyncio.to_thread(peers.premises_type, exchange, identity),
                    cloud=await peers.cloud_type(graph, cloud.id),
                    assigned=frozenset(part_of.get(i, str(i)) for i in cloud.sku_ids),
                    ours=ours)
        settled = False
        for _ in range(8):
            if (m.premises == planner.SHARED and m.cloud == planner.SHARED and not settled
                    and m.facts == Facts()):
                got = await peers.mailbox_facts(graph, exchange, cloud.id, identity)
                m = replace(m, facts=Facts(got.size_bytes, got.archive, got.litigation_hold))
            step = planner.next_action(m, rules, settled=settled)
            if step.action is Action.CONVERT:
                hide = s.leaver_hide_from_gal
                if await asyncio.to_thread(peers.convert_to_shared, exchange, identity,
                                           hide=hide):
                    records.append(("leaver_converted", {**_fields(user), "hidden": int(hide)}))
                    changes.append(Change("mailbox type", "user", "shared"))
                    log.info("leaver_converted", user=identity, name=who, hidden=hide,
                             correlation_id=item.correlation_id)
                m = replace(m, premises=planner.SHARED)
            elif step.action is Action.WAIT_SYNC:
                return NotYet(Wait.SYNC, f"the cloud mailbox of {who} is not shared yet",
                              user=who, dn=user.dn, records=tuple(records),
                              changes=tuple(changes),
                              late="the cloud mailbox did not become shared",
                              late_fix="check the Entra Connect sync of the user and "
                                       "Get-RemoteMailbox's RecipientTypeDetails")
            elif step.action is Action.REMOVE:
                try:
                    await peers.remove_licences(graph, cloud.id,
                                                [str(id_of.get(p, p)) for p in step.skus])
                except PermanentError as exc:
                    if peers.INHERITED not in exc.reason:
                        raise
                    step = replace(step, action=Action.KEEP, reason="group-inherited")
                if step.action is Action.REMOVE:
                    records.append(("leaver_unlicensed", {**_fields(user),
                                                          "skus": ",".join(step.skus),
                                                          "units": len(step.skus)}))
                    changes.append(Change("licences", ",".join(step.skus), ""))
                    log.info("leaver_unlicensed", user=identity, name=who,
                             skus=",".join(step.skus), correlation_id=item.correlation_id)
                    m = replace(m, assigned=m.assigned - frozenset(step.skus))
                else:
                    _kept(records, user, step.skus, step.reason, item)
                settled = True
            elif step.action is Action.KEEP:
                _kept(records, user, step.skus, step.reason, item)
                settled = True
            elif step.action is Action.LEAVE_GROUP:
                await io(directory.remove_member, s.leavers_group, user)
                changes.append(Change("group", s.leavers_group, ""))
                log.info("leaver_left_group", user=identity, name=who, group=s.leavers_group,
                         correlation_id=item.correlation_id)
                m = replace(m, in_group=False)
            elif step.action is Action.DONE:
                records.append(("leaver_done", {"name": who}))
                return Done(who, tuple(changes), records=tuple(records))
            else:
                return Stale(step.reason, user=who)
    raise AssertionError(f"the leaver step of {who} did not settle")  # a planner bug


def _kept(records: list[tuple[str, dict[str, str | int]]], user: DirectoryUser,
          skus: tuple[str, ...], reason: str, item: WorkItem) -> None:
    records.append(("leaver_kept", {**_fields(user), "skus": ",".join(skus), "reason": reason}))
    log.info("leaver_kept", user=str(user.guid), name=user.sam, skus=",".join(skus),
             reason=reason, correlation_id=item.correlation_id)
