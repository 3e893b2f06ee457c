"""Not a process: the service's own settings for the lab, written last into settings.env.

Delays are shortened so that one ``run --once`` on the lab finishes in seconds (the licence
step's wait for sync retries after seconds, not minutes); every other value is the default a
production deployment would have.

The lab's sync engine runs Entra Connect's schedule (a cycle every 30 minutes, each running
30 s: ``lab/graph/sync.py``), so the lab's service asks for the sync: ``SYNC_TRIGGER=connect``
(``LAB_SYNC_TRIGGER`` in ``lab up``'s environment picks another), and looks for the synced
user one cycle after the mailbox step. The test session makes the cycles quick itself
(``tests/conftest.py``), saying so; the demo and the benchmark keep the 30-minute schedule."""

from __future__ import annotations

import os

from .core import Lab

LAB_SERVICE_SETTINGS = {
    "SYNC_TRIGGER": "connect",
    "SYNC_WAIT_SECONDS": "75",  # two 30-s cycles and a busy retry: one look, not several
    "SYNC_BUSY_RETRY_SECONDS": "10",
    "SYNC_RETRY_MIN_SECONDS": "2",
    "SYNC_RETRY_MAX_SECONDS": "20",
    "SYNC_DEADLINE_HOURS": "24",
    "LEASE_SECONDS": "30",
    "POLL_SCHEDULE": "*/15 * * * * *",
    "RECONCILE_SCHEDULE": "0 30 * * * *",
    "REPORT_SCHEDULE": "0 0 7 * * *",
    "ROLES_SCHEDULE": "0 */15 * * * *",
    "ROLES_ENABLED": "true",
    "FUNCTIONS_WORKER_RUNTIME": "python",
    "AZURE_FUNCTIONS_ENVIRONMENT": "Development",
}


def start(lab: Lab) -> None:
    for key, value in LAB_SERVICE_SETTINGS.items():
        lab.settings.setdefault(key, value)
    if os.environ.get("LAB_SYNC_TRIGGER"):
        lab.settings["SYNC_TRIGGER"] = os.environ["LAB_SYNC_TRIGGER"]
