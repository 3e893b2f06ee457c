"""The lab-only control path of the Exchange endpoint: its knobs and injected faults.

Knobs (set at start from the environment / lab settings, changed at run time by tests
through ``configure(lab, ...)``, which POSTs to ``/lab/knobs`` with a lab-only token):

    latency_ms             {"*": 0, "Enable-RemoteMailbox": 200}: delay per cmdlet call
    open_latency_ms        delay to open a runspace pool (Exchange loads the user's RBAC
                           roles and builds the session; seconds on a real server)
    max_sessions_per_user  Exchange's PowerShellMaxConcurrency (default 18): more open
                           runspace pools for one user are refused at Create
    idle_timeout_seconds   pools idle this long are dropped, as IIS/WinRM do (a shorter
                           IdleTimeOut the client asks for in Create applies instead)
    already_enabled_text   the text Enable-RemoteMailbox gives a recipient already (same
                           RecipientTaskException, other words: another release or language);
                           null keeps Exchange's English "is already mail-enabled"
    denied_cmdlets         cmdlets the service account's management role lacks: Exchange's
                           RBAC hides them, so calling one is CommandNotFoundException (e.g.
                           ["Set-RemoteMailbox"]: a role set up before leavers)
    faults                 [{"kind": "http500"|"drop"|"slow", "action": "Command"|...|"any",
                             "count": 1, "skip": 0, "seconds": 5, "when": "before"|"after"}]
                           injected into the next matching WS-Management requests, after
                           ``skip`` of them; "after" lets the request take effect first
"""

from __future__ import annotations

import json
import os
import ssl
from typing import Any

import httpx

from lab.core import Lab

DEFAULT_KNOBS: dict[str, Any] = {
    "latency_ms": {"*": 0},
    "open_latency_ms": 0,
    "max_sessions_per_user": 18,
    "idle_timeout_seconds": 900,
    "already_enabled_text": None,
    "denied_cmdlets": [],
    "faults": [],
}


def knobs_from_env() -> dict[str, Any]:
    """Start values from ``lab up``'s environment: LAB_EXCHANGE_LATENCY_MS, _MAX_SESSIONS,
    _FAULTS."""
    knobs: dict[str, Any] = {}
    if os.environ.get("LAB_EXCHANGE_LATENCY_MS"):
        knobs["latency_ms"] = {"*": float(os.environ["LAB_EXCHANGE_LATENCY_MS"])}
    if os.environ.get("LAB_EXCHANGE_MAX_SESSIONS"):
        knobs["max_sessions_per_user"] = int(os.environ["LAB_EXCHANGE_MAX_SESSIONS"])
    if os.environ.get("LAB_EXCHANGE_FAULTS"):
        knobs["faults"] = json.loads(os.environ["LAB_EXCHANGE_FAULTS"])
    return knobs


def configure(lab: Lab, **changes: Any) -> dict[str, Any]:
    """Change the running endpoint's knobs (see the module docstring); ``reset=True``
    restores the start values, ``close_sessions=True`` forgets every open pool.
    Returns the knobs, open sessions per user and counters."""
    url = lab.settings["LAB_EXCHANGE_URL"].rsplit("/", 1)[0] + "/lab/knobs"
    ca = lab.settings.get("LAB_CA_CERT") or lab.settings.get("CA_BUNDLE")
    response = httpx.post(
        url, json=changes, headers={"X-Lab-Token": lab.settings["LAB_EXCHANGE_ADMIN_TOKEN"]},
        verify=ssl.create_default_context(cafile=ca) if ca else True, timeout=10,
    )
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def status(lab: Lab) -> dict[str, Any]:
    """The endpoint's knobs, open sessions per user and counters."""
    return configure(lab)
