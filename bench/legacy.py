"""The existing scripts' method, re-implemented faithfully to compare against: the provisioning
script in ``../shared/handbook/seeds/000_*.txt``, step for step, against the same lab peers.

One scheduled run does what the script does, in its order:

Licensing phase (``O365_License``)
    ``Get-ADGroupMember`` (the whole group, every run); ``Connect-MsolService`` once; for each
    member, strictly one after the other: ``Get-ADUser -Properties *`` (every attribute),
    ``Get-MsolUser`` (one Graph look-up of the user), ``Set-MsolUserLicense -RemoveLicenses``
    when the user holds any licence, ``Set-MsolUser -UsageLocation`` (every time),
    ``Set-MsolUserLicense -AddLicenses`` (a call of its own), ``Remove-ADGroupMember``; at the
    end ``Get-MsolAccountSku`` for the report.
Mailbox phase (``O365_Provision``)
    ``Get-ADGroupMember``; one Exchange session for the run (``New-PSSession`` +
    ``Import-PSSession``); for each member: ``Get-ADUser -Properties *``, ``Enable-RemoteMailbox``
    (no look first), ``Add-ADGroupMember O365_License``, ``Remove-ADGroupMember O365_Provision``.

Mapping onto the lab: the AD cmdlets are LDAP operations as the service account (each
``*-ADGroupMember`` resolves the group and the member by name first, as the cmdlets do); each
MSOnline cmdlet is one Graph request with the same latency the service gets (MSOnline spoke
the retired Azure AD Graph; one request per cmdlet is the fair equivalent); Exchange is the
same PSRP endpoint through the service's ``ExchangeClient`` with one runspace pool per run.
Left out, at no cost to the method: the report and error mails (one per run either way), and
the script's abort on a user not synced yet (``$ErrorActionPreference = 'Stop'`` outside the
``Try``): here the user is counted as an error and the run goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from ldap3 import MODIFY_ADD, MODIFY_DELETE, SUBTREE, Connection
from ldap3.utils.conv import escape_filter_chars

from shared.ad.directory import Directory
from shared.config import Settings
from shared.exchange.client import ExchangeClient
from shared.secrets import SecretProvider

# What Get-MsolUser returns that the script reads, and more: the whole user object.
MSOL_USER = ("id,userPrincipalName,displayName,givenName,surname,mail,mailNickname,usageLocation,"
             "assignedLicenses,assignedPlans,proxyAddresses,onPremisesImmutableId,"
             "onPremisesSyncEnabled,onPremisesLastSyncDateTime,accountEnabled,userType,"
             "createdDateTime")
# Get-ADGroupMember returns ADPrincipal objects: these attributes of every member.
GROUP_MEMBER = ["distinguishedName", "name", "objectClass", "objectGUID", "sAMAccountName",
                "objectSid"]
LICENCES = {"E3": "ENTERPRISEPACK", "Exchange 2": "EXCHANGEENTERPRISE"}  # $E3SKU, $EP2SKU


@dataclass
class RunCounts:
    """What one scheduled run did and cost."""

    seconds: float = 0.0
    mailbox_users: int = 0
    licensed_users: int = 0
    errors: list[str] = field(default_factory=list)
    ldap_operations: int = 0
    ldap_bytes_read: int = 0
    graph_reads: int = 0
    graph_writes: int = 0
    graph_429: int = 0
    exchange_cmdlets: int = 0
    exchange_sessions: int = 0


class LegacyScript:
    """The script, against the lab; ``run()`` is one scheduled run."""

    def __init__(self, settings: Settings, *, graph_token: str) -> None:
        self.settings = settings
        secrets = SecretProvider.from_settings(settings)
        self._ad_password = secrets.resolve(settings.ad.password, setting="AD_PASSWORD")
        self._exchange_password = secrets.resolve(settings.exchange.password,
                                                  setting="EXCHANGE_PASSWORD")
        self._graph_token = graph_token
        self.routing_domain = settings.provisioning.routing_domain  # $RoutingDomain
        self._sku_ids: dict[str, str] = {}

    # -- one run --------------------------------------------------------------------------
    def run(self) -> RunCounts:
        counts = RunCounts()
        directory = Directory(self.settings.ad, self.settings.provisioning,
                              password=self._ad_password, ca_bundle=self.settings.service.ca_bundle,
                              collect_usage=True)
        graph = httpx.Client(base_url=self.settings.graph.url.rstrip("/") + "/",
                             headers={"Authorization": f"Bearer {self._graph_token}"},
                             timeout=60)
        try:
            self._resolve_skus(graph)  # the script has them as constants: not timed
            conn = directory.connection
            conn.usage.reset()
            started = time.perf_counter()
            self._licensing_phase(conn, graph, counts)
            self._mailbox_phase(conn, counts)
            counts.seconds = time.perf_counter() - started
            counts.ldap_bytes_read = conn.usage.bytes_received
        finally:
            graph.close()
            directory.close()
        return counts

    def _resolve_skus(self, graph: httpx.Client) -> None:
        if not self._sku_ids:
            skus = graph.get("subscribedSkus").json()["value"]
            self._sku_ids = {s["skuPartNumber"]: s["skuId"] for s in skus}

    # -- the licensing phase ---------------------------------------------------------------
    def _licensing_phase(self, conn: Connection, graph: httpx.Client, counts: RunCounts) -> None:
        members = self._group_members(conn, self.settings.provisioning.license_group, counts)
        if not members:
            return
        # Connect-MSOL: a token, which the lab hands out up front.
        for member in members:
            sam = member["sAMAccountName"]
            user = self._ad_user(conn, sam, counts)
            licence, country = user.get("extensionAttribute1"), user.get("c")
            upn = user.get("userPrincipalName")
            msol = self._graph(graph, counts, "GET", f"users/{upn}", params={"$select": MSOL_USER})
            if msol is None:
                counts.errors.append(f"{sam}: Get-MsolUser found no user {upn}")
                continue
            if not (licence and country):
                continue
            try:
                existing = [a["skuId"] for a in msol.get("assignedLicenses", [])]
                if existing:  # Set-MsolUserLicense -RemoveLicenses $ExistingLic
                    self._graph(graph, counts, "POST", f"users/{msol['id']}/assignLicense",
                                body={"addLicenses": [], "removeLicenses": existing},
                                required=True)
                part = LICENCES.get(str(licence))
                if part is None:
                    continue  # neither 'E3' nor 'Exchange 2': the script does nothing
                self._graph(graph, counts, "PATCH", f"users/{msol['id']}",  # Set-MsolUser
                            body={"usageLocation": country}, required=True)
                self._graph(graph, counts, "POST", f"users/{msol['id']}/assignLicense",
                            body={"addLicenses": [{"skuId": self._sku_ids[part],
                                                   "disabledPlans": []}],
                                  "removeLicenses": []}, required=True)
                self._change_member(conn, self.settings.provisioning.license_group, sam,
                                    MODIFY_DELETE, counts)
                counts.licensed_users += 1
            except RuntimeError as exc:  # the script's Catch: an error mail, then on
                counts.errors.append(f"{sam}: {exc}")
        self._graph(graph, counts, "GET", "subscribedSkus")  # Get-MsolAccountSku

    # -- the mailbox phase -----------------------------------------------------------------
    def _mailbox_phase(self, conn: Connection, counts: RunCounts) -> None:
        members = self._group_members(conn, self.settings.provisioning.provision_group, counts)
        if not members:
            return
        # Connect-Exchange: New-PSSession + Import-PSSession, once for the run.
        with ExchangeClient(self.settings.exchange, password=self._exchange_password,
                            ca_bundle=self.settings.service.ca_bundle) as exchange:
            for member in members:
                sam = member["sAMAccountName"]
                user = self._ad_user(conn, sam, counts)
                if not (user.get("extensionAttribute1") and user.get("c")):
                    counts.errors.append(f"{sam}: no licence type or country")
                    continue
                try:
                    exchange.enable_remote_mailbox(sam, f"{sam}@{self.routing_domain}")
                    counts.exchange_cmdlets += 1
                    self._change_member(conn, self.settings.provisioning.license_group, sam,
                                        MODIFY_ADD, counts)
                    self._change_member(conn, self.settings.provisioning.provision_group, sam,
                                        MODIFY_DELETE, counts)
                    counts.mailbox_users += 1
                except Exception as exc:  # the script's Catch: an error mail, then on
                    counts.errors.append(f"{sam}: {type(exc).__name__}: {exc}")
            counts.exchange_sessions += exchange.pools_opened

    # -- the AD cmdlets --------------------------------------------------------------------
    def _search(self, conn: Connection, ldap_filter: str, attributes: list[str],
                counts: RunCounts, *, paged: bool = False) -> list[dict[str, Any]]:
        base = self.settings.ad.base_dn
        if paged:
            entries = list(conn.extend.standard.paged_search(
                base, ldap_filter, SUBTREE, attributes=attributes, paged_size=1000,
                generator=True))
            counts.ldap_operations += max(1, -(-len(entries) // 1000))
        else:
            conn.search(base, ldap_filter, SUBTREE, attributes=attributes)
            entries = list(conn.response or [])
            counts.ldap_operations += 1
        return [e for e in entries if e.get("type") == "searchResEntry"]

    def _group_dn(self, conn: Connection, name: str, counts: RunCounts) -> str:
        value = escape_filter_chars(name)
        found = self._search(conn, f"(&(objectClass=group)(|(sAMAccountName={value})"
                             f"(cn={value})))", ["distinguishedName"], counts)
        return str(found[0]["dn"])

    def _group_members(self, conn: Connection, group: str,
                       counts: RunCounts) -> list[dict[str, Any]]:
        """Get-ADGroupMember: the group, then every member object."""
        group_dn = self._group_dn(conn, group, counts)
        entries = self._search(conn, f"(memberOf={escape_filter_chars(group_dn)})",
                               GROUP_MEMBER, counts, paged=True)
        return [{"dn": e["dn"], "sAMAccountName": _one(e["attributes"], "sAMAccountName")}
                for e in entries]

    def _ad_user(self, conn: Connection, sam: str, counts: RunCounts) -> dict[str, Any]:
        """Get-ADUser $sam -Properties *."""
        found = self._search(conn, f"(&(objectCategory=person)(objectClass=user)"
                             f"(sAMAccountName={escape_filter_chars(sam)}))", ["*"], counts)
        if not found:
            return {}
        return {name: _one(found[0]["attributes"], name) for name in found[0]["attributes"]}

    def _change_member(self, conn: Connection, group: str, sam: str, change: str,
                       counts: RunCounts) -> None:
        """Add-/Remove-ADGroupMember -Identity group -Members sam."""
        group_dn = self._group_dn(conn, group, counts)
        member = self._search(conn, f"(sAMAccountName={escape_filter_chars(sam)})",
                              ["distinguishedName"], counts)
        counts.ldap_operations += 1
        if not member or not conn.modify(group_dn, {"member": [(change, [member[0]["dn"]])]}):
            raise RuntimeError(f"{'Add' if change == MODIFY_ADD else 'Remove'}-ADGroupMember "
                               f"{group} {sam} failed: {conn.result.get('description')}")

    # -- MSOnline, one Graph request per cmdlet --------------------------------------------
    def _graph(self, graph: httpx.Client, counts: RunCounts, method: str, path: str, *,
               params: dict[str, str] | None = None, body: Any = None,
               required: bool = False) -> Any:
        while True:
            response = graph.request(method, path, params=params, json=body)
            if method == "GET":
                counts.graph_reads += 1
            else:
                counts.graph_writes += 1
            if response.status_code != 429:
                break
            counts.graph_429 += 1
            time.sleep(float(response.headers.get("Retry-After", "1")))
        if response.status_code >= 400:
            if required:
                raise RuntimeError(f"{method} {path}: HTTP {response.status_code} "
                                   f"{response.text[:200]}")
            return None
        return response.json() if response.content else {}


def _one(attributes: dict[str, Any], name: str) -> Any:
    value = attributes.get(name)
    if isinstance(value, list):
        return value[0] if value else None
    return value


def measure(lab: Any, sample: int) -> dict[str, Any]:
    """Seed ``sample`` fresh users into O365_Provision of the running ``lab`` (latencies as
    they are set) and provision them the script's way: a first run mail-enables them, a second
    one, once sync has carried their routing address to the cloud, licenses them. The time
    between the runs (the schedule, the sync) is not counted: only the two runs' own work."""
    from lab import seed
    from shared.config import load_settings

    from .e2e import LabGraph

    if not 0 < sample < seed.SNAPSHOT_MIN:
        raise ValueError(f"the legacy sample must be 1-{seed.SNAPSHOT_MIN - 1} users")
    leftovers = empty_groups(lab)
    seed.seed(lab, sample)
    settings = load_settings(lab.settings_file)
    graph = LabGraph(lab)
    try:
        graph.units_for(sample)
        script = LegacyScript(settings, graph_token=lab.settings["AZURE_STATIC_TOKEN"])
        graph.wait_synced(0)
        graph.post("stats/reset", {})
        first = script.run()
        graph.wait_synced(0)  # the next scheduled run comes after Entra Connect's cycle
        second = script.run()
        stats = graph.get("stats")
    finally:
        graph.close()
    runs = [first, second]
    seconds = sum(r.seconds for r in runs)
    licensed = sum(r.licensed_users for r in runs)
    total = stats["total"]
    return {
        "sample_users": sample,
        "earlier_users_taken_out_of_the_groups": leftovers,
        "licensed": licensed,
        "mailbox_enabled": sum(r.mailbox_users for r in runs),
        "errors": [e for r in runs for e in r.errors][:5],
        "seconds": round(seconds, 1),
        "run_seconds": [round(r.seconds, 1) for r in runs],
        "users_per_second": round(licensed / seconds, 3) if seconds else 0.0,
        "graph_reads_per_user": round(sum(r.graph_reads for r in runs) / sample, 2),
        "graph_writes_per_user": round(sum(r.graph_writes for r in runs) / sample, 2),
        "graph_429": sum(r.graph_429 for r in runs),
        "graph_seen_by_lab": {"reads": total.get("reads", 0), "writes": total.get("writes", 0),
                              "429": total.get("429", 0)},
        "ldap_operations_per_user": round(sum(r.ldap_operations for r in runs) / sample, 1),
        "ldap_bytes_read_per_user": round(sum(r.ldap_bytes_read for r in runs) / sample),
        "exchange_cmdlets_per_user": round(sum(r.exchange_cmdlets for r in runs) / sample, 2),
        "exchange_sessions": sum(r.exchange_sessions for r in runs),
        "cloud_mailboxes_created": len(stats.get("cloudMailboxes", [])),
    }


def empty_groups(lab: Any) -> int:
    """Take whatever an earlier run left in the two groups out of them, so that the script's
    runs provision the sample and nothing else; returns how many members that was."""
    from lab import ad

    conn = ad.admin_connection(lab, timeout=60)
    removed = 0
    try:
        for group in (ad.PROVISION_GROUP, ad.LICENSE_GROUP):
            group_dn = f"CN={group},{ad.GROUPS_OU}"
            conn.search(group_dn, "(objectClass=group)", "BASE", attributes=["member"])
            members = list(conn.response[0]["attributes"].get("member") or [])
            if members:
                conn.modify(group_dn, {"member": [(MODIFY_DELETE, members)]})
                removed += len(members)
    finally:
        conn.unbind()
    return removed
