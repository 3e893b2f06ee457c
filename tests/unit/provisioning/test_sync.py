"""The sync trigger's decisions, in memory: when a Connect trigger is sent, what one trigger
covers, what Connect's busy answer does, and provisionOnDemand's pacing."""

from __future__ import annotations

from shared.provisioning.sync import FAILED_RETRY, Coalescer, Pacer, Sent


def test_one_trigger_covers_every_user_enabled_before_it_was_sent() -> None:
    """Three users enabled within the settle time: one trigger, and nothing pending after."""
    c = Coalescer(settle=2.0, busy_retry=10.0)
    for at in (0.0, 0.5, 1.5):
        c.request(at)
    due = [c.due(t) for t in (1.9, 2.0)]
    c.sent(2.0, Sent.SENT, 2.3)
    assert ([False, True], None, False) == (due, c.next_at, c.due(100.0))


def test_a_user_enabled_while_the_trigger_was_on_its_way_needs_another() -> None:
    """A request after the trigger started is not covered by it: the next one comes after
    the settle time."""
    c = Coalescer(settle=2.0, busy_retry=10.0)
    c.request(0.0)
    c.request(2.1)  # while the trigger sent at 2.0 was on its way
    c.sent(2.0, Sent.SENT, 2.4)
    assert 4.4 == c.next_at


def test_busy_is_no_error_the_trigger_goes_again_later() -> None:
    """Connect's "AAD is busy": the same users stay pending, asked again after busy_retry;
    a failure waits longer."""
    c = Coalescer(settle=2.0, busy_retry=10.0)
    c.request(0.0)
    c.sent(2.0, Sent.BUSY, 2.2)
    after_busy = c.next_at
    c.sent(12.2, Sent.FAILED, 12.5)
    assert (12.2, 12.5 + FAILED_RETRY, 0.0) == (after_busy, c.next_at, c.first_pending)


def test_a_user_still_not_synced_asks_again_only_after_the_horizon() -> None:
    """The licence step's repeated asks are ignored while a recent trigger may yet bring the
    user; after the horizon they send a new one."""
    c = Coalescer(settle=1.0, busy_retry=10.0, horizon=30.0)
    c.request(0.0)
    c.sent(1.0, Sent.SENT, 1.1)
    c.request(20.0, again=True)
    ignored = c.next_at
    c.request(40.0, again=True)
    assert (None, 41.0) == (ignored, c.next_at)


def test_provision_on_demand_is_paced_at_five_per_ten_seconds() -> None:
    """Five sends in a row, then the sixth waits until the first leaves the 10 s window."""
    pacer = Pacer()
    waits = []
    for t in (0.0, 1.0, 2.0, 3.0, 4.0):
        waits.append(pacer.wait(t))
        pacer.took(t)
    assert ([0.0] * 5, 5.0, 0.0) == (waits, pacer.wait(5.0), pacer.wait(10.0))
