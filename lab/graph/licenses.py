"""``users/{id}/assignLicense``, ``users/{id}/licenseDetails`` and ``subscribedSkus``.

``assignLicense`` is all-or-nothing, as in Graph: every add and remove is checked first
(usage location, known SKU, a free unit for each new SKU, removals the user really has), and
only then applied, keeping ``consumedUnits`` true.

Safe-ordering witness: assigning a licence with Exchange Online to a synced user whose
``proxyAddresses`` lack an address in the routing domain (``<tenant>.mail.onmicrosoft.com``)
is what makes Exchange Online create a second, cloud mailbox. The lab counts such users in
``GET /_lab/stats`` (``cloudMailboxes``) so tests can assert that it never happens.
"""

from __future__ import annotations

import base64
from typing import Any

from .server import Graph, GraphError, Reply, Request, route
from .store import EXCHANGE_S_ENTERPRISE, JSON, now_iso
from .users import project, user_or_404


def _bad(message: str) -> GraphError:
    return GraphError(400, "Request_BadRequest", message)


def _sku_ids(items: Any, name: str) -> list[str]:
    if not isinstance(items, list):
        raise _bad(f"The request is missing the required parameter '{name}'.")
    return [str(item).lower() for item in items]


@route("POST", "users/{id}/assignLicense")
async def assign_license(graph: Graph, request: Request) -> Reply:
    """Add and remove licences in one call; Graph's failures for location, units, SKU."""
    tenant = graph.tenant
    user = user_or_404(graph, request.params["id"])
    body = request.body if isinstance(request.body, dict) else {}
    adds_raw = body.get("addLicenses")
    if not isinstance(adds_raw, list):
        raise _bad("The request is missing the required parameter 'addLicenses'.")
    removes = _sku_ids(body.get("removeLicenses"), "removeLicenses")
    adds: dict[str, list[str]] = {}
    for item in adds_raw:
        if not isinstance(item, dict) or not item.get("skuId"):
            raise _bad("Invalid value for parameter 'addLicenses': skuId is required.")
        adds[str(item["skuId"]).lower()] = [str(p) for p in item.get("disabledPlans") or []]
    current = {a["skuId"] for a in user["assignedLicenses"]}
    for sku_id in list(adds) + removes:
        if sku_id not in tenant.skus:
            raise _bad(f"License {sku_id} does not correspond to a valid company License.")
    if set(adds) & set(removes):
        raise _bad("The same license cannot be added and removed in one request.")
    for sku_id in removes:
        if sku_id not in current:
            raise _bad("User does not have a corresponding license.")
    if adds and not user.get("usageLocation"):
        raise _bad("License assignment cannot be done for user with invalid usage location.")
    for sku_id in adds:
        sku = tenant.skus[sku_id]
        if sku_id not in current and sku.consumed >= sku.prepaid:
            raise _bad(f"Subscription with SKU {sku_id} does not have any available licenses.")
    # All checks passed: apply.
    kept = [a for a in user["assignedLicenses"] if a["skuId"] not in removes + list(adds)]
    for sku_id in removes:
        tenant.skus[sku_id].consumed -= 1
    for sku_id, disabled in adds.items():
        if sku_id not in current:
            tenant.skus[sku_id].consumed += 1
        kept.append({"disabledPlans": disabled, "skuId": sku_id})
    user["assignedLicenses"] = kept
    user["assignedPlans"] = [
        {"assignedDateTime": now_iso(), "capabilityStatus": "Enabled", "service": name,
         "servicePlanId": pid}
        for a in kept for pid, name in tenant.skus[a["skuId"]].plans
        if pid not in a["disabledPlans"]
    ]
    _watch_mailbox(graph, user)
    return Reply(200, {"@odata.context": f"{request.base_url}/$metadata#users/$entity",
                       **project(user, Request("GET", "", {}, {}, None))})


def _watch_mailbox(graph: Graph, user: JSON) -> None:
    has_exchange = any(p["servicePlanId"] == EXCHANGE_S_ENTERPRISE[0]
                       for p in user["assignedPlans"])
    if not has_exchange or not user.get("onPremisesSyncEnabled"):
        return
    routing = "@" + graph.tenant.routing_domain
    if not any(str(a).lower().endswith(routing) for a in user["proxyAddresses"]):
        graph.tenant.cloud_mailboxes.add(user["userPrincipalName"])


@route("GET", "users/{id}/licenseDetails", ru=2)
async def license_details(graph: Graph, request: Request) -> Reply:
    user = user_or_404(graph, request.params["id"])
    value = []
    for assigned in user["assignedLicenses"]:
        sku = graph.tenant.skus[assigned["skuId"]]
        detail_id = base64.urlsafe_b64encode(
            f"{user['id']}:{sku.sku_id}".encode()).decode().rstrip("=")
        value.append({
            "id": detail_id,
            "skuId": sku.sku_id,
            "skuPartNumber": sku.part_number,
            "servicePlans": [
                {"servicePlanId": pid, "servicePlanName": name, "appliesTo": "User",
                 "provisioningStatus": "Disabled" if pid in assigned["disabledPlans"]
                 else "Success"}
                for pid, name in sku.plans
            ],
        })
    return Reply(200, {
        "@odata.context": f"{request.base_url}/$metadata#users('{user['id']}')/licenseDetails",
        "value": value,
    })


@route("GET", "subscribedSkus", ru=3)
async def subscribed_skus(graph: Graph, request: Request) -> Reply:
    tenant = graph.tenant
    return Reply(200, {
        "@odata.context": f"{request.base_url}/$metadata#subscribedSkus",
        "value": [sku.as_json(tenant.tenant_id) for sku in tenant.skus.values()],
    })
