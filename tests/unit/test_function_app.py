"""The function app as the Functions host loads it: every trigger, queue name and schedule
setting agrees with host.json, the settings and the queues the service writes."""

from __future__ import annotations

import importlib
import json
from typing import Any

import pytest

from lab.core import REPO
from shared.config import setting_names
from shared.flow.worker import MAX_DEQUEUE
from shared.store.messages import QUEUES, poison_queue

HOST = json.loads((REPO / "host.json").read_text())


@pytest.fixture(scope="module")
def triggers() -> dict[str, dict[str, Any]]:
    module = importlib.import_module("function_app")
    return {
        fn.get_function_name(): fn.get_trigger().get_dict_repr()
        for fn in module.app.get_functions()
    }


def test_every_queue_has_a_worker_and_a_poison_handler(
    triggers: dict[str, dict[str, Any]],
) -> None:
    """One queue function per work queue and per poison queue, on the app's storage."""
    queues = {t["queueName"]: t for t in triggers.values() if t["type"] == "queueTrigger"}
    expected = set(QUEUES.values()) | {poison_queue(q) for q in QUEUES.values()}
    assert set(queues) == expected
    assert {t["connection"] for t in queues.values()} == {"AzureWebJobsStorage"}


def test_timers_read_their_schedule_from_settings(triggers: dict[str, dict[str, Any]]) -> None:
    """Schedules are %SETTING% references to settings the service validates, and no timer
    fires at start-up outside development."""
    timers = {name: t for name, t in triggers.items() if t["type"] == "timerTrigger"}
    assert {t["schedule"] for t in timers.values()} == {
        "%POLL_SCHEDULE%", "%RECONCILE_SCHEDULE%", "%REPORT_SCHEDULE%", "%ROLES_SCHEDULE%",
        "%LEAVERS_SCHEDULE%",
    }
    for timer in timers.values():
        assert timer["schedule"].strip("%") in setting_names()
        assert timer["runOnStartup"] is False


def test_host_json_matches_how_the_service_reads_queues() -> None:
    """The host hands messages over undecoded (``shared.store.queues`` decodes them, so a message
    that is not base64 reaches the poison queue through the service instead of failing in the
    host's binding), gives up after as many deliveries as the CLI, and puts a message whose
    invocation failed back on the queue after 30 s (``visibilityTimeout``: the time between
    retries of a failed message)."""
    queues = HOST["extensions"]["queues"]
    assert ("none", MAX_DEQUEUE, "00:00:30") == (
        queues["messageEncoding"], queues["maxDequeueCount"], queues["visibilityTimeout"])
