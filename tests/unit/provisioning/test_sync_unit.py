"""The sync trigger's decisions (``Coalescer``, ``Pacer``) on the clock production gives them:
``time.monotonic()`` values, hours into a worker's life, never 0.0. Each boundary is stated as
the documented number: provisionOnDemand's 5 requests per 10 s, a failed trigger's 60 s."""

from __future__ import annotations

import pytest

from shared.provisioning.sync import Coalescer, Pacer, Sent

T = 183_402.75  # a monotonic clock some two days after boot


def test_a_trigger_is_due_from_the_first_request_plus_the_settle_time() -> None:
    """Due exactly settle seconds after the first request, not before; later requests before
    the trigger do not push it back."""
    c = Coalescer(settle=2.0, busy_retry=10.0)
    c.request(T)
    c.request(T + 1.5)
    assert (False, True, T + 2.0, T) == (c.due(T + 1.99), c.due(T + 2.0), c.next_at,
                                         c.first_pending)


def test_nothing_requested_is_never_due() -> None:
    """No request, no trigger, however late."""
    assert False is Coalescer(settle=2.0, busy_retry=10.0).due(T)


def test_a_sent_trigger_covers_the_requests_before_it_started() -> None:
    """SENT with no request at or after its start: nothing is pending, and its start is
    remembered for the horizon."""
    c = Coalescer(settle=2.0, busy_retry=10.0)
    c.request(T + 3.0)
    c.request(T + 1.0)  # an older request arriving late does not make the latest older
    c.sent(T + 3.5, Sent.SENT, T + 4.0)
    assert (None, None, T + 3.5, T + 3.0) == (c.first_pending, c.next_at, c.last_sent,
                                              c.last_request)


@pytest.mark.parametrize("late", [0.0, 0.5])
def test_a_request_at_or_after_the_trigger_started_waits_for_the_next(late: float) -> None:
    """A user enabled at the moment the trigger started, or later, may have missed that cycle:
    pending again from their request, due settle seconds after the answer."""
    c = Coalescer(settle=2.0, busy_retry=10.0)
    c.request(T)
    c.request(T + 2.0 + late)
    c.sent(T + 2.0, Sent.SENT, T + 3.0)
    assert (T + 2.0 + late, T + 5.0) == (c.first_pending, c.next_at)


def test_busy_keeps_the_requests_pending_and_retries_after_busy_retry() -> None:
    """Connect's "AAD is busy": the same requests wait busy_retry seconds from the answer,
    and the busy trigger counts as no trigger for the horizon."""
    c = Coalescer(settle=2.0, busy_retry=10.0, horizon=30.0)
    c.request(T)
    c.sent(T + 2.0, Sent.BUSY, T + 2.5)
    assert (T + 12.5, T, None) == (c.next_at, c.first_pending, c.last_sent)


@pytest.mark.parametrize(("busy_retry", "wait"), [(10.0, 60.0), (90.0, 90.0)])
def test_a_failed_trigger_waits_60_seconds_or_busy_retry_if_longer(busy_retry: float,
                                                                   wait: float) -> None:
    """A failed trigger (not busy) is tried again after 60 s, or after busy_retry when that
    is longer; its requests stay pending."""
    c = Coalescer(settle=2.0, busy_retry=busy_retry)
    c.request(T)
    c.sent(T + 2.0, Sent.FAILED, T + 2.5)
    assert (T + 2.5 + wait, T, None) == (c.next_at, c.first_pending, c.last_sent)


def test_asking_again_is_ignored_within_the_horizon_of_the_last_trigger() -> None:
    """The licence step's "still not synced" is ignored for 30 s (the horizon) after a
    trigger started, and taken from the 30th second on; a first request always counts."""
    c = Coalescer(settle=1.0, busy_retry=10.0, horizon=30.0)
    c.request(T)
    c.sent(T + 1.0, Sent.SENT, T + 1.2)
    c.request(T + 30.9, again=True)
    ignored = (c.next_at, c.last_request)
    c.request(T + 31.0, again=True)
    assert ((None, T), T + 32.0) == (ignored, c.next_at)


def test_a_first_request_counts_inside_the_horizon() -> None:
    """Only a repeated ask is held back by the horizon: a user enabled right after a trigger
    gets the next one."""
    c = Coalescer(settle=1.0, busy_retry=10.0, horizon=30.0)
    c.request(T)
    c.sent(T + 1.0, Sent.SENT, T + 1.2)
    c.request(T + 5.0)
    assert T + 6.0 == c.next_at


def test_asking_again_before_any_trigger_counts() -> None:
    """With no trigger sent yet there is nothing to wait for: a repeated ask starts one."""
    c = Coalescer(settle=1.0, busy_retry=10.0, horizon=30.0)
    c.request(T, again=True)
    assert T + 1.0 == c.next_at


def test_on_demand_allows_five_requests_per_ten_seconds() -> None:
    """Five sends in a row go at once; the sixth waits until the first is 10 s old, and at
    that moment the first leaves the window."""
    pacer = Pacer()
    waits = []
    for i in range(5):
        waits.append(pacer.wait(T + i))
        pacer.took(T + i)
    assert ([0.0] * 5, 5.0, 0.5) == (waits, pacer.wait(T + 5.0), pacer.wait(T + 9.5))
    assert (0.0, 4) == (pacer.wait(T + 10.0), len(pacer.sent_at))


def test_a_pacer_of_two_per_second_waits_for_the_older_send() -> None:
    """Limit and window are the pacer's own: two per second, the third waits for the first
    send to be a second old."""
    pacer = Pacer(limit=2, window=1.0)
    pacer.took(T)
    pacer.took(T + 0.25)
    assert (0.5, 0.0) == (pacer.wait(T + 0.5), pacer.wait(T + 1.0))


def test_graph_s_retry_after_blocks_the_pacer_beyond_its_window() -> None:
    """blocked_until (set from a throttled answer) holds sends even with room in the window,
    and the longer of the two waits wins."""
    pacer = Pacer()
    pacer.blocked_until = T + 3.0
    free = pacer.wait(T)
    for i in range(5):
        pacer.took(T + i)
    pacer.blocked_until = T + 12.0
    assert (3.0, 8.0) == (free, pacer.wait(T + 4.0))
    pacer.blocked_until = T + 6.0
    assert 6.0 == pacer.wait(T + 4.0)
