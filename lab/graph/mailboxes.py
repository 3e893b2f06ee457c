"""Cloud mailboxes of the lab tenant: their type as Exchange Online decides it for a synced
user, ``mailboxSettings``, and the mailbox usage report.

**Existence.** A user gets an Exchange Online mailbox when a licence with Exchange Online
(``EXCHANGE_S_ENTERPRISE``) is first assigned (``lab.graph.licenses``); it stays when the
licence goes (a shared mailbox needs none; a user mailbox is disconnected after the grace: the
lab records that case as ``unlicensedUserMailboxes`` in ``GET /_lab/stats``, the witness that a
licence was removed from a mailbox not yet shared).

**Type.** For a synced user the on-premises ``msExchRemoteRecipientType`` decides the cloud
mailbox's type: "the RemoteRecipientType attribute must reflect that the mailbox was migrated
or that it is a Shared mailbox. If it does not, directory synchronization replicates the
attributes to the cloud. Then, Microsoft 365 converts the Shared mailbox to a regular
UserMailbox object" ("Shared mailboxes are unexpectedly converted to user mailboxes after
directory synchronization runs in an Exchange hybrid deployment", learn.microsoft.com/exchange/
troubleshoot/user-and-shared-mailboxes/shared-mailboxes-unexpectedly-converted-to-user-
mailboxes). So the type changes with a sync cycle, never before: ``cloud_purpose`` maps the
mirrored value (the sync engine stores it on the user as ``_mailboxPurpose``), and a value
with the Migrated bit and no type bits leaves the cloud's own type alone.

**Graph.** ``GET users/{id}/mailboxSettings`` and ``.../mailboxSettings/userPurpose`` (v1.0
mailboxSettings resource: userPurpose user, linked, shared, room, equipment, others; read-only;
application permission MailboxSettings.Read). A user without an Exchange Online mailbox gets
404 ``MailboxNotEnabledForRESTAPI`` "The mailbox is either inactive, soft-deleted, or is hosted
on-premise." (Graph's answer, microsoftgraph/microsoft-graph-docs issue 5888 and others).

``GET reports/getMailboxUsageDetail(period='D7')`` (v1.0 reportRoot: getMailboxUsageDetail;
Reports.Read.All) answers ``302 Found`` with a pre-authenticated download URL, valid a few
minutes, which serves the CSV with the documented columns. A mailbox appears in the report only
once its usage has been reported (the lab knob below; real reports lag a day or two). With the
tenant's "display concealed user, group, and site names" setting (adminReportSettings
``displayConcealedNames``) the report shows hashes instead of names.

Lab-only controls: ``POST /_lab/mailboxes/usage`` ``{"user": id|upn, "storageUsedBytes": n,
"hasArchive": bool}`` (``"reported": false`` takes the user out of the report);
``POST /_lab/reports/settings`` ``{"displayConcealedNames": bool}``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .server import RAW_ROUTES, Graph, GraphError, Reply, Request, control, route
from .store import EXCHANGE_S_ENTERPRISE, JSON
from .users import user_or_404

PROVISION_MAILBOX, MIGRATED, TYPE_BITS = 0x1, 0x4, 0x60
_PURPOSE_BY_BITS = {0x20: "room", 0x40: "equipment", 0x60: "shared"}
_REPORT = re.compile(r"^getMailboxUsageDetail\(period='(D7|D30|D90|D180)'\)$")
COLUMNS = (
    "Report Refresh Date", "User Principal Name", "Display Name", "Is Deleted", "Deleted Date",
    "Created Date", "Last Activity Date", "Item Count", "Storage Used (Byte)",
    "Issue Warning Quota (Byte)", "Prohibit Send Quota (Byte)",
    "Prohibit Send/Receive Quota (Byte)", "Deleted Item Count", "Deleted Item Size (Byte)",
    "Deleted Item Quota (Byte)", "Has Archive", "Report Period",
)
GB = 1024 ** 3
DOWNLOAD_SECONDS = 300
_downloads: dict[str, tuple[float, bytes]] = {}
_report_settings: JSON = {"displayConcealedNames": False}


def cloud_purpose(remote_recipient_type: Any) -> str | None:
    """The mailbox type Exchange Online gives a synced user from the on-premises
    ``msExchRemoteRecipientType``; None when the cloud keeps its own (no remote mailbox, or a
    migrated mailbox whose type was never set on-premises)."""
    try:
        value = int(remote_recipient_type or 0)
    except (TypeError, ValueError):
        return None
    if value & TYPE_BITS:
        return _PURPOSE_BY_BITS[value & TYPE_BITS]
    if value & MIGRATED:
        return None
    return "user" if value & PROVISION_MAILBOX else None


def mailbox_of(graph: Graph, user: JSON) -> JSON | None:
    return graph.tenant.mailboxes.get(user["id"])


def purpose(graph: Graph, user: JSON) -> str | None:
    """The cloud mailbox's userPurpose now; None: the user has no Exchange Online mailbox."""
    mailbox = mailbox_of(graph, user)
    if mailbox is None:
        return None
    synced = user.get("_mailboxPurpose") if user.get("onPremisesSyncEnabled") else None
    return str(synced or mailbox["purpose"])


def has_exchange(user: JSON) -> bool:
    return any(p["servicePlanId"] == EXCHANGE_S_ENTERPRISE[0] for p in user["assignedPlans"])


def licences_changed(graph: Graph, user: JSON, had_exchange: bool) -> None:
    """After an assignment: a first Exchange Online plan makes the mailbox; losing it while the
    mailbox is still a user mailbox is the data-loss case the lab records."""
    tenant = graph.tenant
    now = has_exchange(user)
    if now and user["id"] not in tenant.mailboxes:
        tenant.mailboxes[user["id"]] = {"purpose": "user", "createdDateTime": _today(),
                                        "reported": False, "storageUsedBytes": 0,
                                        "hasArchive": False}
    if had_exchange and not now and purpose(graph, user) == "user":
        tenant.unlicensed_user_mailboxes.add(user["userPrincipalName"])


def _no_mailbox() -> GraphError:
    return GraphError(404, "MailboxNotEnabledForRESTAPI",
                      "The mailbox is either inactive, soft-deleted, or is hosted on-premise.")


def _mailbox_of(graph: Graph, request: Request) -> tuple[JSON, str]:
    """The user the request names and their mailbox's purpose; Graph's 404s otherwise."""
    user = user_or_404(graph, request.params["id"])
    found = purpose(graph, user)
    if found is None:
        raise _no_mailbox()
    return user, found


@route("GET", "users/{id}/mailboxSettings")
async def mailbox_settings(graph: Graph, request: Request) -> Reply:
    user, found = _mailbox_of(graph, request)
    return Reply(200, {
        "@odata.context": f"{request.base_url}/$metadata#users('{user['id']}')/mailboxSettings",
        "archiveFolder": None,
        "timeZone": "UTC",
        "delegateMeetingMessageDeliveryOptions": "sendToDelegateOnly",
        "dateFormat": "M/d/yyyy",
        "timeFormat": "h:mm tt",
        "userPurpose": found,
        "automaticRepliesSetting": {"status": "disabled", "externalAudience": "all",
                                    "internalReplyMessage": "", "externalReplyMessage": ""},
        "language": {"locale": "en-US", "displayName": "English (United States)"},
        "workingHours": {"daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
                         "startTime": "08:00:00.0000000", "endTime": "17:00:00.0000000",
                         "timeZone": {"name": "UTC"}},
    })


@route("GET", "users/{id}/mailboxSettings/userPurpose")
async def user_purpose(graph: Graph, request: Request) -> Reply:
    user, found = _mailbox_of(graph, request)
    return Reply(200, {"@odata.context": f"{request.base_url}/$metadata#users('{user['id']}')"
                                         "/mailboxSettings/userPurpose", "value": found})


# -- the usage report -------------------------------------------------------------------------
def _today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def _concealed(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest().upper()


def _report_csv(graph: Graph, days: int) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    conceal = bool(_report_settings["displayConcealedNames"])
    for user_id, mailbox in graph.tenant.mailboxes.items():
        user = graph.tenant.users.get(user_id)
        if user is None or not mailbox["reported"]:
            continue
        upn, name = str(user["userPrincipalName"]), str(user.get("displayName") or "")
        writer.writerow([
            _today(), _concealed(upn) if conceal else upn, _concealed(name) if conceal else name,
            "False", "", mailbox["createdDateTime"], _today(), 100,
            int(mailbox["storageUsedBytes"]), 98 * GB, 99 * GB, 100 * GB, 0, 0, 30 * GB,
            "True" if mailbox["hasArchive"] else "False", days,
        ])
    return ("\ufeff" + out.getvalue()).encode()  # Graph's CSV starts with a UTF-8 BOM


@route("GET", "reports/{function}")
async def report(graph: Graph, request: Request) -> Reply:
    """The mailbox usage detail report: 302 to a short-lived, pre-authenticated download."""
    found = _REPORT.match(request.params["function"])
    if found is None:
        raise GraphError(400, "BadRequest", f"Resource not found for the segment "
                         f"'{request.params['function']}'.")
    now = time.monotonic()
    for token in [t for t, (expires, _) in _downloads.items() if expires < now]:
        del _downloads[token]
    token = secrets.token_urlsafe(24)
    _downloads[token] = (now + DOWNLOAD_SECONDS, _report_csv(graph, int(found.group(1)[1:])))
    origin = request.base_url.rsplit("/", 1)[0]
    return Reply(302, None, {"Location": f"{origin}/_reports/download/{token}",
                             "Content-Type": "text/plain"})


async def download(http: web.Request) -> web.StreamResponse:
    """The pre-authenticated download URL: no Authorization header, a few minutes valid."""
    entry = _downloads.get(http.match_info["token"])
    if entry is None or entry[0] < time.monotonic():
        return web.Response(status=404, text="The report download link has expired.")
    return web.Response(body=entry[1], content_type="application/octet-stream")


RAW_ROUTES.append(("GET", "/_reports/download/{token}", download))


@control("POST", "mailboxes/usage")
async def set_usage(graph: Graph, body: JSON) -> JSON:
    """Report a mailbox's usage (as the next report refresh would)."""
    user = graph.tenant.find(str(body["user"]))
    mailbox = mailbox_of(graph, user) if user else None
    if user is None or mailbox is None:
        raise KeyError(f"{body['user']} has no Exchange Online mailbox")
    mailbox["reported"] = bool(body.get("reported", True))
    if "storageUsedBytes" in body:
        mailbox["storageUsedBytes"] = int(body["storageUsedBytes"])
    if "hasArchive" in body:
        mailbox["hasArchive"] = bool(body["hasArchive"])
    return {"user": user["id"], **mailbox, "purpose": purpose(graph, user)}


@control("POST", "reports/settings")
async def report_settings(graph: Graph, body: JSON) -> JSON:
    """The tenant's report setting: ``displayConcealedNames``."""
    if "displayConcealedNames" in body:
        _report_settings["displayConcealedNames"] = bool(body["displayConcealedNames"])
    return dict(_report_settings)
