"""Looking when the sync has ended (issue 30), on the lab's Connect server and sync engine:
the licence message waits ``SYNC_WAIT_SECONDS`` (here 120 s, the fallback) unless the sync
that covers the user ends first. A cycle that ends early is looked at right away; one that
ends late is not looked at before it ends; Connect answering busy and a failed cycle still
end in a licence; a failed provisionOnDemand export is a named wait, not a licence attempt."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from lab.core import Lab
from lab.seed import seed
from shared import flow
from shared.config import load_settings
from shared.flow.worker import run_once
from tests.conftest import QUICK_SYNC

pytestmark = [pytest.mark.lab, pytest.mark.slow]

FALLBACK = 120.0  # SYNC_WAIT_SECONDS in these tests: a licence sooner was woken


def _control(lab: Lab, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    url = lab.settings["LAB_GRAPH_CONTROL_URL"].rstrip("/") + "/" + path
    headers = {"Authorization": f"Bearer {lab.settings['AZURE_STATIC_TOKEN']}"}
    response = (httpx.get(url, headers=headers, timeout=30) if body is None
                else httpx.post(url, json=body, headers=headers, timeout=30))
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


@pytest.fixture
def cycles(lab: Lab) -> Iterator[Any]:
    """``cycles(seconds)``: Connect's schedule every 30 minutes, each cycle ``seconds`` long;
    the tests' quick cycles and no failing export afterwards."""
    yield lambda seconds: _control(lab, "config", {"sync_delay_seconds": seconds,
                                                   "sync_interval_seconds": 1800.0})
    _control(lab, "sync/fail", {})
    _control(lab, "config", QUICK_SYNC)


def _idle(lab: Lab) -> None:
    """Until no cycle runs (the last quick one, or one the schedule started)."""
    deadline = time.monotonic() + 60
    while _control(lab, "sync")["running"] and time.monotonic() < deadline:
        time.sleep(0.2)


def _service(lab: Lab, monkeypatch: pytest.MonkeyPatch, trigger: str,
             wait: float = FALLBACK) -> flow.Service:
    monkeypatch.setenv("SYNC_WAIT_SECONDS", str(int(wait)))
    monkeypatch.setenv("SYNC_TRIGGER", trigger)
    return flow.Service.build(load_settings(lab.settings_file))


def _run(svc: flow.Service) -> tuple[float, list[dict[str, Any]]]:
    started = time.monotonic()
    with capture_logs() as logs:
        summary = asyncio.run(run_once(svc, limit=FALLBACK + 60))
    svc.close()
    assert summary.drained, summary
    return time.monotonic() - started, logs


def _licensed(svc: flow.Service, sams: list[str]) -> list[int]:
    """Licence writes per user (one each when provisioned once)."""
    directory = svc.directory()
    counts = []
    for sam in sams:
        guid = str(directory.user_by_sam(sam).guid)
        counts.append(sum(1 for e in svc.audit.entries(user=guid) if e["action"] == "licenses"))
    return counts


def _licence_waits(logs: list[dict[str, Any]]) -> list[str]:
    return [str(e.get("reason")) for e in logs
            if e["event"] == "step_retry" and str(e.get("step")) == "license"]


@pytest.mark.parametrize("seconds", [3.0, 12.0])
def test_the_licence_step_looks_once_the_triggered_cycle_has_ended(
        lab: Lab, cycles: Any, monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """A cycle of 3 s: licensed right after it, far before the 120-s fallback. A cycle of
    12 s (longer than the first short retry, 5 s): not looked at before it ended (no look
    found a user not synced yet), and licensed after it. Either way one look per user."""
    cycles(seconds)
    _idle(lab)
    svc = _service(lab, monkeypatch, "connect")
    sams = seed(lab, 3)
    elapsed, logs = _run(svc)
    ended = [e for e in logs if e["event"] == "sync_cycle_ended"]
    assert ([1, 1, 1], [], True) == (_licensed(svc, sams), _licence_waits(logs), bool(ended))
    assert seconds <= elapsed < FALLBACK - 30, elapsed


def test_a_look_before_the_cycle_ended_comes_again_when_it_ends(
        lab: Lab, cycles: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback runs out while the triggered cycle still runs (SYNC_WAIT_SECONDS 2 s, a
    10-s cycle): the early looks find the user not synced, and each retry is attached to that
    cycle, so its end wakes them (more messages than the user's first one), not their
    back-off; one licence, and no look after the cycle found the user missing."""
    cycles(10.0)
    _idle(lab)
    svc = _service(lab, monkeypatch, "connect", wait=2.0)
    sams = seed(lab, 1)
    _, logs = _run(svc)
    events = [e["event"] for e in logs]
    ended = [e for e in logs if e["event"] == "sync_cycle_ended"]
    after = events[events.index("sync_cycle_ended"):]
    assert [1] == _licensed(svc, sams)
    assert (True, True) == (bool(_licence_waits(logs)), ended[0]["users"] > 1), ended
    assert "step_retry" not in after, after


def test_busy_and_failed_cycles_still_end_in_a_licence(
        lab: Lab, cycles: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cycle runs when the trigger is due (busy: no trigger until it ends), and it and the
    triggered one fail their export: the look after the failed cycle finds nobody, asks for a
    new cycle at once and retries within seconds; licensed long before the fallback. The
    running cycle lasts 10 s, long enough for the worker's first trigger to find it running;
    the cycles after it 4 s."""
    cycles(10.0)
    _idle(lab)
    failed_before = _control(lab, "sync/fail", {"cycles": 2})["failedCycles"]
    svc = _service(lab, monkeypatch, "connect")
    sams = seed(lab, 2)
    assert _control(lab, "sync/cycle", {})["started"]
    cycles(4.0)  # the running cycle keeps its 10 s
    elapsed, logs = _run(svc)
    answers = [e.get("answer") for e in logs if e["event"] == "sync_triggered"]
    state = _control(lab, "sync")
    assert [1, 1] == _licensed(svc, sams)
    assert ("busy" in answers, answers.count("sent") >= 2, state["failedCycles"]) == (
        True, True, failed_before + 2)
    assert elapsed < FALLBACK, elapsed


def test_a_failed_on_demand_export_is_a_named_wait_not_a_licence_attempt(
        lab: Lab, cycles: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cloud Sync answers Failure for the user: the licence step, woken at once, waits for
    that by name (no licence written), asks again, and licenses the user once it exported."""
    cycles(30.0)
    _control(lab, "sync/fail", {"onDemand": 1})
    svc = _service(lab, monkeypatch, "cloud-sync")
    sams = seed(lab, 1)
    elapsed, logs = _run(svc)
    waits = _licence_waits(logs)
    assert [1] == _licensed(svc, sams)
    # one wait at least (a look before the second provisionOnDemand answered waits again)
    assert waits and "Cloud Sync's export failed for" in waits[0], waits
    assert "(provisionOnDemand: Failure)" in waits[0]
    assert elapsed < FALLBACK, elapsed
