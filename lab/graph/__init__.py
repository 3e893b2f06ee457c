"""The lab's Microsoft Graph: an aiohttp server on loopback speaking the Graph v1.0 paths the
service calls, with Graph's JSON shapes, errors, ``$batch``, identity-and-access throttling,
fault injection, and a sync engine that mirrors the lab AD into cloud users.

``start(lab)`` runs it as its own process (``python -m lab.graph``) so ``lab down`` stops it
by pid, and writes ``LAB_GRAPH_URL``/``GRAPH_URL`` (``http://127.0.0.1:PORT/v1.0``),
``LAB_GRAPH_CONTROL_URL``, ``AZURE_CREDENTIAL=static`` and ``AZURE_STATIC_TOKEN``.

Modules
-------
``server``   route registry, auth, faults, throttling, counters, ``/_lab`` control path
``store``    the tenant in memory: users, deleted users, SKUs (real ids and service plans)
``throttle`` token buckets: 3,000 writes / 150 s and the resource-unit quota / 10 s; knobs
``users``, ``licenses``, ``batch``   Graph routes;  ``control``  lab-only routes
``sync``     the Entra Connect stand-in: cycles on a schedule, triggers, busy answers
``mailboxes`` cloud mailboxes: type from on-premises, mailboxSettings, the usage report
``ondemand`` Cloud Sync's ``provisionOnDemand``, at its documented rate

Adding routes (for other peers' helpers)
----------------------------------------
Write ``lab/graph/<name>.py`` and add ``<name>`` to ``OPTIONAL_MODULES`` below if it is not
there (``roles`` and ``mail`` already are: they are imported when the file exists)::

    from .server import Graph, GraphError, Reply, Request, route
    from .users import user_or_404, project

    @route("GET", "roleManagement/directory/roleDefinitions", ru=1)
    async def role_definitions(graph: Graph, request: Request) -> Reply:
        return Reply(200, {"value": [...]})

- ``route(method, template, *, ru=1, writes=None, throttled=True, versions=("v1.0",))``:
  ``template`` is relative to ``/v1.0`` (and ``/beta`` when ``versions`` names it; the handler
  reads ``request.version``) with ``{name}`` segments (``request.params["name"]``); ``ru`` is
  the documented resource-unit cost (an int or ``fn(request) -> int``); writes cost 1 for
  non-GET unless given.
  Every route is then authenticated, delayed/failed/dropped by the fault knobs, charged to the
  budgets (429 + ``Retry-After`` when over), counted in ``GET /_lab/stats`` under
  ``"METHOD template"``, and reachable from ``$batch``. ``throttled=False`` is for paths with
  limits of their own (Outlook's ``sendMail``).
- Raise ``GraphError(status, code, message)`` for Graph's error body.
- Shared state: ``graph.tenant`` (``store.Tenant``: ``users`` by id, ``find(id_or_upn)``,
  ``deleted``, ``skus``); keep your own state as attributes on the tenant or module globals;
  everything runs on one event loop, so no locks. ``graph.knobs`` has the fault/throttle knobs.
- Lab-only controls: ``@control("POST", "mail/reset")`` from ``server`` answers
  ``POST /_lab/mail/reset`` with the same token.
- Files: the process's working directory is the repo; ``LAB_DIR`` (from settings) is
  ``graph.settings["LAB_DIR"]``.
"""

from __future__ import annotations

import os
import uuid

from lab import tokens
from lab.core import Lab, free_port, wait_for_port

ROUTE_MODULES = ("users", "licenses", "batch", "control", "sync", "ondemand", "mailboxes")
OPTIONAL_MODULES = ("roles", "mail")

# Settings the lab writes, with their defaults; each may be overridden from the environment
# of ``python -m lab up`` (e.g. LAB_GRAPH_SYNC_DELAY=0.5).
KNOB_SETTINGS = {
    "LAB_GRAPH_LATENCY_MS": "0",
    "LAB_GRAPH_ERROR_RATE": "0",
    "LAB_GRAPH_DROP_RATE": "0",
    "LAB_GRAPH_WRITES_PER_WINDOW": "3000",
    "LAB_GRAPH_WRITE_WINDOW_SECONDS": "150",
    "LAB_GRAPH_RU_PER_WINDOW": "0",
    "LAB_GRAPH_RU_WINDOW_SECONDS": "10",
    "LAB_GRAPH_SYNC_DELAY": "30",  # how long one sync cycle runs
    "LAB_GRAPH_SYNC_INTERVAL": "1800",  # Entra Connect's schedule: a cycle every 30 minutes
    "LAB_GRAPH_E3_UNITS": "250",
    "LAB_GRAPH_EXO2_UNITS": "250",
    "LAB_GRAPH_ADDON_UNITS": "25",
    "LAB_GRAPH_ON_DEMAND_SECONDS": "5",  # one provisionOnDemand (an assumption: no figure given)
}


def start(lab: Lab) -> None:
    """Start the Graph process on a free loopback port and publish its settings."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # One tenant name for every peer: the one another peer already published, if any.
    published = lab.settings.get("LAB_TENANT_DOMAIN", "").split(".")[0]
    tenant = lab.settings.get("LAB_TENANT") or published or "o365lab"
    settings = lab.settings
    settings["LAB_TENANT"] = tenant
    settings["LAB_GRAPH_TENANT_ID"] = str(uuid.uuid5(uuid.NAMESPACE_DNS, tenant))
    settings["LAB_GRAPH_URL"] = f"{base}/v1.0"
    settings["LAB_GRAPH_CONTROL_URL"] = f"{base}/_lab"
    settings["GRAPH_URL"] = f"{base}/v1.0"
    # A JWT with every permission, signed with the lab's key (lab/tokens.py); kept across a
    # restart of this peer: the vault and relay peers accept the same token.
    tokens.ensure(lab)
    settings.setdefault("ROUTING_DOMAIN", f"{tenant}.mail.onmicrosoft.com")
    # The tenant's one Cloud Sync agent (lab/graph/ondemand.py), and the service's settings
    # that name it (read when SYNC_TRIGGER=cloud-sync).
    agent = uuid.uuid5(uuid.NAMESPACE_DNS, f"{tenant}.cloud-sync")
    cloud_sync = {
        "LAB_GRAPH_CLOUD_SYNC_SP_ID": str(agent),
        "LAB_GRAPH_CLOUD_SYNC_JOB_ID":
            f"AD2AADProvisioning.{agent.hex}.{uuid.uuid5(agent, 'job').hex}",
        "LAB_GRAPH_CLOUD_SYNC_RULE_ID": str(uuid.uuid5(agent, "rule")),
    }
    settings.update(cloud_sync)
    settings["CLOUD_SYNC_SERVICE_PRINCIPAL_ID"] = cloud_sync["LAB_GRAPH_CLOUD_SYNC_SP_ID"]
    settings["CLOUD_SYNC_JOB_ID"] = cloud_sync["LAB_GRAPH_CLOUD_SYNC_JOB_ID"]
    settings["CLOUD_SYNC_RULE_ID"] = cloud_sync["LAB_GRAPH_CLOUD_SYNC_RULE_ID"]
    for name, default in KNOB_SETTINGS.items():
        settings[name] = os.environ.get(name, default)
    lab.save()  # the process reads settings.env at start
    proc = lab.python("graph", "lab.graph", "--settings", str(lab.settings_file),
                      "--port", str(port))
    wait_for_port("127.0.0.1", port, peer="graph", lab=lab, proc=proc, timeout=60)
    lab.endpoint("graph", "url", f"{base}/v1.0")
