"""What the service tells an operator, by stable name: the events the alerts and the workbook
read (``infra/monitoring/``), in one place.

Every event is a structlog event (``shared.log``). In Application Insights it is a row of
``traces`` whose ``customDimensions.event`` is its name and whose other customDimensions are
its fields (strings, as Application Insights keeps them), with the invocation's operation_Id.
A name here is a contract: the alert rules, the workbook and the runbook in
``docs/operations.md`` use it, and ``tests/test_kql.py`` fails if one of them asks for a name
that is not in ``CATALOGUE`` or that nothing in ``shared/`` emits.

The facts are emitted where they are known, one call each: the work item's transition
(``transition``: provisioned, failed, blocked, stuck, waiting, shortage), ``enqueued`` (the
start of a user's way through the steps), the timers (``stages``, ``held_plan``,
``sku_capacity``), the Graph middleware (``graph_usage``) and the Exchange session
(``exchange_session_error``). Events logged where they happen keep their own call (the
``CATALOGUE`` names the module).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from shared.store.ledger import LedgerRow, State

from .log import get_logger

if TYPE_CHECKING:
    from shared.store.messages import WorkItem

    from .flow.transitions import Transition

log = get_logger(__name__)

# name: (emitted by, fields, what it means)
CATALOGUE: dict[str, tuple[str, str, str]] = {
    # -- the timers ------------------------------------------------------------------------
    "poll_done": ("flow/timers.py poll", "group, added, removed",
                  "a poll of O365_Provision succeeded; its absence is the no-poll alert"),
    "reconcile_done": ("flow/timers.py reconcile", "enqueued", "a reconcile run finished"),
    "users_in_stage": ("flow/timers.py reconcile (telemetry.stages)",
                       "stage, group, users, waiting, failed, stuck",
                       "members of a step's group, and how many of them wait, failed, or "
                       "waited STUCK_AFTER attempts or more"),
    "report_sent": ("flow/timers.py report", "users, waiting", "the digest went out"),
    "sku_capacity": ("flow/timers.py report (telemetry.sku_capacity)",
                     "sku, consumed, total, available", "units of a SKU when the digest is made"),
    "role_plan_held": ("flow/timers.py roles_cycle (telemetry.held_plan)",
                       "plan_id, guard, grants, revocations, reason",
                       "a role cycle holds changes until an operator approves the plan"),
    # -- one work item ---------------------------------------------------------------------
    "work_enqueued": ("flow/handlers.py enqueue (telemetry.enqueued)",
                      "user, step, correlation_id, delay",
                      "a user's work item was queued; the mailbox one starts the clock"),
    "step_done": ("flow/handlers.py carry_out", "user, step, outcome, attempts, correlation_id",
                  "a step finished for a user"),
    "step_retry": ("flow/handlers.py carry_out", "user, step, outcome, reason, attempts",
                   "a step must wait and comes back after a delay"),
    "step_failed": ("flow/handlers.py carry_out", "user, step, outcome, reason, attempts",
                    "a step failed for good for a user"),
    "safety_stop": ("flow/handlers.py carry_out", "user, step, outcome, reason",
                    "a guard refused a role change"),
    "user_provisioned": ("telemetry.transition", "user, account, licence, sku, correlation_id",
                         "a user is licensed and out of both groups"),
    "user_failed": ("telemetry.transition",
                    "user, step, reason_kind, reason, correlation_id",
                    "a permanent failure; reason_kind is the reason without its values"),
    "user_blocked": ("telemetry.transition", "user, step, reason",
                     "a safety stop on one user's change"),
    "user_waiting": ("telemetry.transition", "user, step, wait, attempts, sku",
                     "a user waits (outage, sync, routing, shortage); sku for a shortage"),
    "user_stuck": ("telemetry.transition", "user, account, step, reason, attempts",
                   "a user has waited exactly STUCK_AFTER attempts at one step (once)"),
    "sku_shortage": ("telemetry.transition", "sku, consumed, total",
                     "the first shortage of a SKU on a day"),
    "message_poisoned": ("flow/handlers.py poisoned", "queue, user, reason",
                         "a message reached <queue>-poison"),
    "message_malformed": ("flow/handlers.py handle", "queue, reason, outcome",
                          "a message that is not ours, parked on the poison queue"),
    # -- leavers (issue 27) ----------------------------------------------------------------
    "leaver_planned": ("flow/leavers.py leavers_cycle", "user, name, correlation_id",
                       "a leaver's work item was queued"),
    "leaver_converted": ("flow/leaver_step.py run_leaver", "user, name, hidden, correlation_id",
                         "the mailbox became shared on-premises (Set-RemoteMailbox -Type Shared)"),
    "leaver_unlicensed": ("flow/leaver_step.py run_leaver", "user, name, skus, correlation_id",
                          "the leaver's licences were removed (skus: part numbers, "
                          "comma-separated)"),
    "leaver_kept": ("flow/leaver_step.py _kept", "user, name, skus, reason, correlation_id",
                    "a leaver's licence was kept, and why"),
    "leaver_left_group": ("flow/leaver_step.py run_leaver", "user, name, group, correlation_id",
                          "the leaver left the leavers group"),
    "leavers_held": ("flow/leavers.py _hold", "plan_id, count, limit",
                     "a cycle over LEAVERS_MAX_PER_DAY is held for `leavers approve`"),
    "leavers_approved": ("flow/leavers.py leavers_cycle", "plan_id, count",
                         "an approved held cycle started"),
    "leavers_group_missing": ("flow/leavers.py candidates", "group, reason, fix",
                              "LEAVERS_GROUP names no group: leavers are not set up, nobody "
                              "starts (the timer does not fail)"),
    # -- the peers --------------------------------------------------------------------------
    "graph_retry": ("graph_pacing.py", "method, path, status, wait_seconds, attempt",
                    "Graph answered 429/503/504 (or dropped): the request waits and retries"),
    "graph_usage": ("graph_pacing.py (telemetry.graph_usage)",
                    "requests, writes, throttled, seconds, write_budget, window_seconds",
                    "one worker's Graph traffic since its last report (one per write window)"),
    "exchange_session_error": ("exchange.py (telemetry.exchange_session_error)",
                               "cmdlet, error, reused_pool",
                               "the PowerShell session to Exchange failed; a new one is opened"),
    "relay_unreachable": ("relay_forward.py", "relay, hybrid_connection, error, transient",
                          "a hybrid connection cannot be used: an outage starts"),
    "relay_restored": ("relay_forward.py",
                       "relay, hybrid_connection, outage_seconds, failed_streams",
                       "the outage ended"),
    "dependency_checked": ("check/__init__.py log_results",
                           "check, ok, status, detail, fix",
                           "one dependency tried at the app's start (or by `check`): ok, "
                           "FAILED with its fix, or skipped because one it needs failed"),
    "role_change_applied": ("rolesync.py", "user, role, action, outcome",
                            "a role was granted or revoked"),
    "role_change_blocked": ("rolesync.py", "guard, user, role, reason",
                            "a guard refused a role change"),
    "role_cycle_stopped": ("rolesync.py", "guard, user, reason",
                           "a guard stopped a whole role cycle"),
}
_RECORDED = {"provisioned": "user_provisioned", "failed": "user_failed",
             "blocked": "user_blocked", "stuck": "user_stuck", "shortage": "sku_shortage"}
# What differs between two failures of the same kind: quoted values, ids, addresses, numbers.
_VALUES = re.compile(
    r"'[^']*'|\"[^\"]*\"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    r"[0-9a-fA-F]{12}|\S+@\S+|\b\d+(?:\.\d+)?\b")


def reason_kind(reason: str) -> str:
    """A failure's reason with its values taken out, so that failures can be counted by
    kind: ``extensionAttribute1 'E5' names no entry of LICENSE_MAP`` and the same with
    ``'P1'`` are one kind."""
    return " ".join(_VALUES.sub("…", reason).split())[:200]


def transition(item: WorkItem, t: Transition, attempts: int) -> None:
    """The outcome events of one work item's transition: one per outcome record, and a
    ``user_waiting`` for a wait."""
    fields: dict[str, Any]
    for record in t.records:
        name = _RECORDED.get(record.kind)
        if name is None:
            continue
        # "name" is a LogRecord attribute: the account name goes as "account"
        fields = {("account" if k == "name" else k): v for k, v in record.fields.items()
                  if k in ("user", "step", "name", "licence", "sku", "reason", "attempts",
                           "consumed", "total", "correlation_id")}
        if record.kind == "failed":
            fields["reason_kind"] = reason_kind(str(record.fields.get("reason", "")))
        (log.warning if record.kind != "provisioned" else log.info)(name, **fields)
    if t.handled.outcome == "retry":
        sku = t.shortage.part_number if t.shortage is not None else None
        log.info("user_waiting", user=str(item.user), step=item.step.value, wait=t.wait,
                 attempts=attempts, sku=sku, correlation_id=item.correlation_id)


def enqueued(item: WorkItem, delay: float) -> None:
    log.info("work_enqueued", user=str(item.user), step=item.step.value,
             correlation_id=item.correlation_id, delay=delay)


def stages(stage: str, group: str, rows: Sequence[LedgerRow | None], stuck_after: int) -> None:
    """``users_in_stage``: the members of ``group`` (one ledger row each, None for none yet)."""
    states = Counter(row.state for row in rows if row is not None)
    stuck = sum(1 for row in rows if row is not None and row.state is State.WAITING
                and row.attempts >= stuck_after)
    log.info("users_in_stage", stage=stage, group=group, users=len(rows),
             waiting=states[State.WAITING], failed=states[State.FAILED], stuck=stuck)


def held_plan(plan_id: str, grants: int, revocations: int, reason: str) -> None:
    guard = "revocation-threshold" if revocations else "grant-limit"
    log.warning("role_plan_held", plan_id=plan_id, guard=guard, grants=grants,
                revocations=revocations, reason=reason)


def sku_capacity(skus: Iterable[Any]) -> None:
    """One ``sku_capacity`` per SKU (``SubscribedSku``: part_number, prepaid, consumed)."""
    for sku in skus:
        log.info("sku_capacity", sku=sku.part_number, consumed=sku.consumed, total=sku.prepaid,
                 available=sku.prepaid - sku.consumed)


def graph_usage(requests: int, writes: int, throttled: int, seconds: float,
                write_budget: int, window_seconds: float) -> None:
    log.info("graph_usage", requests=requests, writes=writes, throttled=throttled,
             seconds=round(seconds, 1), write_budget=write_budget,
             window_seconds=window_seconds)


def exchange_session_error(cmdlet: str, error: str, reused_pool: bool) -> None:
    log.warning("exchange_session_error", cmdlet=cmdlet, error=error, reused_pool=reused_pool)
