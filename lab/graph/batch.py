"""``$batch``: JSON batching as Graph documents it.

At most 20 requests; each item is routed, throttled and counted on its own (a batch does not
save quota, only round trips); item URLs must be relative (``/users/...``); an item whose
``dependsOn`` names a failed item is answered 424 Failed Dependency. Unknown item properties
(such as a mis-serialised ``depends_on``) are ignored, as Graph ignores them: the item then
simply runs without ordering.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .server import Graph, GraphError, Reply, Request, graph_error_body, route

MAX_ITEMS = 20


@route("POST", "$batch", throttled=False, writes=0)
async def batch(graph: Graph, request: Request) -> Reply:
    body = request.body
    if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
        raise GraphError(400, "BadRequest", "Invalid batch payload format.")
    items: list[Any] = body["requests"]
    if len(items) > MAX_ITEMS:
        raise GraphError(400, "BadRequest", f"The number of batch requests ({len(items)}) "
                         f"exceeds the limit of {MAX_ITEMS}.")
    ids = [str(item.get("id", "")) for item in items if isinstance(item, dict)]
    if len(ids) != len(items) or "" in ids or len(set(ids)) != len(ids):
        raise GraphError(400, "BadRequest", "Each batch request needs a unique, non-empty id.")
    statuses: dict[str, int] = {}
    responses = []
    for item in items:
        item_id = str(item["id"])
        reply = await _one(graph, request, item, statuses)
        statuses[item_id] = reply.status
        answer: dict[str, Any] = {"id": item_id, "status": reply.status,
                                  "headers": dict(reply.headers)}
        if reply.body is not None:
            answer["headers"]["Content-Type"] = "application/json"
            answer["body"] = reply.body
        responses.append(answer)
    return Reply(200, {"responses": responses})


async def _one(graph: Graph, outer: Request, item: dict[str, Any],
               statuses: dict[str, int]) -> Reply:
    depends = item.get("dependsOn") or []
    for dependency in depends:
        if str(dependency) not in statuses:
            return Reply(400, graph_error_body(
                "BadRequest", f"dependsOn '{dependency}' does not name an earlier request."))
        if statuses[str(dependency)] >= 400:
            return Reply(424, graph_error_body("FailedDependency", "Failed Dependency"))
    url = str(item.get("url", ""))
    method = str(item.get("method", "")).upper()
    parts = urlsplit(url)
    if parts.scheme or parts.netloc:
        return Reply(400, graph_error_body(
            "BadRequest", "Invalid request URL: batch request URLs must be relative."))
    if not method:
        return Reply(400, graph_error_body("BadRequest", "A batch request needs a method."))
    headers = {str(k).lower(): str(v) for k, v in (item.get("headers") or {}).items()}
    inner = Request(
        method=method,
        path=parts.path.strip("/"),
        query=dict(parse_qsl(parts.query, keep_blank_values=True)),
        headers=headers,
        body=item.get("body"),
        base_url=outer.base_url,
        roles=outer.roles,  # each item is authorised with the batch's token, as in Graph
    )
    return await graph.dispatch(inner)
