"""``users``: list with paging, $filter, $select and $count; get by id or UPN; PATCH."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import iso3166

from .server import Graph, GraphError, Reply, Request, route
from .store import DEFAULT_USER_PROPERTIES, JSON, ON_PREMISES_MASTERED

# Filterable without advanced query parameters, and only with them (ConsistencyLevel:
# eventual + $count=true), as the issue states Graph demands.
BASIC_FILTER = frozenset({"userPrincipalName", "id", "mail", "displayName"})
ADVANCED_FILTER = frozenset({"onPremisesImmutableId", "onPremisesSamAccountName"})
_CLAUSE = re.compile(r"^\s*(\w+)\s+eq\s+'((?:[^']|'')*)'\s*$")
MAX_TOP = 999
PATCHABLE = frozenset({"usageLocation", "displayName", "givenName", "surname", "jobTitle",
                       "department", "accountEnabled", "mail", "proxyAddresses",
                       "mailNickname", "officeLocation", "mobilePhone", "preferredLanguage",
                       "businessPhones", "userPrincipalName"})


def user_or_404(graph: Graph, key: str) -> JSON:
    """The user ``users/{key}`` names (id or UPN), or Graph's 404."""
    user = graph.tenant.find(key)
    if user is None:
        raise GraphError(
            404, "Request_ResourceNotFound",
            f"Resource '{key}' does not exist or one of its queried reference-property "
            "objects are not present.",
        )
    return user


def project(user: JSON, request: Request) -> JSON:
    """The user as Graph returns it: the default properties, or exactly those $selected."""
    select = request.query.get("$select")
    names = [n.strip() for n in select.split(",") if n.strip()] if select else None
    if names:
        for name in names:
            if name not in user or name.startswith("_"):  # "_...": the lab's own state
                raise GraphError(400, "Request_BadRequest", f"Could not find a property named "
                                 f"'{name}' on type 'microsoft.graph.user'.")
        return {name: user[name] for name in names}
    return {name: user.get(name) for name in DEFAULT_USER_PROPERTIES}


def _advanced(request: Request) -> bool:
    return (request.header("ConsistencyLevel").lower() == "eventual"
            and request.query.get("$count", "").lower() == "true")


def _matches(graph: Graph, request: Request) -> list[JSON]:
    text = request.query.get("$filter")
    if not text:
        return list(graph.tenant.users.values())
    found = _CLAUSE.match(text)
    if not found:
        raise GraphError(400, "Request_UnsupportedQuery",
                         "Unsupported or invalid query filter clause specified.")
    prop, value = found.group(1), found.group(2).replace("''", "'")
    if prop in ADVANCED_FILTER and not _advanced(request):
        raise GraphError(400, "Request_UnsupportedQuery", f"Unsupported or invalid query "
                         f"filter clause specified for property '{prop}' of resource 'User'.")
    if prop not in BASIC_FILTER | ADVANCED_FILTER:
        raise GraphError(400, "Request_UnsupportedQuery", f"Unsupported or invalid query "
                         f"filter clause specified for property '{prop}' of resource 'User'.")
    tenant = graph.tenant
    if prop == "onPremisesImmutableId":  # indexed: the lab serves 20,000-user tenants
        uid = tenant.by_immutable.get(value)
        return [tenant.users[uid]] if uid else []
    if prop == "userPrincipalName":
        uid = tenant.by_upn.get(value.lower())
        return [tenant.users[uid]] if uid else []
    fold = value.lower()
    return [u for u in tenant.users.values() if str(u.get(prop) or "").lower() == fold]


@route("GET", "users", ru=2)
async def list_users(graph: Graph, request: Request) -> Reply:
    """GET /users: $filter, $select, $top, $skiptoken paging, $count with eventual."""
    if request.query.get("$count", "").lower() == "true" and not _advanced(request):
        raise GraphError(400, "Request_BadRequest",
                         "$count is only supported with the ConsistencyLevel:eventual header.")
    users = _matches(graph, request)
    top_text = request.query.get("$top", "100")
    if not top_text.isdigit() or not 1 <= int(top_text) <= MAX_TOP:
        raise GraphError(400, "Request_BadRequest", f"Invalid page size specified: "
                         f"'{top_text}'. Must be between 1 and {MAX_TOP} inclusive.")
    top = int(top_text)
    start = _skip(request.query.get("$skiptoken"))
    page = users[start:start + top]
    body: dict[str, Any] = {"@odata.context": f"{request.base_url}/$metadata#users"}
    if _advanced(request):
        body["@odata.count"] = len(users)
    body["value"] = [project(u, request) for u in page]
    if start + top < len(users):
        query = {k: v for k, v in request.query.items() if k != "$skiptoken"}
        query["$skiptoken"] = base64.urlsafe_b64encode(
            json.dumps({"o": start + top}).encode()).decode()
        from urllib.parse import urlencode

        body["@odata.nextLink"] = f"{request.base_url}/users?{urlencode(query)}"
    return Reply(200, body)


def _skip(token: str | None) -> int:
    if not token:
        return 0
    try:
        return int(json.loads(base64.urlsafe_b64decode(token.encode()))["o"])
    except (ValueError, KeyError, TypeError):
        raise GraphError(400, "Request_BadRequest", "Invalid skip token.") from None


@route("GET", "users/{id}")
async def get_user(graph: Graph, request: Request) -> Reply:
    user = user_or_404(graph, request.params["id"])
    body = {"@odata.context": f"{request.base_url}/$metadata#users/$entity",
            **project(user, request)}
    return Reply(200, body)


@route("PATCH", "users/{id}")
async def patch_user(graph: Graph, request: Request) -> Reply:
    """PATCH /users/{id}: 204; on-premises-mastered properties refused for synced users."""
    user = user_or_404(graph, request.params["id"])
    if not isinstance(request.body, dict):
        raise GraphError(400, "BadRequest", "Empty Payload, JSON content expected.")
    changes = {k: v for k, v in request.body.items() if not k.startswith("@")}
    for name in changes:
        if name not in PATCHABLE:
            raise GraphError(400, "Request_BadRequest", f"Invalid property '{name}'.")
    if user.get("onPremisesSyncEnabled") and ON_PREMISES_MASTERED & set(changes):
        raise GraphError(400, "Request_BadRequest", "Unable to update the specified properties "
                         "for on-premises mastered Directory Sync objects or objects currently "
                         "undergoing migration.")
    if "usageLocation" in changes:
        value = changes["usageLocation"]
        if value is not None and (not isinstance(value, str)
                                  or value not in iso3166.countries_by_alpha2):
            raise GraphError(400, "Request_BadRequest", "Invalid value specified for property "
                             "'usageLocation' of resource 'User'.")
    graph.tenant.update(user, changes)
    return Reply(204)
