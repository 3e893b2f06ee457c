"""The provisioning flow: what each timer and queue function does.

    poll        DirSync delta of O365_Provision ──▶ queue mailbox
    handle      mailbox: remote mailbox, O365_Provision → O365_License ──▶ queue license
                license: synced? routing address? capacity ──▶ assignLicense ──▶ out of O365_License
                roles:   one role change
    leavers: one leaver: shared mailbox (both sides) ──▶ licence back ──▶ out of O365_Leavers
    leavers_cycle  members of O365_Leavers (and disabled accounts) ──▶ limit ──▶ queue leavers
    reconcile   members of either group without a live work item ──▶ enqueued again
    report      outcomes since the last report, users waiting ──▶ digest mail
    poisoned    a message that failed maxDequeueCount times ──▶ outcome, alert

The rooms:

    transitions.py  the work item's state machine: every decision, pure (tested in memory)
    handlers.py     the queue handlers: I/O around the transitions
    steps.py        adapters from a work item to the mailbox, licence and role steps
    timers.py       poll, reconcile, report, roles
    leavers.py      the leavers cycle and the leaver step
    alerts.py       the mails sent as things happen
    service.py      the composition root: settings, storage, the peers' clients

The composition of the service, above every capability and peer; only the entry points
(``shared.cli``, ``function_app.py``) import it.
May import: `errors`, `log`, `config`, `secrets`, `telemetry`, `results`, `store`, `ad`,
`exchange`, `graph`, `mail`, `provisioning`, `roles`, `leavers`, `check` (the start-up check).
"""

from .handlers import enqueue, handle, log, poisoned, redrive
from .leavers import leavers_cycle
from .service import Pool, Service, io, service
from .timers import (
    Report,
    every_timer,
    needs_work,
    poll,
    provisioned_row,
    reconcile,
    report,
    roles_cycle,
)
from .transitions import GRACE, STEP_OF_QUEUE, Handled, Policy, fingerprint

__all__ = [
    "GRACE",
    "STEP_OF_QUEUE",
    "Handled",
    "Policy",
    "Pool",
    "Report",
    "Service",
    "enqueue",
    "every_timer",
    "fingerprint",
    "handle",
    "io",
    "leavers_cycle",
    "log",
    "needs_work",
    "poisoned",
    "poll",
    "provisioned_row",
    "reconcile",
    "redrive",
    "report",
    "roles_cycle",
    "service",
]
