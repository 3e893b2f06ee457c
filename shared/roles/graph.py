"""The Graph role adapter: Entra role definitions, role assignments and PIM eligibility, through
the service's one ``GraphClient`` (same pacing, credential and error classifier).

- ``roleDefinitions`` are read from Graph's beta endpoint, the only one that says which roles
  the tenant marks privileged (``isPrivileged``; v1.0's ``unifiedRoleDefinition`` has no such
  property). A definition read without it is ``privileged=None``, which the guards treat as
  privileged;
- ``roleAssignments`` (``ROLES_MODE=active``) at directory scope ``/``;
- ``roleEligibilityScheduleRequests`` (``ROLES_MODE=eligible``): ``adminAssign`` and
  ``adminRemove``, read back through ``roleEligibilitySchedules``.

Every write is idempotent: an assignment that is already there, or already gone, answers False
instead of failing. Graph answers a duplicate active assignment with a generic 400, so that case
is confirmed by reading, never by the message text.
"""

from __future__ import annotations

import datetime as dt

from shared.graph.client import GraphClient, GraphRefusal, JSONObject, odata_literal, segment
from shared.roles.model import DIRECTORY_SCOPE, Assignment, RoleDefinition

DIRECTORY = "roleManagement/directory"
DEFINITION_SELECT = "id,displayName,templateId,isPrivileged"
ALREADY = ("RoleAssignmentExists", "RoleAssignmentDoesNotExist")


def definition_from(found: JSONObject) -> RoleDefinition:
    """A role definition from Graph's JSON (beta, with ``isPrivileged``)."""
    privileged = found.get("isPrivileged")
    return RoleDefinition(
        id=str(found["id"]), display_name=str(found.get("displayName") or ""),
        template_id=str(found.get("templateId") or found["id"]),
        privileged=privileged if isinstance(privileged, bool) else None,
    )


def _assignment(found: JSONObject) -> Assignment:
    return Assignment(str(found.get("id")), str(found.get("roleDefinitionId")),
                      str(found.get("principalId")), str(found.get("directoryScopeId") or ""))


class RoleGraph:
    """The role endpoints of Graph, for the role sync's cycle and its queue handler."""

    def __init__(self, graph: GraphClient) -> None:
        self._graph = graph

    async def definitions(self) -> list[RoleDefinition]:
        found = await self._graph.pages(f"{self._graph.beta_url}/{DIRECTORY}/roleDefinitions",
                                        action="read role definitions",
                                        query={"$select": DEFINITION_SELECT})
        return [definition_from(d) for d in found]

    async def definition(self, role_id: str) -> RoleDefinition | None:
        """One role definition; None when the tenant has no such role."""
        try:
            found = await self._graph.call(
                "GET", f"{self._graph.beta_url}/{DIRECTORY}/roleDefinitions/{segment(role_id)}",
                action="read a role definition", query={"$select": DEFINITION_SELECT})
        except GraphRefusal as exc:
            if exc.status == 404:
                return None
            raise
        return definition_from(found)

    async def holders(self, role_id: str, *, eligible: bool, principal_id: str | None = None
                      ) -> list[Assignment]:
        """Assignments (or, with ``eligible``, eligibility schedules) of one role at any scope."""
        text = f"roleDefinitionId eq {odata_literal(role_id)}"
        if principal_id:
            text += f" and principalId eq {odata_literal(principal_id)}"
        kind = "roleEligibilitySchedules" if eligible else "roleAssignments"
        found = await self._graph.pages(f"{DIRECTORY}/{kind}", action=f"read {kind}",
                                        query={"$filter": text})
        return [_assignment(a) for a in found]

    async def assign(self, role_id: str, principal_id: str) -> bool:
        """Create an active assignment at ``/``; False when it was already there."""
        body = {"roleDefinitionId": role_id, "principalId": principal_id,
                "directoryScopeId": DIRECTORY_SCOPE}
        try:
            await self._graph.call("POST", f"{DIRECTORY}/roleAssignments", body=body,
                                   action="assign a role", user=principal_id)
        except GraphRefusal as exc:
            if exc.status in (400, 409) and await self._active(role_id, principal_id):
                return False
            raise
        return True

    async def unassign(self, role_id: str, principal_id: str) -> bool:
        """Delete the active assignment at ``/``; False when it was already gone."""
        found = await self._active(role_id, principal_id)
        if found is None:
            return False
        try:
            await self._graph.call("DELETE", f"{DIRECTORY}/roleAssignments/{segment(found.id)}",
                                   action="remove a role assignment", user=principal_id)
        except GraphRefusal as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def _active(self, role_id: str, principal_id: str) -> Assignment | None:
        for item in await self.holders(role_id, eligible=False, principal_id=principal_id):
            if item.directory_scope_id == DIRECTORY_SCOPE:
                return item
        return None

    async def eligibility(self, action: str, role_id: str, principal_id: str,
                          justification: str, days: int | None) -> bool:
        """``adminAssign`` / ``adminRemove`` a PIM eligibility at ``/``; False when it already
        was so."""
        body: JSONObject = {"action": action, "roleDefinitionId": role_id,
                            "principalId": principal_id, "directoryScopeId": DIRECTORY_SCOPE,
                            "justification": justification}
        if action == "adminAssign":
            start = dt.datetime.now(dt.UTC).replace(microsecond=0)
            expiration: JSONObject = {"type": "noExpiration"}
            if days:
                end = start + dt.timedelta(days=days)
                expiration = {"type": "afterDateTime", "endDateTime": _iso(end)}
            body["scheduleInfo"] = {"startDateTime": _iso(start), "expiration": expiration}
        try:
            await self._graph.call("POST", f"{DIRECTORY}/roleEligibilityScheduleRequests",
                                   body=body, action=f"{action} a role eligibility",
                                   user=principal_id)
        except GraphRefusal as exc:
            if exc.status == 400 and exc.code in ALREADY:
                return False
            raise
        return True


def _iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
