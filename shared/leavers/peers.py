"""The leaver's calls to Exchange and Graph, thin: each reads or does one thing and says what
it found; the planner decides (``shared.leavers.planner``).

**Mailbox type, the hybrid way.** A synced user's mailbox type is the on-premises object's:
``Set-RemoteMailbox -Type Shared`` writes msExchRemoteRecipientType (SharedMailbox, 0x60) and
RecipientTypeDetails RemoteSharedMailbox; Entra Connect carries it to Exchange Online, which
makes the cloud mailbox shared. Converting in Exchange Online alone is undone by the next sync
("Shared mailboxes are unexpectedly converted to user mailboxes after directory synchronization
runs in an Exchange hybrid deployment", learn.microsoft.com/exchange/troubleshoot/user-and-
shared-mailboxes/shared-mailboxes-unexpectedly-converted-to-user-mailboxes). So the cloud side
needs nothing but a sync cycle, and ``cloud_type`` reads whether it has happened: Graph v1.0
``GET users/{id}/mailboxSettings/userPurpose`` (mailboxSettings resource, read-only
``userPurpose``: user, linked, shared, room, equipment, others; MailboxSettings.Read). A user
without an Exchange Online mailbox is Graph's 404 MailboxNotEnabledForRESTAPI.

**Mailbox facts** (Microsoft: a shared mailbox needs a licence above 50 GB, with an archive, or
on litigation hold), without Exchange Online PowerShell:

- size and archive: Graph v1.0 ``reports/getMailboxUsageDetail(period='D7')`` (Reports.Read.All;
  302 to a CSV with "User Principal Name", "Storage Used (Byte)", "Has Archive"). A user not in
  the report (a new mailbox: reports lag a day or two), or a tenant that conceals names in
  reports (adminReportSettings ``displayConcealedNames``: the report shows hashes), is unknown.
- archive and hold on-premises: ``Get-RemoteMailbox``'s ArchiveStatus (msExchArchiveStatus) and
  InPlaceHolds (msExchUserHoldPolicies), which Entra Connect's Exchange hybrid writeback copies
  from Exchange Online ("Microsoft Entra Connect Sync: Attributes synchronized to Microsoft Entra
  ID", section Exchange hybrid writeback: msExchArchiveStatus "Online Archive",
  msExchUserHoldPolicies "Litigation Hold: Enables cloud services to determine which users are
  under Litigation Hold"). Any hold counts: a mailbox on In-Place or eDiscovery hold needs a
  licence too. An Exchange that does not report the property leaves the fact unknown.

Unknown is ``None``: the planner keeps the licence and says which fact was unknown.

**Licences**: one ``assignLicense`` with ``removeLicenses`` (LicenseAssignment.ReadWrite.All),
of the SKUs the user still holds (a re-run after the removal changes nothing). A licence
inherited from a group is refused by Graph ("User license is inherited from a group membership
and it cannot be removed directly from the user."): that becomes a ``PermanentError`` naming the
user, the SKU, the group and the fix.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from kiota_abstractions.method import Method
from kiota_abstractions.request_information import RequestInformation

from shared.errors import PermanentError, ProvisioningError
from shared.exchange.client import ExchangeClient, RemoteMailbox
from shared.graph.client import ERRORS, GraphClient, GraphRefusal, objects, segment
from shared.log import get_logger

log = get_logger(__name__)

STEP = "leaver"
REPORT = "reports/getMailboxUsageDetail(period='D7')"
REPORT_MAX_AGE = 900.0  # the report refreshes daily; one read serves a cycle's leavers
MISSING_MAX_AGE = 30.0  # ... but a user missing from it is looked for in a fresh read
INHERITED = "inherited from a group"


class MailboxType(StrEnum):
    USER = "user"  # Exchange: RecipientTypeDetails RemoteUserMailbox; Graph userPurpose "user"
    SHARED = "shared"  # RemoteSharedMailbox; Graph mailboxSettings.userPurpose "shared"
    NONE = "none"  # no remote mailbox / no cloud mailbox (or a room, equipment, linked one)


@dataclass(frozen=True)
class MailboxFacts:
    size_bytes: int | None  # None: unknown
    archive: bool | None  # None: unknown
    litigation_hold: bool | None  # any hold; None: unknown


_PREMISES = {"RemoteUserMailbox": MailboxType.USER, "RemoteSharedMailbox": MailboxType.SHARED}
_CLOUD = {"user": MailboxType.USER, "shared": MailboxType.SHARED}


def _premises(mailbox: RemoteMailbox | None) -> MailboxType:
    if mailbox is None:
        return MailboxType.NONE
    return _PREMISES.get(mailbox.recipient_type_details or "", MailboxType.NONE)


# -- Exchange on-premises (blocking: call from a thread) -----------------------------------------
def premises_type(exchange: ExchangeClient, identity: str) -> MailboxType:
    """The remote mailbox's type as Exchange on-premises has it (``Get-RemoteMailbox``)."""
    return _premises(exchange.get_remote_mailbox(identity))


def convert_to_shared(exchange: ExchangeClient, identity: str, *, hide: bool) -> bool:
    """``Set-RemoteMailbox -Identity identity -Type Shared`` (and
    ``-HiddenFromAddressListsEnabled $true`` when ``hide``); True when it changed something,
    False when the mailbox was shared (and hidden, if asked) already."""
    mailbox = exchange.get_remote_mailbox(identity)
    if mailbox is None:
        raise PermanentError(
            f"'{identity}' has no remote mailbox in Exchange on-premises to convert",
            user=identity, step=STEP,
            fix="check the user in Exchange (Get-RemoteMailbox); a user without a cloud "
                "mailbox has no mail to keep: take the user out of the leavers group")
    hidden_already = mailbox.hidden is True or not hide
    if _premises(mailbox) is MailboxType.SHARED and hidden_already:
        return False
    try:
        exchange.set_remote_mailbox(identity, mailbox_type="Shared", hidden=True if hide else None)
    except ProvisioningError as exc:
        raise exc.at(user=identity, step=STEP) from None
    return True


# -- Graph ---------------------------------------------------------------------------------------
async def cloud_type(graph: GraphClient, user_id: str) -> MailboxType:
    """The Exchange Online mailbox's type (``mailboxSettings/userPurpose``); NONE when the user
    has no Exchange Online mailbox."""
    try:
        found = await graph.call("GET", f"users/{segment(user_id)}/mailboxSettings/userPurpose",
                                 action="read the mailbox type", user=user_id)
    except GraphRefusal as exc:
        if exc.status == 404 and exc.code == "MailboxNotEnabledForRESTAPI":
            return MailboxType.NONE
        raise
    return _CLOUD.get(str(found.get("value")), MailboxType.NONE)


_reports: weakref.WeakKeyDictionary[GraphClient, tuple[float, dict[str, dict[str, str]]]] = (
    weakref.WeakKeyDictionary())


async def _usage(graph: GraphClient, user_id: str, max_age: float) -> dict[str, dict[str, str]]:
    """The mailbox usage report's rows by lower-case UPN (read at most every ``max_age`` s)."""
    cached = _reports.get(graph)
    if cached is not None and time.monotonic() - cached[0] < max_age:
        return cached[1]
    # Through the client's pipeline (pacing, retries, the one error classifier): kiota's
    # RedirectHandler follows the 302 to the pre-authenticated download URL and scrubs the
    # Authorization header when that URL is on another host, as the download needs none.
    info = RequestInformation(Method.GET)
    info.url = graph.url(REPORT)
    async with graph.errors("read the mailbox usage report", user_id):
        raw = await graph.adapter.send_primitive_async(info, "bytes", ERRORS)
    text = (raw or b"").decode("utf-8-sig")
    rows = {str(row.get("User Principal Name", "")).lower(): row
            for row in csv.DictReader(io.StringIO(text))}
    _reports[graph] = (time.monotonic(), rows)
    return rows


def _flag(value: str | None) -> bool | None:
    return {"true": True, "false": False}.get((value or "").strip().lower())


async def mailbox_facts(graph: GraphClient, exchange: ExchangeClient | None, user_id: str,
                        identity: str, *, report_max_age: float = REPORT_MAX_AGE) -> MailboxFacts:
    """Size, archive and hold of the user's cloud mailbox from what Microsoft documents (the
    module docstring); each fact it cannot read is None."""
    found = await graph.call("GET", f"users/{segment(user_id)}", action="read user",
                             user=user_id, query={"$select": "id,userPrincipalName"})
    upn = str(found.get("userPrincipalName") or "").lower()
    rows = await _usage(graph, user_id, report_max_age)
    if upn not in rows:
        rows = await _usage(graph, user_id, min(report_max_age, MISSING_MAX_AGE))
    row = rows.get(upn) if upn else None
    if row is None and rows and not any("@" in key for key in rows):
        log.warning("leaver_report_concealed", user=upn, step=STEP,
                    fix="turn off 'Display concealed user, group, and site names in all "
                        "reports' (Microsoft 365 admin centre, Org settings, Reports) or the "
                        "licences of leavers stay")
    size: int | None = None
    if row is not None and (row.get("Storage Used (Byte)") or "").strip().isdigit():
        size = int(str(row["Storage Used (Byte)"]).strip())
    archive = _flag(row.get("Has Archive")) if row is not None else None
    hold: bool | None = None
    if exchange is not None:
        mailbox = await asyncio.to_thread(exchange.get_remote_mailbox, identity)
        if mailbox is not None:
            on_premises = {"active": True, "none": False}.get(
                (mailbox.archive_status or "").lower())
            archive = True if True in (archive, on_premises) else (
                archive if archive is not None else on_premises)
            hold = None if mailbox.in_place_holds is None else bool(mailbox.in_place_holds)
    return MailboxFacts(size_bytes=size, archive=archive, litigation_hold=hold)


async def remove_licences(graph: GraphClient, user_id: str, sku_ids: Sequence[str]) -> None:
    """Remove ``sku_ids`` (skuId GUIDs) in one ``assignLicense``; those the user no longer
    holds are left out (nothing to do when none is left)."""
    found = await graph.call("GET", f"users/{segment(user_id)}", action="read licences",
                             user=user_id, query={"$select": "id,userPrincipalName,"
                                                  "assignedLicenses,licenseAssignmentStates"})
    upn = str(found.get("userPrincipalName") or user_id)
    held = {str(a.get("skuId", "")).lower() for a in objects(found.get("assignedLicenses"))}
    wanted = [s for s in dict.fromkeys(str(s).lower() for s in sku_ids) if s in held]
    if not wanted:
        return
    try:
        await graph.call("POST", f"users/{segment(user_id)}/assignLicense",
                         action="remove licences", user=upn,
                         body={"addLicenses": [], "removeLicenses": wanted})
    except GraphRefusal as exc:
        if INHERITED not in exc.reason.lower():
            raise
        groups = {str(s.get("skuId", "")).lower(): str(s.get("assignedByGroup"))
                  for s in objects(found.get("licenseAssignmentStates"))
                  if s.get("assignedByGroup")}
        named = ", ".join(f"{sku} (from group {groups[sku]})" for sku in wanted
                          if sku in groups) or ", ".join(wanted)
        raise PermanentError(
            f"Graph refused to remove licence {named} from {upn}: it is inherited from a group "
            "(group-based licensing)", user=upn, step=STEP,
            fix="remove the user from the licensing group (Entra ID, the group's Licenses) "
                "or assign the licence directly; the service then removes it") from None
