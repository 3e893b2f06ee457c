"""Not a process: the service's own settings for the lab, written last into settings.env.

Delays are shortened so that one ``run --once`` on the lab finishes in seconds (the licence
step's wait for sync retries after seconds, not minutes); every other value is the default a
production deployment would have."""

from __future__ import annotations

from .core import Lab

LAB_SERVICE_SETTINGS = {
    "SYNC_RETRY_MIN_SECONDS": "2",
    "SYNC_RETRY_MAX_SECONDS": "20",
    "SYNC_DEADLINE_HOURS": "24",
    "LEASE_SECONDS": "30",
    "POLL_SCHEDULE": "0 */5 * * * *",
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
