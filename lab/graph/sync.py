"""The lab's Entra Connect: mirrors in-scope AD users into cloud users after a delay.

**Scope**: every AD user (``objectClass=user``, not a computer) under
``LAB_GRAPH_SYNC_SCOPE`` (default: the whole domain, ``LAB_AD_BASE_DN``) that is not a
critical system object (Administrator, Guest, krbtgt) and is not deleted. A user that leaves
the scope (deleted in AD, or moved outside the scope DN) is soft-deleted in the cloud.

**Efficiency**: each poll asks only for objects whose ``uSNChanged`` is above the highest one
seen (paged; the first poll reads everything once), with the Show Deleted control so deletions
are seen too. At 20,000 users a quiet poll returns nothing.

**Mapping**, as Entra Connect's default rules do: ``onPremisesImmutableId`` = base64 of the
``objectGUID`` bytes as AD stores them (little-endian), ``onPremisesSyncEnabled`` true,
``onPremisesSamAccountName``, ``userPrincipalName``, ``mail``, ``proxyAddresses``,
``displayName``, ``givenName``, ``surname`` (``sn``), ``onPremisesExtensionAttributes``
(``extensionAttribute1..15``), ``onPremisesDistinguishedName``, ``onPremisesDomainName``,
``onPremisesSecurityIdentifier``, ``accountEnabled`` (``userAccountControl``), and for
Exchange Online ``msExchRemoteRecipientType`` (the cloud mailbox's type: ``mailboxes``). No
``usageLocation``: the service must set it.

**Cycles**, as Entra Connect's scheduler runs them: a delta cycle starts every
``sync_interval_seconds`` (30 minutes by default, Connect's default; counted from the end of
the previous cycle, as Connect sets ``NextSyncCycleStartTimeInUTC`` when a cycle ends) and runs
``sync_delay_seconds`` (30 s by default: a small directory's delta cycle). It imports what AD
holds when it *starts* and exports it to the cloud when it *ends*: a change made during a
cycle waits for the next one. The first cycle runs at start-up.

**Triggers**: ``Start-ADSyncSyncCycle -PolicyType Delta`` (the lab's Connect endpoint, through
``POST /_lab/sync/cycle``) starts a cycle now, or answers busy while one runs, as Connect does
("Connector: <tenant>.onmicrosoft.com - AAD is busy."). ``provision_one`` is Cloud Sync's
provision-on-demand of one user (``lab/graph/ondemand.py``).

Tests that want the old quick mirroring set the knobs explicitly (``tests/conftest.py``:
a cycle every second that runs one second).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .mailboxes import cloud_purpose
from .server import JSON, Graph, control
from .store import now_iso

SHOW_DELETED = "1.2.840.113556.1.4.417"
ATTRIBUTES = [
    "objectGUID", "objectSid", "sAMAccountName", "userPrincipalName", "mail", "proxyAddresses",
    "displayName", "givenName", "sn", "mailNickname", "distinguishedName", "userAccountControl",
    "isDeleted", "isCriticalSystemObject", "uSNChanged", "msExchRemoteRecipientType",
    *[f"extensionAttribute{i}" for i in range(1, 16)],
]
ACCOUNT_DISABLED = 0x2


@dataclass(frozen=True)
class AdSource:
    url: str
    user: str
    password: str
    base_dn: str
    scope_dn: str
    ca_bundle: Path | None


@dataclass
class Change:
    due: float
    props: JSON | None  # None: out of scope → soft delete


@dataclass
class SyncEngine:
    graph: Graph
    source: AdSource | None
    next_usn: int = 0
    pending: dict[str, Change] = field(default_factory=dict)  # by immutable id
    polls: int = 0
    mirrored: int = 0
    deleted: int = 0
    last_error: str = ""
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    running_until: float | None = None  # the cycle that runs now ends (monotonic)
    next_cycle_at: float = 0.0
    cycles: int = 0
    triggered: int = 0
    busy_answers: int = 0
    last_sync: str = ""  # when the last cycle exported (onPremisesLastSyncDateTime)
    ended_at: float = 0.0
    # Get-ADSyncScheduler's NextSyncCycleStartTimeInUTC: set when a cycle ends (and when the
    # schedule changes), as Connect's scheduler does; read by the lab's Connect endpoint.
    next_cycle_utc: str = ""
    fail_cycles: int = 0  # the next cycles that fail their export: their changes wait
    fail_on_demand: int = 0  # the next provisionOnDemand exports that fail
    failed_cycles: int = 0

    def reschedule(self) -> None:
        """The schedule changed (``sync_interval_seconds``): the next cycle by the new one."""
        self.next_cycle_at = self.ended_at + self.graph.knobs.sync_interval_seconds
        self._next_utc()
        self.wake.set()

    def _next_utc(self) -> None:
        at = time.time() + max(0.0, self.next_cycle_at - time.monotonic())
        self.next_cycle_utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))

    async def run(self) -> None:
        """Run cycles on schedule (and when triggered) until cancelled."""
        while True:
            now = time.monotonic()
            if self.running_until is not None and now >= self.running_until:
                self._end_cycle()
            if self.running_until is None and time.monotonic() >= self.next_cycle_at:
                await self.start_cycle()
            self.polls += 1
            self.wake.clear()
            until = self.running_until if self.running_until is not None else self.next_cycle_at
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), max(0.01, until - time.monotonic()))

    def _end_cycle(self) -> None:
        """The export of the cycle that ends: what it imported reaches the cloud, unless the
        cycle fails (``fail_cycles``): its changes wait for the next cycle, as an export
        error leaves them pending in Connect's connector space."""
        if self.fail_cycles > 0:
            self.fail_cycles -= 1
            self.failed_cycles += 1
            for change in self.pending.values():
                change.due = float("inf")  # exported by the next cycle that succeeds
        else:
            for change in self.pending.values():
                change.due = min(change.due, time.monotonic())
            self._apply_due()
            self.last_sync = now_iso()
        self.running_until = None
        self.ended_at = time.monotonic()
        self.next_cycle_at = self.ended_at + self.graph.knobs.sync_interval_seconds
        self._next_utc()

    async def start_cycle(self) -> bool:
        """Start a delta cycle now: import AD's changes; they are exported when it ends.
        False (busy) while a cycle runs."""
        if self.running_until is not None:
            self.busy_answers += 1
            return False
        knobs = self.graph.knobs
        self.running_until = time.monotonic() + knobs.sync_delay_seconds
        self.cycles += 1
        if self.source is not None and knobs.sync_enabled:
            try:
                records = await asyncio.to_thread(self._poll)
                self._queue(records)
                self.last_error = ""
            except Exception as exc:  # the lab keeps running; the state says why
                self.last_error = f"{type(exc).__name__}: {exc}"
        self.wake.set()
        return True

    # -- LDAP (in a thread) ------------------------------------------------------------
    def _poll(self, dn: str | None = None) -> list[dict[str, Any]]:
        """AD users changed since the last import; or the one user at ``dn``."""
        import ldap3

        assert self.source is not None
        source = self.source
        parts = urlsplit(source.url)
        tls = ldap3.Tls(
            validate=ssl.CERT_REQUIRED,
            ca_certs_file=str(source.ca_bundle) if source.ca_bundle else None,
        )
        server = ldap3.Server(parts.hostname or "127.0.0.1", port=parts.port,
                              use_ssl=parts.scheme == "ldaps", tls=tls, get_info=ldap3.NONE,
                              connect_timeout=5)
        conn = ldap3.Connection(server, user=source.user, password=source.password,
                                auto_bind=ldap3.AUTO_BIND_NONE, receive_timeout=30,
                                raise_exceptions=True)
        try:
            conn.open()
            if parts.scheme == "ldap":
                conn.start_tls()
            conn.bind()
            # Tombstones keep objectClass but lose objectCategory: filter on the class.
            search = (f"(&(objectClass=user)(!(objectClass=computer))"
                      f"(uSNChanged>={self.next_usn}))")
            if dn is not None:
                search = "(&(objectClass=user)(!(objectClass=computer)))"
            results = conn.extend.standard.paged_search(
                dn or source.base_dn, search, ldap3.BASE if dn else ldap3.SUBTREE,
                attributes=ATTRIBUTES, paged_size=1000,
                controls=[(SHOW_DELETED, True, None)], generator=True,
            )
            records = []
            for entry in results:
                if entry.get("type") != "searchResEntry":
                    continue
                records.append({"dn": entry["dn"], "attrs": entry["attributes"],
                                "raw": entry["raw_attributes"]})
            return records
        finally:
            with contextlib.suppress(Exception):
                conn.unbind()

    # -- on the loop -------------------------------------------------------------------
    def _queue(self, records: list[dict[str, Any]]) -> None:
        due = self.running_until or time.monotonic()
        for record in records:
            attrs, raw = record["attrs"], record["raw"]
            guid_raw = (raw.get("objectGUID") or [b""])[0]
            if len(guid_raw) != 16:
                continue
            usn = _first_int(attrs.get("uSNChanged"))
            self.next_usn = max(self.next_usn, usn + 1)
            immutable = base64.b64encode(guid_raw).decode()
            props = self._props(record) if self._in_scope(record) else None
            if props is None and immutable not in self.graph.tenant.by_immutable \
                    and immutable not in self.pending:
                continue
            earlier = self.pending.get(immutable)
            self.pending[immutable] = Change(min(due, earlier.due) if earlier else due, props)

    async def provision_one(self, dn: str) -> str:
        """Cloud Sync's provision on demand: the user at ``dn`` exported now. The result as
        Graph words it: Success, Skipped (out of scope) or Failure (no such object, or an
        export that fails: ``fail_on_demand``)."""
        if self.fail_on_demand > 0:
            self.fail_on_demand -= 1
            return "Failure"
        try:
            records = await asyncio.to_thread(self._poll, dn)
        except Exception:  # noSuchObject and the like: the object cannot be read
            return "Failure"
        if not records or not self._in_scope(records[0]):
            return "Skipped" if records else "Failure"
        raw = records[0]["raw"]
        immutable = base64.b64encode(raw["objectGUID"][0]).decode()
        self.pending[immutable] = Change(time.monotonic(), self._props(records[0]))
        self._apply_due()
        return "Success"

    def _in_scope(self, record: dict[str, Any]) -> bool:
        assert self.source is not None
        attrs = record["attrs"]
        if _truthy(attrs.get("isDeleted")) or _truthy(attrs.get("isCriticalSystemObject")):
            return False
        return str(record["dn"]).lower().endswith(self.source.scope_dn.lower())

    def _props(self, record: dict[str, Any]) -> JSON:
        assert self.source is not None
        attrs, raw = record["attrs"], record["raw"]
        sam = _first(attrs.get("sAMAccountName")) or ""
        upn = _first(attrs.get("userPrincipalName")) or f"{sam}@{self.graph.tenant.domain}"
        uac = _first_int(attrs.get("userAccountControl"))
        domain = ".".join(p.split("=", 1)[1] for p in self.source.base_dn.split(",")
                          if p.strip().lower().startswith("dc="))
        return {
            "onPremisesImmutableId": base64.b64encode(raw["objectGUID"][0]).decode(),
            "onPremisesSyncEnabled": True,
            "onPremisesSamAccountName": sam,
            "onPremisesDistinguishedName": record["dn"],
            "onPremisesDomainName": domain,
            "onPremisesSecurityIdentifier": _sid((raw.get("objectSid") or [b""])[0]),
            "onPremisesExtensionAttributes": {
                f"extensionAttribute{i}": _first(attrs.get(f"extensionAttribute{i}"))
                for i in range(1, 16)
            },
            "userPrincipalName": upn,
            "mail": _first(attrs.get("mail")),
            "mailNickname": _first(attrs.get("mailNickname")) or sam,
            "proxyAddresses": [str(a) for a in attrs.get("proxyAddresses") or []],
            "displayName": _first(attrs.get("displayName")) or sam,
            "givenName": _first(attrs.get("givenName")),
            "surname": _first(attrs.get("sn")),
            "accountEnabled": not uac & ACCOUNT_DISABLED,
            # Exchange Online's reading of the on-premises type (lab/graph/mailboxes.py)
            "_mailboxPurpose": cloud_purpose(_first(attrs.get("msExchRemoteRecipientType"))),
        }

    def _apply_due(self) -> None:
        now = time.monotonic()
        tenant = self.graph.tenant
        for immutable, change in list(self.pending.items()):
            if change.due > now:
                continue
            del self.pending[immutable]
            uid = tenant.by_immutable.get(immutable)
            user = tenant.users.get(uid) if uid else None
            if change.props is None:
                if user is not None:
                    tenant.soft_delete(user)
                    self.deleted += 1
                continue
            props = {**change.props, "onPremisesLastSyncDateTime": now_iso()}
            if user is None:
                clash = tenant.find(props["userPrincipalName"])
                if clash is not None:  # Entra Connect reports a UPN conflict and skips
                    self.last_error = f"UPN conflict for {props['userPrincipalName']}"
                    continue
                tenant.add(props)
            else:
                tenant.update(user, props)
            self.mirrored += 1

    def state(self) -> JSON:
        return {
            "configured": self.source is not None,
            "polls": self.polls,
            "nextUsn": self.next_usn,
            "pending": len(self.pending),
            "mirrored": self.mirrored,
            "deleted": self.deleted,
            "lastError": self.last_error,
            "cycles": self.cycles,
            "running": self.running_until is not None,
            "triggered": self.triggered,
            "busyAnswers": self.busy_answers,
            "lastSync": self.last_sync,
            "nextSyncCycleStartTimeInUTC": self.next_cycle_utc,
            "failedCycles": self.failed_cycles,
        }


def _first(value: Any) -> Any:
    if isinstance(value, list):
        return value[0] if value else None
    return value if value not in ("", b"") else None


def _sid(raw: bytes) -> str | None:
    from ldap3.protocol.formatters.formatters import format_sid

    return str(format_sid(raw)) if raw else None


def _first_int(value: Any) -> int:
    found = _first(value)
    return int(found) if found is not None else 0


def _truthy(value: Any) -> bool:
    found = _first(value)
    return found is True or str(found).upper() == "TRUE"


ENGINE: list[SyncEngine] = []


@control("POST", "sync")
async def sync_now(graph: Graph, body: JSON) -> JSON:
    """A cycle now, or after the one that runs (lab only: never busy); ``{"wait": true}``
    waits until that cycle has exported."""
    engine = ENGINE[0]
    deadline = time.monotonic() + 30 + graph.knobs.sync_delay_seconds * 2
    while engine.running_until is not None or not await engine.start_cycle():
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    target = engine.cycles
    if body.get("wait"):
        while (engine.cycles == target and engine.running_until is not None
               and time.monotonic() < deadline):
            await asyncio.sleep(0.05)
    return engine.state()


@control("POST", "sync/cycle")
async def sync_cycle(graph: Graph, body: JSON) -> JSON:
    """What ``Start-ADSyncSyncCycle -PolicyType Delta`` does on the Connect server: start a
    cycle, or answer busy while one runs."""
    engine = ENGINE[0]
    started = await engine.start_cycle()
    if started:
        engine.triggered += 1
    return {"started": started, "tenant": graph.tenant.domain, **engine.state()}


@control("GET", "sync")
async def sync_state(graph: Graph, _: JSON) -> JSON:
    return ENGINE[0].state()


@control("POST", "sync/fail")
async def sync_fail(graph: Graph, body: JSON) -> JSON:
    """The next ``cycles`` cycles fail their export (lab only): their changes wait; the next
    ``onDemand`` provisionOnDemand exports fail (``Failure``)."""
    ENGINE[0].fail_cycles = int(body.get("cycles", 0))
    ENGINE[0].fail_on_demand = int(body.get("onDemand", 0))
    return ENGINE[0].state()
