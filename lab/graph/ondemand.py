"""Cloud Sync's ``provisionOnDemand``: ``POST servicePrincipals/{id}/synchronization/jobs/{jobId}
/provisionOnDemand`` ("synchronizationJob: provisionOnDemand", Microsoft Graph v1.0).

The lab tenant has one Cloud Sync agent: its service principal, job and rule ids are published
as ``LAB_GRAPH_CLOUD_SYNC_*``; any other id is Graph's 404. The body must be Graph's
``parameters`` collection with the rule id and one subject (``objectId``: the user's DN,
``objectTypeName``: ``user``), or it is a 400. The API's documented rate, 5 requests per 10
seconds, is enforced (429 with ``Retry-After``). A provisioning takes
``LAB_GRAPH_ON_DEMAND_SECONDS`` (5 s by default; the lab's assumption, the page states no
figure) and answers a ``stringKeyStringValuePair`` whose ``key`` holds
``{"result": "Success" | "Skipped" | "Failure", "details": {...}}`` as JSON text.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque

from .server import Graph, GraphError, Reply, Request, route
from .sync import ENGINE

RATE, WINDOW = 5, 10.0
_SENT: deque[float] = deque()


def ids(graph: Graph) -> tuple[str, str, str]:
    s = graph.settings
    return (s.get("LAB_GRAPH_CLOUD_SYNC_SP_ID", ""), s.get("LAB_GRAPH_CLOUD_SYNC_JOB_ID", ""),
            s.get("LAB_GRAPH_CLOUD_SYNC_RULE_ID", ""))


@route("POST", "servicePrincipals/{sp}/synchronization/jobs/{job}/provisionOnDemand",
       throttled=False)
async def provision_on_demand(graph: Graph, request: Request) -> Reply:
    """One AD user through the lab's sync engine now, within the documented rate."""
    sp, job, rule = ids(graph)
    if request.params["sp"].lower() != sp.lower() or request.params["job"] != job:
        raise GraphError(404, "Request_ResourceNotFound",
                         f"Resource '{request.params['sp']}' does not exist or one of its "
                         "queried reference-property objects are not present.")
    now = time.monotonic()
    while _SENT and now - _SENT[0] >= WINDOW:
        _SENT.popleft()
    if len(_SENT) >= RATE:
        wait = max(1, int(_SENT[0] + WINDOW - now + 0.999))
        raise GraphError(429, "TooManyRequests", "Too many requests.",
                         {"Retry-After": str(wait)})
    _SENT.append(now)
    body = request.body if isinstance(request.body, dict) else {}
    params = body.get("parameters")
    first = params[0] if isinstance(params, list) and params else None
    subjects = first.get("subjects") if isinstance(first, dict) else None
    subject = subjects[0] if isinstance(subjects, list) and subjects else None
    if (not isinstance(first, dict) or first.get("ruleId") != rule
            or not isinstance(subject, dict) or subject.get("objectTypeName") != "user"
            or not isinstance(subject.get("objectId"), str)):
        raise GraphError(400, "Request_BadRequest",
                         "Invalid parameters: give the job's ruleId and one subject with the "
                         "user's distinguished name and objectTypeName 'user'.")
    await asyncio.sleep(float(graph.settings.get("LAB_GRAPH_ON_DEMAND_SECONDS") or 5))
    result = await ENGINE[0].provision_one(subject["objectId"])
    details = {} if result == "Success" else {
        "errorCode": "RedundantExport" if result == "Skipped" else "ObjectNotFound"}
    value = {"provisioningSteps": [{"name": "EntryImportAdd", "type": "Import",
                                    "status": result,
                                    "details": {"distinguishedName": subject["objectId"]}}]}
    return Reply(200, {
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph."
                          "stringKeyStringValuePair",
        "key": json.dumps({"result": result, "details": details}),
        "value": json.dumps(value),
    })
