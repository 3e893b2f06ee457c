"""Lab-only control path ``/_lab/...`` (same bearer token; never part of Graph).

| call | what |
|---|---|
| ``GET /_lab/stats`` | counters per ``METHOD template`` (requests, reads, writes, 429,
  4xx/5xx), ``total``, ``cloudMailboxes``, ``unlicensedUserMailboxes``, budget use |
| ``POST /_lab/stats/reset`` | zero the counters |
| ``GET``/``POST /_lab/config`` | read / change knobs (``lab.graph.throttle.Knobs``);
  changing a throttle knob refills the buckets |
| ``POST /_lab/units`` | ``{"ENTERPRISEPACK": 5}``: set prepaid units per SKU part number |
| ``POST /_lab/users`` | ``{"users": [{graph properties}]}``: create cloud users (seeding path) |
| ``POST /_lab/sync`` | run a sync poll now; ``GET /_lab/sync``: the sync engine's state |
| ``POST /_lab/token`` | ``{"roles": [...]}``: a new app token with only these application
  permissions (``lab/tokens.py``); the lab's own token keeps all of them |
| ``POST /_lab/mailboxes/usage`` | ``{"user": id|upn, "storageUsedBytes": n, "hasArchive": b}``:
  the mailbox in the usage report (``lab/graph/mailboxes.py``) |
| ``POST /_lab/reports/settings`` | ``{"displayConcealedNames": b}``: hashes for names in reports |
| ``POST /_lab/licenses/group`` | ``{"user": id|upn, "sku": part, "group": id}``: a licence
  inherited from a group (``lab/graph/licenses.py``) |
"""

from __future__ import annotations

from typing import Any

from lab import tokens

from .server import JSON, Graph, control

THROTTLE_KNOBS = frozenset({"writes_per_window", "write_window_seconds", "ru_per_window",
                            "ru_window_seconds"})


@control("GET", "stats")
async def stats(graph: Graph, _: JSON) -> JSON:
    budgets = graph.budgets
    budgets.writes.refill()
    return {
        **graph.stats.as_json(),
        "cloudMailboxes": sorted(graph.tenant.cloud_mailboxes),
        "unlicensedUserMailboxes": sorted(graph.tenant.unlicensed_user_mailboxes),
        "budgets": {
            "writesCapacity": budgets.writes.capacity,
            "writesAvailable": round(budgets.writes.tokens, 2),
            "writeWindowSeconds": graph.knobs.write_window_seconds,
            "resourceUnitCapacity": budgets.units.capacity,
        },
        "users": graph.tenant.size(),
    }


@control("POST", "stats/reset")
async def reset_stats(graph: Graph, _: JSON) -> JSON:
    graph.stats.per_path.clear()
    graph.stats.total.clear()
    graph.tenant.cloud_mailboxes.clear()
    graph.tenant.unlicensed_user_mailboxes.clear()
    return {"reset": True}


@control("GET", "config")
async def get_config(graph: Graph, _: JSON) -> JSON:
    return graph.knobs.as_json()


@control("POST", "config")
async def set_config(graph: Graph, body: JSON) -> JSON:
    changed = graph.knobs.update(body)
    if THROTTLE_KNOBS & set(changed):
        graph.budgets.reset()
    if "sync_interval_seconds" in changed:
        from .sync import ENGINE

        if ENGINE:
            ENGINE[0].reschedule()
    return graph.knobs.as_json()


@control("POST", "units")
async def set_units(graph: Graph, body: JSON) -> JSON:
    result: dict[str, Any] = {}
    for part, units in body.items():
        sku = graph.tenant.sku_by_part(part)
        if sku is None:
            raise KeyError(f"no SKU {part}")
        sku.prepaid = int(units)
        result[part] = {"prepaid": sku.prepaid, "consumed": sku.consumed}
    return result


@control("POST", "users")
async def add_users(graph: Graph, body: JSON) -> JSON:
    created = [graph.tenant.add(props)["id"] for props in body["users"]]
    return {"ids": created}


@control("POST", "token")
async def token(graph: Graph, body: JSON) -> JSON:
    """A token like the lab's own, with only the application permissions in ``roles``: what
    Entra issues after an admin removed the others from the app."""
    roles = [str(r) for r in body.get("roles") or []]
    key = graph.settings.get(tokens.KEY_SETTING, "")
    return {"token": tokens.mint(key, roles, tenant=graph.tenant.tenant_id), "roles": roles}
