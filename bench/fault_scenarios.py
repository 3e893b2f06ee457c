"""The scenarios of ``python -m bench.faults`` (issue 16): what breaks, and when."""

from __future__ import annotations

import base64
import random
import shutil
import signal
import uuid

from bench.fault_context import Context, Scenario
from lab import ad, storage
from lab import exchange as lab_exchange
from lab import relay as lab_relay
from shared.config import load_settings
from shared.store.clients import queue_service
from shared.store.messages import Step, WorkItem
from shared.store.queues import Queues

OUTAGE = 120.0  # "unreachable for two minutes"


def _throttled(ctx: Context) -> None:
    ctx.graph.post("config", {"throttle_rate": 0.30, "retry_after_429": 2,
                              "error_rate": 0.05, "retry_after_503": 1})


def _dropped(ctx: Context) -> None:
    ctx.graph.post("config", {"drop_after_rate": 0.10})


def _dc_restart(ctx: Context) -> None:
    if ctx.wait_progress(0.3):
        ad.restart(ctx.lab)
        ctx.notes.append("DC restarted at 30 %")


def _dc_down(ctx: Context) -> None:
    if ctx.wait_progress(0.3):
        ctx.lab.stop("ad")
        ctx.sleep(OUTAGE)
        ad.run(ctx.lab)
        ctx.lab.save()
        ctx.notes.append("DC down 120 s from 30 %")


def _exchange_restart(ctx: Context) -> None:
    if ctx.wait_progress(0.3):
        lab_exchange.restart(ctx.lab)
        ctx.notes.append("Exchange restarted at 30 %")


def _exchange_limit(ctx: Context) -> None:
    if ctx.wait_progress(0.2):
        lab_exchange.configure(ctx.lab, max_sessions_per_user=0, close_sessions=True)
        ctx.sleep(OUTAGE)
        lab_exchange.configure(ctx.lab, max_sessions_per_user=18)
        ctx.notes.append("Exchange refused new sessions for 120 s from 20 %")


def _storage_restart(ctx: Context) -> None:
    if ctx.wait_progress(0.3):
        storage.restart(ctx.lab)
        ctx.notes.append("Azurite restarted at 30 % (data kept, as Azure Storage keeps it)")


def _relay_down(ctx: Context) -> None:
    if ctx.wait_progress(0.3):
        lab_relay.bridge(ctx.lab, down=True)
        ctx.sleep(60.0)
        lab_relay.bridge(ctx.lab, down=False)
        ctx.notes.append("the on-premises bridge gone for 60 s from 30 %")


def _short_units(ctx: Context) -> None:
    """Before the run (the harness has counted the consumed units already)."""
    skus = {s["skuPartNumber"]: s for s in ctx.graph.skus()}
    e3 = skus["ENTERPRISEPACK"]
    wanted = len(ctx.sams) // 4  # about half of the E3 users
    ctx.graph.post("units", {"ENTERPRISEPACK": int(e3["consumedUnits"]) + wanted})


def _units_back(ctx: Context) -> None:
    ctx.sleep(90.0)  # the shortage is met and alerted; then someone buys units
    ctx.graph.units_for(len(ctx.sams))
    ctx.notes.append("ENTERPRISEPACK ran out at about half of its users; units added 90 s in")


def _kills(ctx: Context) -> None:
    rng = random.Random(16)
    while ctx.kills < 8 and not ctx.stop.is_set():
        ctx.sleep(rng.uniform(2.0, 9.0))
        worker = ctx.worker
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
            ctx.kills += 1


def _bad_messages(ctx: Context) -> None:
    settings = load_settings(ctx.lab.settings_file)
    queues = Queues(queue_service(settings.storage))
    good = WorkItem(user=uuid.uuid4(), step=Step.MAILBOX)
    bodies = [
        "not json",  # not base64
        base64.b64encode(b"\xff\xfe\xfd").decode(),  # not UTF-8 underneath
        base64.b64encode(b'{"v": 1}' + b" " * 3000).decode(),  # oversized
        base64.b64encode(good.encode().replace('"v":1', '"v":7').encode()).decode(),
        base64.b64encode(b'{"v": 1, "user": "x"}').decode(),  # malformed
    ]
    for queue in ("mailbox", "license", "roles"):
        for body in bodies:
            queues.send_raw(queue, body)
    ctx.notes.append(f"{len(bodies)} bad messages on each of 3 queues before the run")


def _faketime(offset: str) -> tuple[str, ...]:
    tool = shutil.which("faketime")
    if tool is None:
        raise SystemExit("the clock-skew scenarios need libfaketime: apt-get install faketime")
    # The worker's wall clock moves; its monotonic clock (timeouts, pacing) does not.
    return ("env", "FAKETIME_DONT_FAKE_MONOTONIC=1", tool, "-f", offset)


SCENARIOS: list[Scenario] = [
    Scenario("baseline", "no fault"),
    Scenario("graph-429-503", "Graph answers 30 % of requests 429 (Retry-After) and 5 % 503",
             before=_throttled),
    Scenario("graph-dropped", "Graph carries out 10 % of requests and drops the answer",
             before=_dropped),
    Scenario("dc-restart", "the DC restarts mid-cycle", fault=_dc_restart),
    Scenario("dc-down", "the DC is unreachable for two minutes", fault=_dc_down, deadline=900),
    Scenario("exchange-restart", "Exchange restarts mid-cycle", fault=_exchange_restart),
    Scenario("exchange-sessions", "Exchange refuses new sessions for two minutes",
             fault=_exchange_limit, after=lambda ctx: lab_exchange.configure(ctx.lab,
                                                                              reset=True),
             deadline=900),
    Scenario("storage-restart", "Azurite restarts mid-cycle", fault=_storage_restart),
    Scenario("relay-listener", "the relay listener disappears mid-cycle", fault=_relay_down,
             after=lambda ctx: lab_relay.bridge(ctx.lab, down=False)),
    Scenario("licence-shortage", "units run out half way; bought 90 s later",
             before=_short_units, fault=_units_back),
    Scenario("sigkill", "the worker is SIGKILLed at random moments, 8 times", fault=_kills),
    Scenario("bad-messages", "undecodable, oversized, malformed and unknown-version messages "
             "on every queue", before=_bad_messages),
    Scenario("leavers", "N provisioned users become leavers at once (issue 27); the worker is "
             "SIGKILLed at random moments, 8 times", fault=_kills),
    Scenario("clock-ahead", "the worker's clock 10 minutes ahead",
             worker_prefix=_faketime("+10m") if shutil.which("faketime") else ()),
    Scenario("clock-behind", "the worker's clock 10 minutes behind",
             worker_prefix=_faketime("-10m") if shutil.which("faketime") else ()),
]
