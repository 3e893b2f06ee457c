"""``users/{id}/assignLicense``, ``users/{id}/licenseDetails`` and ``subscribedSkus``.

``assignLicense`` is all-or-nothing, as in Graph: every add and remove is checked first
(usage location, known SKU, a free unit for each new SKU, removals the user really has), and
only then applied, keeping ``consumedUnits`` true.

Group-based licensing (enough to test the refusal): ``POST /_lab/licenses/group``
``{"user": id|upn, "sku": part number, "group": group id}`` makes a SKU inherited from a group,
as Entra's group-based licensing does: it is in ``assignedLicenses`` (one unit, even when also
assigned directly) and ``licenseAssignmentStates`` names the group in ``assignedByGroup``
(null for a direct assignment; user resource, v1.0). ``assignLicense`` cannot remove an
inherited licence: Graph answers 400 "User license is inherited from a group membership and it
cannot be removed directly from the user."; a licence both inherited and direct loses its
direct assignment and stays. Removing a SKU the user does not hold: 400 "User does not have a
corresponding license." Removals give their units back (``consumedUnits``).

Safe-ordering witness: assigning a licence with Exchange Online to a synced user whose
``proxyAddresses`` lack an address in the routing domain (``<tenant>.mail.onmicrosoft.com``)
is what makes Exchange Online create a second, cloud mailbox. The lab counts such users in
``GET /_lab/stats`` (``cloudMailboxes``) so tests can assert that it never happens.
"""

from __future__ import annotations

import base64
from typing import Any

from .mailboxes import has_exchange, licences_changed
from .server import Graph, GraphError, Reply, Request, control, route
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
    inherited = tenant.inherited.get(user["id"], {})
    for sku_id in removes:
        if sku_id in inherited and (user["id"], sku_id) not in tenant.direct_also:
            raise _bad("User license is inherited from a group membership and it cannot be "
                       "removed directly from the user.")
    if adds and not user.get("usageLocation"):
        raise _bad("License assignment cannot be done for user with invalid usage location.")
    for sku_id in adds:
        sku = tenant.skus[sku_id]
        if sku_id not in current and sku.consumed >= sku.prepaid:
            raise _bad(f"Subscription with SKU {sku_id} does not have any available licenses.")
    # All checks passed: apply. An inherited SKU only loses (or gains) its direct assignment.
    had_exchange = has_exchange(user)
    for sku_id in [s for s in removes if s in inherited]:
        tenant.direct_also.discard((user["id"], sku_id))
    for sku_id in [s for s in adds if s in inherited]:
        tenant.direct_also.add((user["id"], sku_id))
    removes = [s for s in removes if s not in inherited]
    kept = [a for a in user["assignedLicenses"] if a["skuId"] not in removes + list(adds)]
    for sku_id in removes:
        tenant.skus[sku_id].consumed -= 1
    for sku_id, disabled in adds.items():
        if sku_id not in current:
            tenant.skus[sku_id].consumed += 1
        kept.append({"disabledPlans": disabled, "skuId": sku_id})
    user["assignedLicenses"] = kept
    _plans_and_states(graph, user)
    _watch_mailbox(graph, user)
    licences_changed(graph, user, had_exchange)
    return Reply(200, {"@odata.context": f"{request.base_url}/$metadata#users/$entity",
                       **project(user, Request("GET", "", {}, {}, None))})


def _plans_and_states(graph: Graph, user: JSON) -> None:
    """``assignedPlans`` and ``licenseAssignmentStates`` from ``assignedLicenses``."""
    tenant = graph.tenant
    kept = user["assignedLicenses"]
    user["assignedPlans"] = [
        {"assignedDateTime": now_iso(), "capabilityStatus": "Enabled", "service": name,
         "servicePlanId": pid}
        for a in kept for pid, name in tenant.skus[a["skuId"]].plans
        if pid not in a["disabledPlans"]
    ]
    inherited = tenant.inherited.get(user["id"], {})
    states = []
    for a in kept:
        sources: list[str | None] = [inherited[a["skuId"]]] if a["skuId"] in inherited else []
        if a["skuId"] not in inherited or (user["id"], a["skuId"]) in tenant.direct_also:
            sources.insert(0, None)
        states += [{"assignedByGroup": group, "disabledPlans": a["disabledPlans"],
                    "error": "None", "lastUpdatedDateTime": now_iso(), "skuId": a["skuId"],
                    "state": "Active"} for group in sources]
    user["licenseAssignmentStates"] = states


@control("POST", "licenses/group")
async def inherit_from_group(graph: Graph, body: JSON) -> JSON:
    """Make a SKU of the user inherited from a group (group-based licensing)."""
    tenant = graph.tenant
    user = tenant.find(str(body["user"]))
    sku = tenant.sku_by_part(str(body["sku"]))
    if user is None or sku is None:
        raise KeyError(f"no user {body['user']} or no SKU {body['sku']}")
    had_exchange = has_exchange(user)
    held = {a["skuId"] for a in user["assignedLicenses"]}
    if sku.sku_id in held:
        if sku.sku_id not in tenant.inherited.get(user["id"], {}):
            tenant.direct_also.add((user["id"], sku.sku_id))
    else:
        sku.consumed += 1
        user["assignedLicenses"].append({"disabledPlans": [], "skuId": sku.sku_id})
    tenant.inherited.setdefault(user["id"], {})[sku.sku_id] = str(body["group"])
    _plans_and_states(graph, user)
    licences_changed(graph, user, had_exchange)
    return {"licenseAssignmentStates": user["licenseAssignmentStates"]}


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
