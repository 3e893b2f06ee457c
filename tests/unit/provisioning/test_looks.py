"""When the licence step looks after a sync (``shared.provisioning.looks``): the Connect cycle's
end read from the scheduler, the short retries, the stuck alert after them, provisionOnDemand's
failure as a named wait."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shared.provisioning.looks import (
    POLL_SECONDS,
    QUICK_RETRIES,
    SUCCESS,
    Scheduler,
    baseline,
    cycle_over,
    on_demand_failed,
    quick_retries,
    stuck_at,
    sync_delay,
)
from shared.provisioning.sync import Coalescer, Sent

T0, T1 = "2026-12-06T10:00:00.000000Z", "2026-12-06T10:30:31.000000Z"


def test_no_trigger_is_sent_while_a_cycle_runs() -> None:
    """A cycle in progress would answer busy: no baseline; an idle scheduler gives its next
    start time as the baseline."""
    assert (None, T0) == (baseline(Scheduler(True, T0)), baseline(Scheduler(False, T0)))


def test_the_triggered_cycle_is_over_once_idle_with_a_new_next_start() -> None:
    """Running: not over. Idle with the same next start: the cycle has not started (or not
    ended) yet. Idle with a new one: it ended."""
    assert [False, False, False, True] == [
        cycle_over(T0, Scheduler(True, T0)), cycle_over(T0, Scheduler(True, T1)),
        cycle_over(T0, Scheduler(False, T0)), cycle_over(T0, Scheduler(False, T1))]


def test_a_cycle_seen_running_is_over_once_idle_whatever_the_next_start() -> None:
    """A Connect server whose scheduler keeps its next start across a triggered cycle: the
    cycle a read saw run has ended when the scheduler is idle again, not while it runs."""
    assert [True, False, True] == [
        cycle_over(T0, Scheduler(False, T0), seen_running=True),
        cycle_over(T0, Scheduler(True, T0), seen_running=True),
        cycle_over(T0, Scheduler(False, T1), seen_running=True)]


def test_short_retries_come_only_with_a_trigger_that_tells_the_end() -> None:
    assert ((), QUICK_RETRIES, QUICK_RETRIES) == (
        quick_retries("none"), quick_retries("connect"), quick_retries("cloud-sync"))
    assert (5.0, 10.0, 20.0, 40.0) == QUICK_RETRIES
    assert 3.0 == POLL_SECONDS  # a 30-s cycle's end is seen within 3 s: ten reads a cycle


def test_the_short_schedule_first_then_the_back_off_from_its_start() -> None:
    """5, 10, 20, 40 s, then 60, 120, 240 ... up to the maximum, as without the short ones."""
    delays = [sync_delay(n, QUICK_RETRIES, 60.0, 3600.0) for n in range(1, 12)]
    assert [5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0] == delays


def test_a_short_retry_never_exceeds_the_maximum() -> None:
    """The lab's back-off (2 to 20 s) caps the short schedule too."""
    assert [5.0, 10.0, 20.0, 20.0, 2.0] == [sync_delay(n, QUICK_RETRIES, 2.0, 20.0)
                                            for n in range(1, 6)]


def test_without_short_retries_the_back_off_is_unchanged() -> None:
    assert [60.0, 60.0, 120.0, 3600.0] == [sync_delay(n, (), 60.0, 3600.0)
                                           for n in (0, 1, 2, 10)]
    assert isinstance(sync_delay(3, (), 60, 3600), float)


@given(st.integers(min_value=0, max_value=60))
def test_a_delay_never_exceeds_the_maximum_nor_falls_below_the_short_start(n: int) -> None:
    delay = sync_delay(n, QUICK_RETRIES, 60.0, 3600.0)
    assert 5.0 <= delay <= 3600.0


def test_the_stuck_alert_counts_after_the_short_retries() -> None:
    assert (10, 6) == (stuck_at(6, QUICK_RETRIES), stuck_at(6, ()))


def test_a_failed_on_demand_export_is_named_with_what_to_check() -> None:
    named = on_demand_failed("Failure", "ann@contoso.com")
    assert named is not None
    reason, fix = named
    assert "Cloud Sync's export failed for ann@contoso.com (provisionOnDemand: Failure)" == reason
    assert ("check the user in Cloud Sync's provisioning logs (Entra admin center > Entra "
            "Connect > Cloud Sync > Provisioning logs): the OU in scope, no attribute "
            "conflict; retried") == fix
    assert (None, None, "Success") == (on_demand_failed(SUCCESS, "a"), on_demand_failed(None, "a"),
                                       SUCCESS)
    assert on_demand_failed("Skipped", "b") is not None


def test_a_user_still_missing_after_a_cycle_ended_asks_for_a_new_one_at_once() -> None:
    """Within the horizon a repeated ask is ignored; once the triggered cycle has ended (a
    failed cycle, say) the same ask sends a new trigger."""
    c = Coalescer(settle=1.0, busy_retry=10.0, horizon=60.0)
    c.request(0.0)
    c.sent(1.0, Sent.SENT, 1.1)
    c.request(20.0, again=True)
    ignored = c.next_at
    c.ended()
    c.request(21.0, again=True)
    assert (None, None, 22.0) == (ignored, c.last_sent, c.next_at)
