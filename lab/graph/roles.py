"""``roleManagement/directory``: role definitions, active role assignments and PIM eligibility.

What the service calls, with Graph's documented shapes and errors:

- ``roleDefinitions`` (list, ``$filter`` on displayName/templateId/id/isBuiltIn; ``$select``;
  get by id), seeded with built-in roles and their real template ids (learn.microsoft.com,
  "Microsoft Entra built-in roles"). ``isPrivileged`` exists on Graph's beta endpoint only
  ("unifiedRoleDefinition resource type", graph-rest-beta: "isPrivileged ... Supports $filter
  (eq)"; the v1.0 page of the same resource has no such property): ``/beta`` answers it, with
  the tenant's value as the built-in roles page labels each role PRIVILEGED; ``/v1.0`` leaves
  it out, and a ``$select`` naming it there is Graph's 400 for an unknown property;
- ``roleAssignments``: list (a ``$filter`` on roleDefinitionId, principalId, directoryScopeId or
  id is required here; ``$expand=principal``; paged by 100), get, create (the same role,
  principal and scope again is 400 ``Request_BadRequest`` "A conflicting object ..."), delete
  (404 when gone). Ids are built as Entra builds them: base64url of the role's and the
  principal's GUID bytes, then ``-1``;
- ``roleEligibilityScheduleRequests`` (create with ``adminAssign`` / ``adminRemove``; list) and
  ``roleEligibilitySchedules`` (list, get). Assigning an existing eligibility is 400
  ``RoleAssignmentExists``; removing a missing one is 400 ``RoleAssignmentDoesNotExist``.

Role state lives beside the tenant in this process. A principal must be an existing user; a
deleted user's assignments disappear with it, as in Entra. Lab control:
``POST /_lab/roles/reset`` puts the seeded state back.
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from .server import Graph, GraphError, Reply, Request, control, route
from .store import JSON, now_iso

# (display name, template id, description): a subset of the built-in roles.
BUILT_IN_ROLES: tuple[tuple[str, str, str], ...] = (
    ("Global Administrator", "62e90394-69f5-4237-9190-012177145e10",
     "Can manage all aspects of Microsoft Entra ID and Microsoft services that use Microsoft "
     "Entra identities."),
    ("Privileged Role Administrator", "e8611ab8-c189-46e8-94e1-60213ab1f814",
     "Can manage role assignments in Microsoft Entra ID, and all aspects of Privileged "
     "Identity Management."),
    ("Privileged Authentication Administrator", "7be44c8a-adaf-4e2a-84d6-ab2649e08a13",
     "Can access to view, set and reset authentication method information for any user "
     "(admin or non-admin)."),
    ("Exchange Administrator", "29232cdf-9323-42fd-ade2-1d097af3e4de",
     "Can manage all aspects of the Exchange product."),
    ("Exchange Recipient Administrator", "31392ffb-586c-42d1-9346-e59415a2cc4e",
     "Can create or update Exchange Online recipients within the Exchange Online "
     "organization."),
    ("Helpdesk Administrator", "729827e3-9c14-49f7-bb1b-9608f156bbb8",
     "Can reset passwords for non-administrators and Helpdesk Administrators."),
    ("User Administrator", "fe930be7-5e62-47db-91af-98c3a49a38b1",
     "Can manage all aspects of users and groups, including resetting passwords for limited "
     "admins."),
    ("License Administrator", "4d6ac14f-3453-41d0-bef9-a3e0c569773a",
     "Can manage product licenses on users and groups."),
    ("Global Reader", "f2ef992c-3afb-46b9-b7cf-a126ee74c451",
     "Can read everything that a Global Administrator can, but not update anything."),
    ("Groups Administrator", "fdd7a751-b60b-444a-984c-02652fe8fa1c",
     "Members of this role can create/manage groups, create/manage groups settings like "
     "naming and expiration policies, and view groups activity and audit reports."),
    ("SharePoint Administrator", "f28a1f50-f6e7-4571-818b-6a12f2af6b6c",
     "Can manage all aspects of the SharePoint service."),
    ("Teams Administrator", "69091246-20e8-4a56-aa4d-066075b2a7a8",
     "Can manage the Microsoft Teams service."),
    ("Service Support Administrator", "f023fd81-a637-4b56-95fd-791ac0226033",
     "Can read service health information and manage support tickets."),
    ("Reports Reader", "4a5d8f65-41da-4de4-8968-e035b65339cf",
     "Can read sign-in and audit reports."),
    ("Message Center Reader", "790c1fb9-7f7d-4f88-86a1-ef1f95c05c1b",
     "Can read messages and updates for their organization in Office 365 Message Center "
     "only."),
    ("Security Administrator", "194ae4cb-b126-40b2-bd5b-6091b380977d",
     "Can read security information and reports, and manage configuration in Microsoft "
     "Entra ID and Office 365."),
    ("Authentication Administrator", "c4e39bd9-1100-46d3-8c65-fb160da0071f",
     "Can access to view, set and reset authentication method information for any "
     "non-admin user."),
    ("Billing Administrator", "b0f54661-2d74-4c50-afa3-1ec803f12efe",
     "Can perform common billing related tasks like updating payment information."),
    ("Directory Readers", "88d8e3e3-8f55-4a1e-953a-9b9898b8876b",
     "Can read basic directory information."),
)

# The roles learn.microsoft.com/entra/identity/role-based-access-control/permissions-reference
# labels PRIVILEGED (the tenant's isPrivileged on Graph beta), of those above.
PRIVILEGED = frozenset({
    "62e90394-69f5-4237-9190-012177145e10",  # Global Administrator
    "e8611ab8-c189-46e8-94e1-60213ab1f814",  # Privileged Role Administrator
    "7be44c8a-adaf-4e2a-84d6-ab2649e08a13",  # Privileged Authentication Administrator
    "729827e3-9c14-49f7-bb1b-9608f156bbb8",  # Helpdesk Administrator
    "fe930be7-5e62-47db-91af-98c3a49a38b1",  # User Administrator
    "f2ef992c-3afb-46b9-b7cf-a126ee74c451",  # Global Reader
    "194ae4cb-b126-40b2-bd5b-6091b380977d",  # Security Administrator
    "c4e39bd9-1100-46d3-8c65-fb160da0071f",  # Authentication Administrator
})
GLOBAL_ADMINISTRATOR = "62e90394-69f5-4237-9190-012177145e10"
PAGE = 100
ASSIGNMENT_FILTERS = frozenset({"id", "roleDefinitionId", "principalId", "directoryScopeId",
                                "appScopeId"})
DEFINITION_FILTERS = frozenset({"id", "displayName", "templateId", "isBuiltIn"})
BETA_ONLY = frozenset({"isPrivileged"})
ACTIONS = frozenset({"adminAssign", "adminUpdate", "adminRemove", "selfActivate",
                     "selfDeactivate", "adminExtend", "adminRenew", "selfExtend", "selfRenew"})
_CLAUSE = re.compile(r"^\s*(\w+)\s+eq\s+('(?:[^']|'')*'|true|false)\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?)?$")


@dataclass
class RoleState:
    """Role assignments and eligibilities of the lab tenant, keyed by id."""

    assignments: dict[str, JSON] = field(default_factory=dict)
    eligibilities: dict[str, JSON] = field(default_factory=dict)
    requests: dict[str, JSON] = field(default_factory=dict)


_states: dict[int, RoleState] = {}


def state(graph: Graph) -> RoleState:
    """The role state of ``graph``'s tenant, seeded on first use (break-glass holds GA)."""
    found = _states.get(id(graph.tenant))
    if found is None:
        found = _states[id(graph.tenant)] = RoleState()
        breakglass = graph.tenant.find(f"breakglass@{graph.tenant.domain}")
        if breakglass is not None:
            _add_assignment(found, GLOBAL_ADMINISTRATOR, breakglass["id"], "/")
    return found


def _not_found(key: str) -> GraphError:
    return GraphError(404, "Request_ResourceNotFound", f"Resource '{key}' does not exist or one "
                      "of its queried reference-property objects are not present.")


def _definition(template_id: str, name: str, description: str) -> JSON:
    return {
        "id": template_id,
        "description": description,
        "displayName": name,
        "isBuiltIn": True,
        "isEnabled": True,
        "isPrivileged": template_id in PRIVILEGED,
        "resourceScopes": ["/"],
        "templateId": template_id,
        "version": "1",
        "rolePermissions": [],
    }


DEFINITIONS: dict[str, JSON] = {t: _definition(t, n, d) for n, t, d in BUILT_IN_ROLES}


def _assignment_id(role_id: str, principal_id: str) -> str:
    raw = uuid.UUID(role_id).bytes_le + uuid.UUID(principal_id).bytes_le
    return base64.urlsafe_b64encode(raw).decode().rstrip("=") + "-1"


def _add_assignment(roles: RoleState, role_id: str, principal_id: str, scope: str) -> JSON:
    assignment: JSON = {
        "id": _assignment_id(role_id, principal_id),
        "roleDefinitionId": role_id,
        "principalId": principal_id,
        "directoryScopeId": scope,
        "appScopeId": None,
        "condition": None,
    }
    roles.assignments[assignment["id"]] = assignment
    return assignment


# -- query helpers --------------------------------------------------------------------------


def _filter(text: str | None, allowed: frozenset[str], resource: str) -> list[tuple[str, str]]:
    """``a eq 'x' and b eq 'y'`` → [(a, x), (b, y)]; anything else is Graph's 400."""
    if not text:
        return []
    clauses: list[tuple[str, str]] = []
    for part in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
        found = _CLAUSE.match(part)
        if not found or found.group(1) not in allowed:
            prop = found.group(1) if found else part.split(" ")[0]
            raise GraphError(400, "Request_UnsupportedQuery", f"Unsupported or invalid query "
                             f"filter clause specified for property '{prop}' of resource "
                             f"'{resource}'.")
        value = found.group(2)
        if value.startswith("'"):
            value = value[1:-1].replace("''", "'")
        clauses.append((found.group(1), value.lower()))
    return clauses


def _matches(item: JSON, clauses: list[tuple[str, str]]) -> bool:
    for prop, value in clauses:
        actual = item.get(prop)
        if str(actual).lower() != value:  # GUIDs and booleans compare case-insensitively
            return False
    return True


def _page(request: Request, path: str, items: list[JSON], context: str) -> Reply:
    top_text = request.query.get("$top", str(PAGE))
    if not top_text.isdigit() or not 1 <= int(top_text) <= 999:
        raise GraphError(400, "Request_BadRequest", f"Invalid page size specified: '{top_text}'.")
    size = min(int(top_text), PAGE)
    token = request.query.get("$skiptoken", "0")
    if not token.isdigit():
        raise GraphError(400, "Request_BadRequest", "Invalid skip token.")
    start = int(token)
    body: JSON = {"@odata.context": f"{request.base_url}/$metadata#{context}",
                  "value": items[start:start + size]}
    if start + size < len(items):
        query = {**{k: v for k, v in request.query.items() if k != "$skiptoken"},
                 "$skiptoken": str(start + size)}
        body["@odata.nextLink"] = f"{request.base_url}/{path}?{urlencode(query)}"
    return Reply(200, body)


def _principal(graph: Graph, principal_id: str) -> JSON:
    user = graph.tenant.users.get(principal_id.lower())
    if user is None:
        raise _not_found(principal_id)
    return user


def _live(graph: Graph, items: dict[str, JSON]) -> list[JSON]:
    """Items whose principal still exists (a deleted user's roles go with it)."""
    for key in [k for k, v in items.items() if v["principalId"] not in graph.tenant.users]:
        items.pop(key)
    return list(items.values())


def _body(request: Request) -> JSON:
    if not isinstance(request.body, dict):
        raise GraphError(400, "BadRequest", "Empty Payload, JSON content expected.")
    return request.body


def _guid(value: Any, name: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise GraphError(400, "Request_BadRequest",
                         f"Invalid value specified for property '{name}'.") from None


def _role_or_404(role_id: str) -> JSON:
    definition = DEFINITIONS.get(role_id.lower())
    if definition is None:
        raise _not_found(role_id)
    return definition


# -- roleDefinitions ------------------------------------------------------------------------


def _as_version(definition: JSON, request: Request) -> JSON:
    """The definition as this endpoint shows it: without beta's properties on v1.0, and
    with exactly the ``$select``ed properties when there is a ``$select``."""
    shown = {k: v for k, v in definition.items()
             if request.version == "beta" or k not in BETA_ONLY}
    select = [n.strip() for n in request.query.get("$select", "").split(",") if n.strip()]
    for name in select:
        if name not in shown:
            raise GraphError(400, "Request_BadRequest", f"Could not find a property named "
                             f"'{name}' on type 'microsoft.graph.unifiedRoleDefinition'.")
    return {k: shown[k] for k in select} if select else shown


@route("GET", "roleManagement/directory/roleDefinitions", versions=("v1.0", "beta"))
async def list_definitions(graph: Graph, request: Request) -> Reply:
    filters = DEFINITION_FILTERS | (BETA_ONLY if request.version == "beta" else frozenset())
    clauses = _filter(request.query.get("$filter"), filters, "unifiedRoleDefinition")
    items = [_as_version(d, request) for d in DEFINITIONS.values() if _matches(d, clauses)]
    path = "roleManagement/directory/roleDefinitions"
    return _page(request, path, items, path)


@route("GET", "roleManagement/directory/roleDefinitions/{id}", versions=("v1.0", "beta"))
async def get_definition(graph: Graph, request: Request) -> Reply:
    return Reply(200, _as_version(_role_or_404(request.params["id"]), request))


# -- roleAssignments ------------------------------------------------------------------------


def _expanded(graph: Graph, assignment: JSON, request: Request) -> JSON:
    expand = request.query.get("$expand", "")
    if not expand:
        return assignment
    if expand.strip() != "principal":
        raise GraphError(400, "Request_BadRequest",
                         f"Could not find a property named '{expand}' on type "
                         "'microsoft.graph.unifiedRoleAssignment'.")
    user = graph.tenant.users[assignment["principalId"]]
    return {**assignment, "principal": {
        "@odata.type": "#microsoft.graph.user", "id": user["id"],
        "displayName": user["displayName"], "userPrincipalName": user["userPrincipalName"],
        "onPremisesSyncEnabled": user.get("onPremisesSyncEnabled"),
    }}


@route("GET", "roleManagement/directory/roleAssignments")
async def list_assignments(graph: Graph, request: Request) -> Reply:
    """A $filter is required: the directory provider does not list every assignment."""
    clauses = _filter(request.query.get("$filter"), ASSIGNMENT_FILTERS, "unifiedRoleAssignment")
    if not clauses:
        raise GraphError(400, "Request_BadRequest",
                         "A filter on roleDefinitionId, principalId or id is required.")
    roles = state(graph)
    items = [_expanded(graph, a, request) for a in _live(graph, roles.assignments)
             if _matches(a, clauses)]
    path = "roleManagement/directory/roleAssignments"
    return _page(request, path, items, path)


@route("GET", "roleManagement/directory/roleAssignments/{id}")
async def get_assignment(graph: Graph, request: Request) -> Reply:
    roles = state(graph)
    _live(graph, roles.assignments)
    found = roles.assignments.get(request.params["id"])
    if found is None:
        raise _not_found(request.params["id"])
    return Reply(200, _expanded(graph, found, request))


def _assignment_target(graph: Graph, body: dict[str, Any]) -> tuple[str, str, Any]:
    """Role, principal and scope of an assignment or eligibility request, checked as Graph
    checks them: required properties, a scope, a known role and an existing principal."""
    for name in ("roleDefinitionId", "principalId"):
        if not body.get(name):
            raise GraphError(400, "Request_BadRequest",
                             f"The request is missing the required property '{name}'.")
    scope = body.get("directoryScopeId")
    if not scope and not body.get("appScopeId"):
        raise GraphError(400, "Request_BadRequest",
                         "Either directoryScopeId or appScopeId must be specified.")
    role_id = _guid(body["roleDefinitionId"], "roleDefinitionId")
    principal_id = _guid(body["principalId"], "principalId")
    _role_or_404(role_id)
    _principal(graph, principal_id)
    return role_id, principal_id, scope


@route("POST", "roleManagement/directory/roleAssignments")
async def create_assignment(graph: Graph, request: Request) -> Reply:
    body = _body(request)
    role_id, principal_id, scope = _assignment_target(graph, body)
    roles = state(graph)
    _live(graph, roles.assignments)
    if scope != "/":
        raise GraphError(400, "Request_BadRequest",
                         "The lab supports directory scope '/' only.")
    if _assignment_id(role_id, principal_id) in roles.assignments:
        raise GraphError(400, "Request_BadRequest", "A conflicting object with one or more of "
                         "the specified property values is present in the directory.")
    created = _add_assignment(roles, role_id, principal_id, "/")
    body_out = {"@odata.context": f"{request.base_url}/$metadata#roleManagement/directory/"
                "roleAssignments/$entity", **created}
    return Reply(201, body_out)


@route("DELETE", "roleManagement/directory/roleAssignments/{id}")
async def delete_assignment(graph: Graph, request: Request) -> Reply:
    roles = state(graph)
    _live(graph, roles.assignments)
    if roles.assignments.pop(request.params["id"], None) is None:
        raise _not_found(request.params["id"])
    return Reply(204)


# -- PIM eligibility ------------------------------------------------------------------------


def _parse_time(text: Any, name: str) -> datetime:
    try:
        value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise GraphError(400, "Request_BadRequest",
                         f"Invalid value specified for property '{name}'.") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _schedule(info: Any) -> JSON:
    """Validate a requestSchedule; return it completed as Graph echoes it."""
    info = info if isinstance(info, dict) else {}
    start = _parse_time(info["startDateTime"], "startDateTime") if info.get(
        "startDateTime") else datetime.now(UTC)
    expiration = info.get("expiration") or {"type": "noExpiration"}
    kind = expiration.get("type")
    end: datetime | None = None
    if kind == "afterDateTime":
        end = _parse_time(expiration.get("endDateTime"), "endDateTime")
    elif kind == "afterDuration":
        found = _DURATION.match(str(expiration.get("duration", "")))
        if not found or not any(found.groups()):
            raise GraphError(400, "Request_BadRequest",
                             "Invalid value specified for property 'duration'.")
        days, hours, minutes = (int(g or 0) for g in found.groups())
        end = start + timedelta(days=days, hours=hours, minutes=minutes)
    elif kind != "noExpiration":
        raise GraphError(400, "Request_BadRequest",
                         "Invalid value specified for property 'expiration.type'.")
    if end is not None and end <= start:
        raise GraphError(400, "InvalidScheduleInfo", "The schedule ends before it starts.")
    return {
        "startDateTime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "recurrence": None,
        "expiration": {"type": kind, "duration": expiration.get("duration"),
                       "endDateTime": end.strftime("%Y-%m-%dT%H:%M:%SZ") if end else None},
    }


def _current_eligibilities(graph: Graph) -> dict[str, JSON]:
    """Eligibilities still in force: expired ones leave the schedule list, as in PIM."""
    roles = state(graph)
    now = datetime.now(UTC)
    for key, item in list(roles.eligibilities.items()):
        end = item["scheduleInfo"]["expiration"].get("endDateTime")
        if end and _parse_time(end, "endDateTime") <= now:
            roles.eligibilities.pop(key)
    _live(graph, roles.eligibilities)
    return roles.eligibilities


def _find_eligibility(graph: Graph, role_id: str, principal_id: str, scope: str) -> JSON | None:
    for item in _current_eligibilities(graph).values():
        if (item["roleDefinitionId"], item["principalId"], item["directoryScopeId"]) == (
            role_id, principal_id, scope
        ):
            return item
    return None


@route("POST", "roleManagement/directory/roleEligibilityScheduleRequests")
async def create_eligibility_request(graph: Graph, request: Request) -> Reply:
    body = _body(request)
    action = body.get("action")
    if action not in ACTIONS:
        raise GraphError(400, "Request_BadRequest",
                         "Invalid value specified for property 'action'.")
    if action not in {"adminAssign", "adminRemove"}:
        raise GraphError(400, "Request_BadRequest", f"The lab does not implement '{action}'.")
    role_id, principal_id, scope = _assignment_target(graph, body)
    existing = _find_eligibility(graph, role_id, principal_id, str(scope))
    roles = state(graph)
    request_id = str(uuid.uuid4())
    created = now_iso()
    schedule: JSON | None = None
    target: str | None
    completed: str | None
    if action == "adminAssign":
        if existing is not None:
            raise GraphError(400, "RoleAssignmentExists", "The Role assignment already exists.")
        schedule = _schedule(body.get("scheduleInfo"))
        roles.eligibilities[request_id] = {
            "id": request_id,
            "principalId": principal_id,
            "roleDefinitionId": role_id,
            "directoryScopeId": scope,
            "appScopeId": None,
            "createdUsing": request_id,
            "createdDateTime": created,
            "modifiedDateTime": created,
            "status": "Provisioned",
            "memberType": "Direct",
            "scheduleInfo": schedule,
        }
        status, target, completed = "Provisioned", request_id, created
    else:
        if existing is None:
            raise GraphError(400, "RoleAssignmentDoesNotExist",
                             "The Role assignment does not exist.")
        roles.eligibilities.pop(existing["id"])
        status, target, completed = "Revoked", None, None
    item: JSON = {
        "id": request_id,
        "status": status,
        "createdDateTime": created,
        "completedDateTime": completed,
        "approvalId": None,
        "customData": None,
        "action": action,
        "principalId": principal_id,
        "roleDefinitionId": role_id,
        "directoryScopeId": scope,
        "appScopeId": None,
        "isValidationOnly": bool(body.get("isValidationOnly", False)),
        "targetScheduleId": target,
        "justification": body.get("justification"),
        "scheduleInfo": schedule,
        "ticketInfo": body.get("ticketInfo") or {"ticketNumber": None, "ticketSystem": None},
    }
    roles.requests[request_id] = item
    context = "roleManagement/directory/roleEligibilityScheduleRequests/$entity"
    return Reply(201, {"@odata.context": f"{request.base_url}/$metadata#{context}", **item})


@route("GET", "roleManagement/directory/roleEligibilityScheduleRequests")
async def list_eligibility_requests(graph: Graph, request: Request) -> Reply:
    clauses = _filter(request.query.get("$filter"), ASSIGNMENT_FILTERS | {"action", "status"},
                      "unifiedRoleEligibilityScheduleRequest")
    items = [r for r in state(graph).requests.values() if _matches(r, clauses)]
    path = "roleManagement/directory/roleEligibilityScheduleRequests"
    return _page(request, path, items, path)


@route("GET", "roleManagement/directory/roleEligibilitySchedules")
async def list_eligibility_schedules(graph: Graph, request: Request) -> Reply:
    clauses = _filter(request.query.get("$filter"), ASSIGNMENT_FILTERS,
                      "unifiedRoleEligibilitySchedule")
    items = [s for s in _current_eligibilities(graph).values() if _matches(s, clauses)]
    path = "roleManagement/directory/roleEligibilitySchedules"
    return _page(request, path, items, path)


@route("GET", "roleManagement/directory/roleEligibilitySchedules/{id}")
async def get_eligibility_schedule(graph: Graph, request: Request) -> Reply:
    found = _current_eligibilities(graph).get(request.params["id"])
    if found is None:
        raise _not_found(request.params["id"])
    return Reply(200, found)


@control("POST", "roles/reset")
async def reset_roles(graph: Graph, body: JSON) -> JSON:
    """Back to the seeded state: only break-glass holds Global Administrator."""
    _states.pop(id(graph.tenant), None)
    roles = state(graph)
    return {"assignments": len(roles.assignments), "eligibilities": 0}
