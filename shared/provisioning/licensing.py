"""The licence step: a pure planner and a thin executor.

``plan(...)`` decides from facts alone (the licence attribute, ``c``, the cloud user's
licences, usage location and proxy addresses, the SKU's free units) and returns actions;
``LicenseStep.run`` gathers the facts from AD and Graph, carries the actions out, and returns
``Done`` (with the changes for the audit and the digest's row) or ``NotYet``.

Order of decisions (each stops the plan when it applies):

1. licence attribute empty or not in ``LICENSE_MAP`` → ``PermanentError`` (user, attribute, value);
2. ``c`` not an ISO 3166-1 alpha-2 code → ``PermanentError`` (user, attribute, value);
3. the tenant has no subscription for the SKU → ``PermanentError``;
4. **safe ordering**: the SKU includes Exchange Online and the cloud user's ``proxyAddresses``
   lack ``smtp:<sam>@<ROUTING_DOMAIN>`` → ``WaitForRouting`` (nothing is written; licensing now
   would make Exchange Online create a second, cloud mailbox);
5. **capacity**: the user lacks the SKU and it has no free unit → ``ReportShortage`` (no
   Graph call; the user stays in ``O365_License``; one notice per SKU per day);
6. ``SetUsageLocation`` only when it differs; one ``AssignLicense`` adding the SKU and removing
   the other SKUs ``LICENSE_REPLACE`` lets it replace (``managed``: those of ``LICENSE_MAP``,
   add-ons stay; ``all``: every other one), none when nothing changes; ``RemoveFromGroup``.

Not synced yet (no cloud user), waiting for the routing address and no free unit are
``NotYet`` results (``Wait.SYNC``, ``Wait.ROUTING``, ``Wait.SHORTAGE``): the flow's one back-off
decides when to look again (``SYNC_RETRY_MIN_SECONDS`` doubling up to
``SYNC_RETRY_MAX_SECONDS``), and after ``SYNC_DEADLINE_HOURS`` since the first attempt a sync or
routing wait becomes a failure ("not synced" / "no routing address"). A shortage waits as long
as it takes, looked at every ``SHORTAGE_RECHECK_SECONDS`` (2 minutes).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, ParamSpec, Protocol, TypeVar

from shared.ad.directory import Directory, DirectoryUser
from shared.config import ProvisioningSettings
from shared.entra import immutable_id as to_immutable_id
from shared.errors import PermanentError
from shared.graph.client import GraphClient, SubscribedSku
from shared.log import get_logger
from shared.provisioning import rules
from shared.results import Done, NotYet, Shortage, Stale, Wait
from shared.store.ledger import Change

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient as AioTableClient

log = get_logger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

STEP = "license"
EXCHANGE_PLAN_PREFIX = "EXCHANGE_S_"


# -- facts and actions ------------------------------------------------------------------------
@dataclass(frozen=True)
class SkuFacts:
    """What the planner needs to know about one SKU of the tenant."""

    sku_id: uuid.UUID
    part_number: str
    free: int
    has_exchange: bool

    @classmethod
    def of(cls, sku: SubscribedSku) -> SkuFacts:
        exchange = any(p.startswith(EXCHANGE_PLAN_PREFIX) for p in sku.service_plans)
        return cls(sku.sku_id, sku.part_number, sku.free, exchange)


@dataclass(frozen=True)
class SetUsageLocation:
    before: str | None
    after: str


@dataclass(frozen=True)
class AssignLicense:
    add: tuple[uuid.UUID, ...]
    remove: tuple[uuid.UUID, ...]


@dataclass(frozen=True)
class WaitForRouting:
    address: str


@dataclass(frozen=True)
class ReportShortage:
    part_number: str
    sku_id: uuid.UUID


@dataclass(frozen=True)
class RemoveFromGroup:
    group: str


Action = SetUsageLocation | AssignLicense | WaitForRouting | ReportShortage | RemoveFromGroup


def has_address(proxy_addresses: Sequence[str], address: str) -> bool:
    """Whether ``address`` is among ``proxy_addresses`` (any prefix case: smtp:/SMTP:)."""
    wanted = f"smtp:{address.lower()}"
    return any(p.lower() == wanted for p in proxy_addresses)


def plan(
    *,
    user: str,
    sku_part: str,
    country: str,
    routing_address: str,
    current_skus: frozenset[uuid.UUID],
    usage_location: str | None,
    proxy_addresses: Sequence[str],
    skus: Mapping[str, SkuFacts],
    provisioning: ProvisioningSettings,
) -> list[Action]:
    """The actions that license ``user`` with ``sku_part`` in ``country`` (both checked by
    ``shared.provisioning.rules`` already); raises ``PermanentError`` when the tenant has no
    such SKU.

    ``skus`` maps part numbers to the tenant's SKUs; ``current_skus`` are the skuIds the
    cloud user holds now; ``routing_address`` is the address the cloud user must show before a
    licence with Exchange Online goes on.
    """
    sku = skus.get(sku_part)
    if sku is None:
        raise PermanentError(
            f"the tenant has no subscription for {sku_part}", user=user, step=STEP,
            fix=f"buy {sku_part}, or map the licence name to another SKU in LICENSE_MAP",
        )
    if sku.has_exchange and not has_address(proxy_addresses, routing_address):
        return [WaitForRouting(routing_address)]
    has_it = sku.sku_id in current_skus
    if not has_it and sku.free <= 0:
        return [ReportShortage(sku.part_number, sku.sku_id)]
    actions: list[Action] = []
    if usage_location != country:
        actions.append(SetUsageLocation(usage_location, country))
    others = tuple(sorted(replaced(current_skus, skus, provisioning) - {sku.sku_id}))
    if not has_it or others:
        actions.append(AssignLicense(() if has_it else (sku.sku_id,), others))
    actions.append(RemoveFromGroup(provisioning.license_group))
    return actions


def replaced(current_skus: frozenset[uuid.UUID], skus: Mapping[str, SkuFacts],
             provisioning: ProvisioningSettings) -> frozenset[uuid.UUID]:
    """The user's SKUs the licence step may replace (``LICENSE_REPLACE``): every one for
    ``all``, as the seed script did; for ``managed`` only those ``LICENSE_MAP`` names, so
    add-ons (Teams Phone, Power BI, Visio) stay."""
    if provisioning.license_replace == "all":
        return current_skus
    managed = {skus[part].sku_id for part in provisioning.license_map.values() if part in skus}
    return current_skus & managed


# -- shortage notices ------------------------------------------------------------------------
class ShortageLedger(Protocol):
    """Remembers which SKUs were reported short on which day, across instances."""

    async def first_today(self, part_number: str, day: date) -> bool:
        """True exactly once per SKU and day: the caller who gets True sends the notice."""


@dataclass
class MemoryShortageLedger:
    """For one process (tests, the CLI)."""

    seen: set[tuple[str, date]] = field(default_factory=set)

    async def first_today(self, part_number: str, day: date) -> bool:
        key = (part_number, day)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


class TableShortageLedger:
    """Table storage: inserting ``(day, SKU)`` succeeds once, whichever instance tries."""

    def __init__(self, table: AioTableClient) -> None:
        self.table = table

    async def first_today(self, part_number: str, day: date) -> bool:
        from azure.core.exceptions import ResourceExistsError

        entity = {"PartitionKey": "licenceShortage", "RowKey": f"{day.isoformat()}_{part_number}"}
        try:
            await self.table.create_entity(entity)
        except ResourceExistsError:
            return False
        return True


# How stale the free-unit count may be; reading subscribedSkus for every user cost a Graph
# read and ~46 ms of parsing per user.
SKU_MAX_AGE = 5.0
# Graph's 400 message when a SKU has no unit left at the moment of assignLicense.
NO_UNITS = "does not have any available licenses"


# -- the step ----------------------------------------------------------------------------------
def _report(ad: DirectoryUser, who: str, inputs: rules.Valid, status: str) -> dict[str, str]:
    """The digest row of a licensed user (``Done.report``)."""
    return {"name": ad.sam or who, "display_name": ad.display_name or "", "mail": ad.mail or "",
            "licence": inputs.licence, "sku": inputs.sku, "status": status,
            "alias": inputs.alias}


class LicenseStep:
    """Executor of the licence plan for one user at a time (one instance per event loop)."""

    def __init__(
        self,
        provisioning: ProvisioningSettings,
        directory: Directory,
        graph: GraphClient,
        ledger: ShortageLedger,
    ) -> None:
        self.provisioning = provisioning
        self.directory = directory
        self.graph = graph
        self.ledger = ledger
        # Directory is one blocking LDAP connection: one thread at a time may use it.
        self._directory_lock = asyncio.Lock()

    async def _directory(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        async with self._directory_lock:
            return await asyncio.to_thread(call, *args, **kwargs)

    async def run(self, guid: uuid.UUID, *, correlation_id: str) -> Done | NotYet | Stale:
        """License the AD user ``guid``: ``Done``, or ``NotYet`` (not synced, no routing
        address, no free unit). Raises ``TransientError`` (a peer is down or busy) and
        ``PermanentError`` (bad input, Graph refused)."""
        ad: DirectoryUser = await self._directory(self.directory.user, guid)
        who = ad.upn or ad.sam
        group = self.provisioning.license_group
        if not await self._directory(self.directory.is_member, ad, group):
            return await self._not_in_group(ad, who, group)
        inputs = rules.check(ad, self.provisioning)
        if isinstance(inputs, rules.Invalid):
            raise PermanentError(inputs.reason, user=who, step=STEP, fix=inputs.fix)
        cloud = await self.graph.find_user(to_immutable_id(guid), ad.upn)
        if cloud is None:
            return NotYet(
                Wait.SYNC, "has not synced to Entra ID yet", user=who,
                late="not synced: no cloud user with this objectGUID or UPN",
                late_fix="check that the user's OU is in Entra Connect's scope and that sync "
                "runs", dn=ad.dn,
            )
        subscribed = {
            s.part_number: s for s in await self.graph.subscribed_skus(max_age=SKU_MAX_AGE)
        }
        skus = {part: SkuFacts.of(s) for part, s in subscribed.items()}
        by_id = {f.sku_id: f.part_number for f in skus.values()}
        part = inputs.sku
        actions = plan(
            user=who, sku_part=part, country=inputs.country,
            routing_address=rules.expected_routing(ad.target_address, inputs, self.provisioning),
            current_skus=cloud.sku_ids, usage_location=cloud.usage_location,
            proxy_addresses=cloud.proxy_addresses, skus=skus, provisioning=self.provisioning,
        )
        changes: list[Change] = []
        for action in actions:
            if isinstance(action, WaitForRouting):
                return NotYet(
                    Wait.ROUTING, f"the cloud user's proxyAddresses lack {action.address} yet",
                    user=who,
                    late=f"no routing address: proxyAddresses never showed {action.address}",
                    late_fix="check that Enable-RemoteMailbox ran and that sync carries "
                    "proxyAddresses", dn=ad.dn,
                )
            if isinstance(action, ReportShortage):
                return await self._shortage(who, action.part_number,
                                            subscribed[action.part_number], changes)
            if isinstance(action, SetUsageLocation):
                await self.graph.set_usage_location(cloud.id, action.after, user=who)
                changes.append(Change("usageLocation", action.before, action.after))
                log.info("usage_location_set", user=who, step=STEP, before=action.before,
                         after=action.after, correlation_id=correlation_id)
            elif isinstance(action, AssignLicense):
                try:
                    await self.graph.assign_license(cloud.id, add=action.add,
                                                    remove=action.remove, user=who)
                except PermanentError as exc:
                    # Another assigner took the last unit between our check and the call.
                    if NO_UNITS not in exc.reason:
                        raise
                    return await self._shortage(who, part, subscribed[part], changes)
                before = ",".join(sorted(by_id.get(s, str(s)) for s in cloud.sku_ids)) or None
                changes.append(Change("licenses", before, part))
                log.info("license_assigned", user=who, step=STEP, sku=part,
                         removed=[by_id.get(s, str(s)) for s in action.remove],
                         correlation_id=correlation_id)
            elif isinstance(action, RemoveFromGroup):
                await self._directory(self.directory.remove_member, action.group, ad)
        status = "licensed" if any(c.what == "licenses" for c in changes) \
            else "already-licensed"
        return Done(who, tuple(changes), report=_report(ad, who, inputs, status))

    async def _not_in_group(self, ad: DirectoryUser, who: str, group: str) -> Done | Stale:
        """Work for a user who is not in the licence group is stale, unless the user holds
        exactly the licence the rules map them to: this step takes a user out of the group
        only after assigning it, so an earlier attempt got that far and lost the DC's answer
        to the removal (a timeout). The user is provisioned, and reported so."""
        stale = Stale(f"{who} is not a member of {group}", user=who)
        inputs = rules.check(ad, self.provisioning)
        if isinstance(inputs, rules.Invalid):
            return stale
        cloud = await self.graph.find_user(to_immutable_id(ad.guid), ad.upn)
        subscribed = {s.part_number: s
                      for s in await self.graph.subscribed_skus(max_age=SKU_MAX_AGE)}
        mapped = subscribed.get(inputs.sku)
        if cloud is None or mapped is None:
            return stale
        facts = {part: SkuFacts.of(s) for part, s in subscribed.items()}
        if replaced(cloud.sku_ids, facts, self.provisioning) != {mapped.sku_id}:
            return stale
        return Done(who, report=_report(ad, who, inputs, "already-licensed"))

    async def _shortage(self, who: str, part_number: str, sku: SubscribedSku,
                        changes: list[Change]) -> NotYet:
        first = await self.ledger.first_today(part_number, datetime.now(UTC).date())
        if first:
            log.warning("license_shortage", user=who, step=STEP, sku=part_number)
        return NotYet(
            Wait.SHORTAGE, f"no free unit of {part_number}", user=who,
            fix=f"buy or free {part_number} licences; the user waits in the licence group",
            changes=tuple(changes),
            shortage=Shortage(part_number, sku.prepaid, sku.consumed, first_today=first),
        )
