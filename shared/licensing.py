"""The licence step: a pure planner and a thin executor.

``plan(...)`` decides from facts alone (the licence attribute, ``c``, the cloud user's
licences, usage location and proxy addresses, the SKU's free units) and returns actions;
``LicenseStep.run`` gathers the facts from AD and Graph, carries the actions out, and returns a
``LicenseOutcome`` for the report and the audit log.

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
   every other one (none when the user already has exactly that SKU); ``RemoveFromGroup``.

Not synced yet (no cloud user) and waiting for the routing address are ``TransientError``s
with a growing ``retry_after``: ``SYNC_RETRY_MIN_SECONDS`` doubling up to
``SYNC_RETRY_MAX_SECONDS``; after ``SYNC_DEADLINE_HOURS`` since the first attempt they become
``PermanentError``s ("not synced" / "no routing address").
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Protocol

import iso3166

from .config import ProvisioningSettings
from .directory import Directory, DirectoryUser
from .entra import immutable_id as to_immutable_id
from .errors import PermanentError, TransientError
from .graph import GraphClient, SubscribedSku
from .ledger import Change
from .log import get_logger

log = get_logger(__name__)

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


def valid_country(value: str | None) -> str | None:
    """``value`` as an upper-case ISO 3166-1 alpha-2 code, or None when it is not one."""
    code = (value or "").strip().upper()
    return code if len(code) == 2 and code in iso3166.countries_by_alpha2 else None


def routing_address(sam: str, routing_domain: str) -> str:
    return f"{sam}@{routing_domain}".lower()


def has_address(proxy_addresses: Sequence[str], address: str) -> bool:
    """Whether ``address`` is among ``proxy_addresses`` (any prefix case: smtp:/SMTP:)."""
    wanted = f"smtp:{address.lower()}"
    return any(p.lower() == wanted for p in proxy_addresses)


def plan(
    *,
    user: str,
    sam: str,
    license_name: str | None,
    country: str | None,
    current_skus: frozenset[uuid.UUID],
    usage_location: str | None,
    proxy_addresses: Sequence[str],
    skus: Mapping[str, SkuFacts],
    provisioning: ProvisioningSettings,
) -> list[Action]:
    """The actions that license ``user``; raises ``PermanentError`` for bad input.

    ``skus`` maps part numbers to the tenant's SKUs; ``current_skus`` are the skuIds the
    cloud user holds now.
    """
    attribute = provisioning.license_attribute
    part = provisioning.license_map.get((license_name or "").strip())
    if part is None:
        known = ", ".join(sorted(provisioning.license_map))
        raise PermanentError(
            f"{attribute} is '{license_name or ''}', which names no licence",
            user=user, step=STEP, fix=f"set {attribute} to one of: {known}",
        )
    wanted_location = valid_country(country)
    if wanted_location is None:
        raise PermanentError(
            f"{provisioning.country_attribute} is '{country or ''}', which is not an ISO 3166-1 "
            "alpha-2 country code", user=user, step=STEP,
            fix=f"set {provisioning.country_attribute} to the user's country, e.g. DE or US",
        )
    sku = skus.get(part)
    if sku is None:
        raise PermanentError(
            f"the tenant has no subscription for {part} ({attribute} '{license_name}')",
            user=user, step=STEP, fix=f"buy {part} or map '{license_name}' to another SKU",
        )
    if sku.has_exchange:
        address = routing_address(sam, provisioning.routing_domain)
        if not has_address(proxy_addresses, address):
            return [WaitForRouting(address)]
    has_it = sku.sku_id in current_skus
    if not has_it and sku.free <= 0:
        return [ReportShortage(sku.part_number, sku.sku_id)]
    actions: list[Action] = []
    if usage_location != wanted_location:
        actions.append(SetUsageLocation(usage_location, wanted_location))
    others = tuple(sorted(current_skus - {sku.sku_id}))
    if not has_it or others:
        actions.append(AssignLicense(() if has_it else (sku.sku_id,), others))
    actions.append(RemoveFromGroup(provisioning.license_group))
    return actions


def retry_delay(first_attempt_at: datetime, now: datetime,
                provisioning: ProvisioningSettings) -> float:
    """The wait before the next try: the time waited so far, within [min, max].

    Retrying after as long as we have already waited doubles the delay each time, starting
    from ``SYNC_RETRY_MIN_SECONDS``."""
    waited = (now - first_attempt_at).total_seconds()
    return max(provisioning.sync_retry_min_seconds,
               min(provisioning.sync_retry_max_seconds, waited))


def deadline_passed(first_attempt_at: datetime, now: datetime,
                    provisioning: ProvisioningSettings) -> bool:
    return (now - first_attempt_at).total_seconds() >= provisioning.sync_deadline_hours * 3600


# -- shortage notices ------------------------------------------------------------------------
@dataclass(frozen=True)
class ShortageNotice:
    """No free unit of ``part_number``; sent once per SKU per day."""

    part_number: str
    sku_id: uuid.UUID
    prepaid: int
    consumed: int
    day: date

    def __str__(self) -> str:
        return (f"licence shortage: {self.part_number} has no free unit "
                f"({self.consumed} of {self.prepaid} used); users wait in the licence group. "
                f"Fix: buy more {self.part_number} licences or free some")


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

    def __init__(self, table: object) -> None:
        # an azure.data.tables.aio.TableClient; typed loosely to keep this module light
        self.table = table

    async def first_today(self, part_number: str, day: date) -> bool:
        from azure.core.exceptions import ResourceExistsError

        entity = {"PartitionKey": "licenceShortage", "RowKey": f"{day.isoformat()}_{part_number}"}
        try:
            await self.table.create_entity(entity)  # type: ignore[attr-defined]
        except ResourceExistsError:
            return False
        return True


# How stale the free-unit count may be; reading subscribedSkus for every user cost a Graph
# read and ~46 ms of parsing per user.
SKU_MAX_AGE = 5.0
# Graph's 400 message when a SKU has no unit left at the moment of assignLicense.
NO_UNITS = "does not have any available licenses"


# -- the step ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LicenseOutcome:
    """What the step did for one user."""

    user: str  # UPN, or sAMAccountName when the user has none
    mail: str | None
    license_name: str | None
    sku: str
    status: str  # "licensed" | "already-licensed" | "shortage"
    changes: tuple[Change, ...] = ()
    shortage: ShortageNotice | None = None  # set only for the first shortage of the day
    cloud_id: str | None = None
    correlation_id: str = ""
    sam: str = ""
    display_name: str | None = None


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

    async def _directory(self, call: Any, *args: Any) -> Any:
        async with self._directory_lock:
            return await asyncio.to_thread(call, *args)

    async def run(
        self,
        guid: uuid.UUID,
        *,
        first_attempt_at: datetime,
        correlation_id: str,
        now: datetime | None = None,
    ) -> LicenseOutcome:
        """License the AD user ``guid``; raises ``TransientError`` to be retried later."""
        now = now or datetime.now(UTC)
        ad: DirectoryUser = await self._directory(self.directory.user, guid)
        who = ad.upn or ad.sam
        cloud = await self.graph.find_user(to_immutable_id(guid), ad.upn)
        if cloud is None:
            self._wait_or_give_up(
                who, first_attempt_at, now,
                reason="has not synced to Entra ID yet",
                late="not synced: no cloud user with this objectGUID or UPN",
                fix="check that the user's OU is in Entra Connect's scope and that sync runs",
            )
        assert cloud is not None
        subscribed = {
            s.part_number: s for s in await self.graph.subscribed_skus(max_age=SKU_MAX_AGE)
        }
        skus = {part: SkuFacts.of(s) for part, s in subscribed.items()}
        by_id = {f.sku_id: f.part_number for f in skus.values()}
        actions = plan(
            user=who, sam=ad.sam, license_name=ad.license_name, country=ad.country,
            current_skus=cloud.sku_ids, usage_location=cloud.usage_location,
            proxy_addresses=cloud.proxy_addresses, skus=skus, provisioning=self.provisioning,
        )
        part = self.provisioning.license_map[(ad.license_name or "").strip()]
        changes: list[Change] = []
        for action in actions:
            if isinstance(action, WaitForRouting):
                self._wait_or_give_up(
                    who, first_attempt_at, now,
                    reason=f"the cloud user's proxyAddresses lack {action.address} yet",
                    late=f"no routing address: proxyAddresses never showed {action.address}",
                    fix="check that Enable-RemoteMailbox ran and that sync carries proxyAddresses",
                )
            elif isinstance(action, ReportShortage):
                return await self._shortage(ad, who, action, subscribed[action.part_number],
                                            correlation_id)
            elif isinstance(action, SetUsageLocation):
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
                    sku = subscribed[part]
                    return await self._shortage(ad, who, ReportShortage(part, sku.sku_id), sku,
                                                correlation_id)
                before = ",".join(sorted(by_id.get(s, str(s)) for s in cloud.sku_ids)) or None
                changes.append(Change("licenses", before, part))
                log.info("license_assigned", user=who, step=STEP, sku=part,
                         removed=[by_id.get(s, str(s)) for s in action.remove],
                         correlation_id=correlation_id)
            elif isinstance(action, RemoveFromGroup):
                await self._directory(self.directory.remove_member, action.group, ad)
        status = "licensed" if any(c.what == "licenses" for c in changes) \
            else "already-licensed"
        return LicenseOutcome(who, ad.mail, ad.license_name, part, status, tuple(changes),
                              cloud_id=cloud.id, correlation_id=correlation_id, sam=ad.sam,
                              display_name=ad.display_name)

    def _wait_or_give_up(self, who: str, first: datetime, now: datetime, *, reason: str,
                         late: str, fix: str) -> None:
        if deadline_passed(first, now, self.provisioning):
            hours = self.provisioning.sync_deadline_hours
            raise PermanentError(f"{late} after {hours:g} h", user=who, step=STEP, fix=fix)
        raise TransientError(reason, user=who, step=STEP, fix="none needed; retried later",
                             retry_after=retry_delay(first, now, self.provisioning))

    async def _shortage(self, ad: DirectoryUser, who: str, action: ReportShortage,
                        sku: SubscribedSku, correlation_id: str) -> LicenseOutcome:
        today = datetime.now(UTC).date()
        notice = None
        if await self.ledger.first_today(action.part_number, today):
            notice = ShortageNotice(action.part_number, action.sku_id, sku.prepaid,
                                    sku.consumed, today)
            log.warning("license_shortage", user=who, step=STEP, sku=action.part_number,
                        correlation_id=correlation_id)
        return LicenseOutcome(who, ad.mail, ad.license_name, action.part_number, "shortage",
                              shortage=notice, correlation_id=correlation_id)
