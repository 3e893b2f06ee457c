"""When the licence step looks for a synced user (pure: no I/O, one clock given by the caller).

The licence message goes out with ``SYNC_WAIT_SECONDS`` of invisibility, the fallback that holds
when a worker stops or a peer cannot say when its sync ended. With a trigger, the wait ends as
soon as the sync that covers the user has finished (``shared.provisioning.sync`` makes the
message visible then, by Azure Queue storage's Update Message with ``visibilitytimeout=0``):

``connect``     the Connect server's scheduler (``Get-ADSyncScheduler``, "Microsoft Entra Connect
                Sync: Scheduler", learn.microsoft.com/entra/identity/hybrid/connect/
                how-to-connect-sync-feature-scheduler): ``SyncCycleInProgress`` says a cycle runs,
                ``NextSyncCycleStartTimeInUTC`` is set anew when one ends. Read before the
                trigger is sent (``baseline``; a cycle that runs then would answer busy, so no
                trigger is sent), the cycle the trigger started has ended once no cycle runs and
                the next start time differs from the baseline, or a read saw it run
                (``cycle_over``). Comparing the
                server's own values, never its clock with ours, needs no clock agreement.
``cloud-sync``  ``provisionOnDemand`` answers for the user: looked at right away, and an export
                that failed is a named wait (``on_demand_failed``), never a licence attempt.
``none``        the wait alone.

A look that finds the user not there yet after a finished sync (Entra ID's own replication,
seconds) comes again on the short schedule ``QUICK_RETRIES`` before the flow's back-off
(``sync_delay``); the stuck alert counts from after it (``stuck_at``).
"""

from __future__ import annotations

from dataclasses import dataclass

QUICK_RETRIES = (5.0, 10.0, 20.0, 40.0)  # s: Entra ID's replication after an export
POLL_SECONDS = 3.0  # how often the scheduler is read while a triggered cycle runs
SUCCESS = "Success"  # provisionOnDemand's result for an export that succeeded


@dataclass(frozen=True)
class Scheduler:
    """What ``Get-ADSyncScheduler`` said: a cycle runs now, and the next cycle's start as the
    Connect server words it (compared, never parsed)."""

    in_progress: bool
    next_start: str


def baseline(reading: Scheduler) -> str | None:
    """What to watch for the cycle a trigger sent now would start; None: a cycle runs, so a
    trigger would be answered busy; ask again once it has ended."""
    return None if reading.in_progress else reading.next_start


def cycle_over(before: str, reading: Scheduler, seen_running: bool = False) -> bool:
    """Whether the cycle started after ``before`` was read has ended: the scheduler is idle
    and either its next start is new or a read since the trigger saw the cycle run (the usual
    way to wait for a cycle: ``SyncCycleInProgress`` true, then false; the next start alone
    would miss a server whose scheduler keeps it across a triggered cycle)."""
    return not reading.in_progress and (seen_running or reading.next_start != before)


def quick_retries(trigger: str) -> tuple[float, ...]:
    """The short schedule for a trigger whose end is known; none for ``none`` (the first look
    comes after a guessed wait, so a miss means the schedule has not run yet)."""
    return () if trigger == "none" else QUICK_RETRIES


def sync_delay(attempts: int, quick: tuple[float, ...], low: float, high: float) -> float:
    """Seconds before a user not synced yet is looked at again, after ``attempts`` looks: the
    short schedule first (never above ``high``), then doubling from ``low`` up to ``high``."""
    if 1 <= attempts <= len(quick):
        return min(high, quick[attempts - 1])
    return float(min(high, low * 2 ** max(attempts - 1 - len(quick), 0)))


def stuck_at(stuck_after: int, quick: tuple[float, ...]) -> int:
    """The attempt at which a user waiting for the sync is reported stuck: the short retries
    take seconds, so they do not count toward it."""
    return stuck_after + len(quick)


def on_demand_failed(result: str | None, who: str) -> tuple[str, str] | None:
    """The named wait (reason, fix) of a user whose provisionOnDemand did not export, or None
    when it did or nobody asked."""
    if result is None or result == SUCCESS:
        return None
    return (f"Cloud Sync's export failed for {who} (provisionOnDemand: {result})",
            "check the user in Cloud Sync's provisioning logs (Entra admin center > Entra "
            "Connect > Cloud Sync > Provisioning logs): the OU in scope, no attribute conflict; "
            "retried")
