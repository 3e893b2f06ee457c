"""End-to-end throughput: N users from "in O365_Provision" to "licensed, in neither group",
through the service's own handlers, queues and ledger (``shared.cli.run_once``, which drives
them as the function app does), against the lab with Exchange and Graph latencies and Graph's
write budget enforced by the lab Graph.

The run happens in a worker process of its own (``python -m bench.e2e``), so that its peak
memory (``ru_maxrss``) and CPU time are the worker's alone. The parent prepares a fresh lab,
samples the lab Graph's counters while the worker runs, and reads the lab's side afterwards:
Graph reads, writes and 429s per path, runspace pools the Exchange endpoint opened, CPU seconds
of every lab process, what is left in the two groups, completion times from the outcomes table.

    LAB_DIR=/tmp/lab-bench python -m bench --sizes 2000        # the whole benchmark
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from lab import exchange as lab_exchange
from lab import seed
from lab.__main__ import PEERS, up
from lab.ad import STAFF_OU, admin_connection
from lab.core import REPO, Lab
from shared.ad.directory import Directory
from shared.config import Settings, load_settings
from shared.secrets import SecretProvider
from shared.store.clients import table_service
from shared.store.records import Outcomes

# What the worker process is given on top of the lab's settings: role sync is a timer of its
# own in the function app and not part of provisioning, so it stays out of the figures.
WORKER_ENV = {"ROLES_ENABLED": "false"}
SAMPLE_SECONDS = 2.0


@dataclass(frozen=True)
class Conditions:
    """The peers' behaviour during a run (issue 7's figures)."""

    exchange_ms: float = 200.0  # per cmdlet
    graph_ms: float = 100.0  # per request
    writes_per_window: int = 3000  # Graph's identity write budget ...
    write_window_seconds: float = 150.0  # ... per 150 s, per app and tenant

    @property
    def write_rate(self) -> float:
        return self.writes_per_window / self.write_window_seconds


# -- the lab's side ----------------------------------------------------------------------------
class LabGraph:
    """The lab Graph's control path (``/_lab``) and one plain Graph read."""

    def __init__(self, lab: Lab) -> None:
        self.control = lab.settings["LAB_GRAPH_CONTROL_URL"]
        self.graph = lab.settings["LAB_GRAPH_URL"]
        self.http = httpx.Client(
            headers={"Authorization": f"Bearer {lab.settings['AZURE_STATIC_TOKEN']}"},
            timeout=120)

    def get(self, path: str) -> Any:
        response = self.http.get(f"{self.control}/{path}")
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = self.http.post(f"{self.control}/{path}", json=body)
        response.raise_for_status()
        return response.json()

    def skus(self) -> list[dict[str, Any]]:
        response = self.http.get(f"{self.graph}/subscribedSkus")
        response.raise_for_status()
        value: list[dict[str, Any]] = response.json()["value"]
        return value

    def wait_synced(self, users: int, timeout: float = 900.0) -> float:
        """Wait until the sync engine has mirrored at least ``users`` users and has nothing
        pending; returns the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            state = self.post("sync", {"wait": True})
            if state["pending"] == 0 and self.get("stats")["users"] >= users:
                return time.monotonic() - started
            time.sleep(1.0)
        raise TimeoutError(f"the lab Graph did not mirror {users} users within {timeout:.0f} s")

    def units_for(self, users: int) -> None:
        """Enough prepaid units of both SKUs for ``users`` more users."""
        self.post("units", {s["skuPartNumber"]: s["consumedUnits"] + users + 10
                            for s in self.skus()})

    def close(self) -> None:
        self.http.close()


def fresh_lab(root: Path, users: int) -> Lab:
    """The lab at ``root`` restarted from scratch with ``users`` seeded users in
    O365_Provision. The DC starts and is seeded first (from 1,000 users on, from a cached
    snapshot, which restarts the DC, possibly on another loopback address); every other peer
    starts after it, on the seeded directory: the Exchange endpoint's LDAP address, the Graph
    tenant and its sync engine all begin from it."""
    lab = Lab.open(root)
    lab.stop_all()
    lab = up(lab, "tls,ad")
    try:
        seed.seed(lab, users)
        for name in PEERS[PEERS.index("ad") + 1:]:
            importlib.import_module(f"lab.{name}").start(lab)
            lab.save()
    except BaseException:
        lab.stop_all()
        raise
    return lab


def descendants(pids: list[int]) -> list[int]:
    """``pids`` and every process below them."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` and their descendants, as far as they live."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in descendants(pids):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def peer_cpu(lab: Lab) -> dict[str, float]:
    return {name: cpu_seconds(peer.pids) for name, peer in lab.peers.items()}


def directory(settings: Settings) -> Directory:
    """The service's view of AD, bound as the service account (its password from the vault)."""
    password = SecretProvider.from_settings(settings).resolve(settings.ad.password,
                                                              setting="AD_PASSWORD")
    return Directory(settings.ad, settings.provisioning, password=password,
                     ca_bundle=settings.service.ca_bundle)


class Sampler:
    """Reads the lab Graph's counters every ``SAMPLE_SECONDS`` in a thread: (t, writes,
    reads, 429s)."""

    def __init__(self, graph: LabGraph) -> None:
        self.graph = graph
        self.samples: list[tuple[float, int, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> None:
        total = self.graph.get("stats")["total"]
        self.samples.append((time.monotonic(), total.get("writes", 0), total.get("reads", 0),
                             total.get("429", 0)))

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._read()

    def __enter__(self) -> Sampler:
        self._read()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._read()

    def busiest_window(self, window: float) -> int:
        """Most writes counted within any ``window`` seconds (to the sampling step)."""
        best = 0
        for i, (t0, w0, _, _) in enumerate(self.samples):
            for t1, w1, _, _ in self.samples[i:]:
                if t1 - t0 > window:
                    break
                best = max(best, w1 - w0)
        return best

    def write_span(self) -> float:
        """Seconds between the first and the last sample in which writes were made."""
        moving = [t for (t, w, _, _), (_, w_prev, _, _) in
                  zip(self.samples[1:], self.samples, strict=False) if w > w_prev]
        if not moving:
            return 0.0
        first = next(t for t, _, _, _ in self.samples if t >= moving[0] - SAMPLE_SECONDS)
        return moving[-1] - first


def completion_times(settings: Settings) -> list[dt.datetime]:
    """When each user was recorded as provisioned (the outcome row the licence step writes)."""
    rows = Outcomes(table_service(settings.storage)).since("provisioned", "")
    return sorted(dt.datetime.fromisoformat(str(r["RowKey"]).rsplit("-", 1)[0]) for r in rows)


def failures(settings: Settings) -> list[str]:
    """The reasons of the first failures recorded (permanent ones, poison, blocked)."""
    outcomes = Outcomes(table_service(settings.storage))
    rows = [r for kind in ("failed", "poison", "blocked") for r in outcomes.since(kind, "")]
    return [f"{r['PartitionKey']} {r.get('step', '')} {r.get('name') or r.get('user', '')}: "
            f"{r.get('reason', '')}" for r in rows[:5]]


def quarters(samples: list[list[float]]) -> list[float]:
    """Resident MB at 25, 50, 75 and 100 % of the run (the sample nearest each)."""
    if not samples:
        return []
    end = samples[-1][0]
    return [min(samples, key=lambda s: abs(s[0] - end * q / 4))[1] for q in (1, 2, 3, 4)]


def steady_rate(times: list[dt.datetime]) -> float | None:
    """Users per second between the 10th and the 90th percentile completion."""
    if len(times) < 20:
        return None
    low, high = times[len(times) // 10], times[(len(times) * 9) // 10]
    span = (high - low).total_seconds()
    count = (len(times) * 9) // 10 - len(times) // 10
    return count / span if span > 0 else None


def preset_locations(lab: Lab, graph: LabGraph, share: float) -> int:
    """Give ``share`` of the seeded users (every k-th by UPN) the right ``usageLocation`` in
    the cloud already, as users re-licensed or set up by hand before have; returns how many."""
    if share <= 0:
        return 0
    conn = admin_connection(lab, timeout=120)
    try:
        entries = conn.extend.standard.paged_search(
            STAFF_OU, "(objectClass=user)", attributes=["userPrincipalName", "c"],
            paged_size=1000, generator=True)
        users = sorted((str(e["attributes"]["userPrincipalName"]), str(e["attributes"]["c"]))
                       for e in entries if e.get("type") == "searchResEntry")
    finally:
        conn.unbind()
    step = max(1, round(1 / share))
    chosen = users[::step]
    # Set up before the run, outside its budget: the run's budget is set (and the buckets
    # refilled) afterwards.
    graph.post("config", {"writes_per_window": 10**9, "latency_ms": 0})
    for upn, country in chosen:
        response = graph.http.patch(f"{graph.graph}/users/{upn}", json={"usageLocation": country})
        response.raise_for_status()
    return len(chosen)


# -- one run -----------------------------------------------------------------------------------
def prepare(root: Path, users: int, conditions: Conditions,
            location_share: float = 0.0) -> tuple[Lab, dict[str, Any]]:
    """A fresh lab with ``users`` in O365_Provision, synced to the cloud (``location_share``
    of them with their usageLocation set already), with units for all of them and the run's
    latencies and write budget set."""
    started = time.monotonic()
    lab = fresh_lab(root, users)
    graph = LabGraph(lab)
    try:
        synced = graph.wait_synced(users)
        graph.units_for(users)
        preset = preset_locations(lab, graph, location_share)
        graph.post("config", {"latency_ms": conditions.graph_ms,
                              "writes_per_window": conditions.writes_per_window,
                              "write_window_seconds": conditions.write_window_seconds})
        graph.post("stats/reset", {})
    finally:
        graph.close()
    lab_exchange.configure(lab, reset=True, close_sessions=True,
                           latency_ms={"*": conditions.exchange_ms})
    return lab, {"prepare_seconds": round(time.monotonic() - started, 1),
                 "initial_sync_seconds": round(synced, 1),
                 "usage_location_preset": preset}


def run(root: Path, users: int, conditions: Conditions, *, limit: float,
        overrides: dict[str, str] | None = None, driver: str = "cli",
        location_share: float = 0.0) -> dict[str, Any]:
    """Provision ``users`` fresh users end to end; returns the figures of the run.
    ``overrides`` are app settings for the worker on top of the lab's (``EXCHANGE_SESSIONS``,
    ``GRAPH_CONCURRENCY``, ...)."""
    lab, setup = prepare(root, users, conditions, location_share)
    env = {**WORKER_ENV, **(overrides or {})}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)  # the worker's settings, as it will read them
    try:
        settings = load_settings(lab.settings_file)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    sessions = settings.exchange.sessions
    exchange_before = lab_exchange.status(lab)["stats"]
    cpu_before = peer_cpu(lab)
    graph = LabGraph(lab)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    argv = [sys.executable, "-m", "bench.e2e", "--env-file", str(lab.settings_file),
            "--limit", str(limit), "--driver", driver, "--out", str(out)]
    try:
        with Sampler(graph) as sampler:
            began = time.monotonic()
            subprocess.run(argv, cwd=REPO, env={**os.environ, **env}, check=True)
            wall = time.monotonic() - began
        worker = json.loads(out.read_text())
        stats = graph.get("stats")
    finally:
        out.unlink(missing_ok=True)
        graph.close()
    cpu_after = peer_cpu(lab)
    exchange_after = lab_exchange.status(lab)["stats"]
    ad = directory(settings)
    p = settings.provisioning
    left = {group: len(ad.group_members(group))
            for group in (p.provision_group, p.license_group)}
    ad.close()
    times = completion_times(settings)
    total = stats["total"]
    writes, reads, throttled = total.get("writes", 0), total.get("reads", 0), total.get("429", 0)
    requests = writes + reads
    seconds = worker["seconds"]
    cmdlets = exchange_after["cmdlets_run"] - exchange_before["cmdlets_run"]
    span = sampler.write_span()
    done = len(times)
    return {
        "users": users,
        "driver": driver,
        "provisioned": done,
        "left_in_groups": left,
        "drained": worker["drained"],
        "seconds": round(seconds, 1),
        "users_per_second": round(done / seconds, 2),
        "steady_users_per_second": _round(steady_rate(times)),
        "graph": {
            "reads": reads,
            "writes": writes,
            "reads_per_user": round(reads / users, 2),
            "writes_per_user": round(writes / users, 2),
            **writes_by_population(stats["paths"], users, setup["usage_location_preset"]),
            "http_429": throttled,
            "http_429_share": round(throttled / requests, 4) if requests else 0.0,
            "per_path": {path: c for path, c in stats["paths"].items() if path != "*"},
            "client": worker["graph_client"],
            # Writes sent while licence work existed, against what the budget allowed then.
            "write_seconds": round(span, 1),
            "write_budget_used": round(writes / (conditions.write_rate * span), 3)
            if span else 0.0,
            "busiest_150s_writes": sampler.busiest_window(conditions.write_window_seconds),
            "cloud_mailboxes_created": len(stats.get("cloudMailboxes", [])),
        },
        "exchange": {
            "sessions": sessions,
            "pools_opened": exchange_after["sessions_opened"] - exchange_before["sessions_opened"],
            "cmdlets": cmdlets,
            "cmdlets_per_user": round(cmdlets / users, 2),
            # Share of the run one session spent waiting on cmdlet latency alone.
            "latency_busy_share": round(cmdlets * conditions.exchange_ms / 1000
                                        / sessions / seconds, 3),
        },
        "worker": {
            "peak_rss_mb": worker["peak_rss_mb"],
            "cpu_seconds": worker["cpu_seconds"],
            "outcomes": worker["outcomes"],
            "storage_requests_per_user": round(worker["storage_requests"] / users, 2),
            "storage_requests_by_kind": worker.get("storage_requests_by_kind", {}),
            # The event loop: how much of the run it was kept busy (late timers), and how
            # much of that was spent blocked in synchronous storage calls.
            "loop_busy_share": round(worker["loop_busy_seconds"] / seconds, 3),
            "storage_on_loop_share": round(worker["storage_seconds_on_loop"] / seconds, 3),
            # The mean time a request took, as the worker's threads waited for it (all of
            # them: the event loop's own share is the line above). Azurite's time per request
            # grows with its tables (a lab artefact: Azure Table storage answers point
            # operations in flat time).
            "storage_ms_per_request": round(worker["storage_seconds"] * 1000
                                            / max(1, worker["storage_requests"]), 1),
            # Resident memory at each quarter of the run: growth or a plateau.
            "rss_mb_by_quarter": quarters(worker["rss_mb_samples"]),
        },
        "failures": failures(settings),
        "lab_cpu_seconds": {name: round(cpu_after.get(name, 0.0) - cpu_before.get(name, 0.0), 1)
                            for name in cpu_after},
        "service_settings": {"exchange_sessions": sessions,
                             "graph_concurrency": settings.graph.concurrency,
                             "overrides": overrides or {}},
        "wall_seconds_with_process_start": round(wall, 1),
        **setup,
    }


def writes_by_population(paths: dict[str, dict[str, int]], users: int,
                         preset: int) -> dict[str, float | None]:
    """Writes per user for the users whose usageLocation was right already and for the rest.

    Every user gets exactly one ``assignLicense`` when the counts say so; the ``PATCH`` calls
    beyond one per user without a location would have gone to users who had theirs."""
    patches = paths.get("PATCH users/{id}", {}).get("writes", 0)
    assigns = paths.get("POST users/{id}/assignLicense", {}).get("writes", 0)
    other = sum(c.get("writes", 0) for p, c in paths.items()
                if p not in ("PATCH users/{id}", "POST users/{id}/assignLicense"))
    unset = users - preset
    per_assign = (assigns + other) / users
    extra = max(0, patches - unset)
    return {
        "writes_per_user_location_right": round(per_assign + extra / preset, 2)
        if preset else None,
        "writes_per_user_location_unset": round(per_assign + min(patches, unset) / unset, 2)
        if unset else None,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# -- the worker process -------------------------------------------------------------------------
def host_queue_settings() -> tuple[int, int, float]:
    """batchSize, newBatchThreshold and maxPollingInterval (s) from host.json."""
    queues = json.loads((REPO / "host.json").read_text())["extensions"]["queues"]
    h, m, s = (float(part) for part in queues["maxPollingInterval"].split(":"))
    return int(queues["batchSize"]), int(queues["newBatchThreshold"]), h * 3600 + m * 60 + s


async def host_cycle(svc: Any, *, limit: float) -> Any:
    """Poll and reconcile once, then consume every queue as the Functions host does with
    host.json's settings: each queue on its own, a new batch of ``batchSize`` fetched as soon
    as no more than ``newBatchThreshold`` of its messages are in flight, empty queues polled
    with a doubling interval up to ``maxPollingInterval``; all handlers on one event loop, as
    in one Python worker, whose default thread pool (cores + 4) is left as ``function_app.py``
    leaves it. What ``run_once`` does differently: its slots per queue come from the settings
    (twice ``EXCHANGE_SESSIONS`` for mailboxes, ``GRAPH_CONCURRENCY`` for the rest) instead
    of host.json's batch sizes, and its pool has 32 threads."""
    from shared import flow
    from shared.flow.worker import MAX_DEQUEUE, WORK_QUEUES, Summary
    from shared.store.messages import poison_queue
    from shared.store.queues import Received

    batch, threshold, max_interval = host_queue_settings()
    lease = int(svc.settings.service.lease_seconds)
    started = time.monotonic()
    summary = Summary()
    summary.enqueued += len(await flow.poll(svc))
    summary.enqueued += len(await flow.reconcile(svc))
    in_flight: dict[str, set[asyncio.Task[None]]] = {q: set() for q in WORK_QUEUES}
    interval = dict.fromkeys(WORK_QUEUES, 0.1)
    next_poll = dict.fromkeys(WORK_QUEUES, 0.0)

    async def one(message: Received) -> None:
        try:
            handled = await flow.handle(svc, message.queue, message.raw)
        except Exception:  # as run_once: a bug leaves the message for a retry
            flow.log.exception("handler_crashed", queue=message.queue)
            if message.dequeue_count >= MAX_DEQUEUE:
                svc.queues.to_poison(message.queue, message.raw)
                svc.queues.delete(message)
            summary.outcomes["crashed"] += 1
            return
        svc.queues.delete(message)
        summary.outcomes[handled.outcome] += 1

    while time.monotonic() - started < limit:
        now = time.monotonic()
        for name in WORK_QUEUES:
            tasks = in_flight[name]
            if len(tasks) > threshold or now < next_poll[name]:
                continue
            messages = svc.queues.receive(name, limit=batch, visibility=lease)
            for message in messages:
                task = asyncio.create_task(one(message))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if messages:
                interval[name], next_poll[name] = 0.1, 0.0
            else:
                next_poll[name] = now + interval[name]
                interval[name] = min(max_interval, interval[name] * 2)
        running = set().union(*in_flight.values())
        if not running:
            for name in WORK_QUEUES:  # what the *-poison functions do in Azure
                for message in svc.queues.receive(poison_queue(name), limit=32,
                                                  visibility=lease):
                    await flow.poisoned(svc, name, message.raw,
                                        dequeue_count=message.dequeue_count)
                    svc.queues.delete(message)
            if all(svc.queues.depth(q) == 0 and svc.queues.depth(poison_queue(q)) == 0
                   for q in WORK_QUEUES):
                summary.drained = True
                break
        wake = max(0.01, min(next_poll.values()) - time.monotonic())
        if running:
            await asyncio.wait(running, timeout=wake, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.sleep(wake)
    summary.report = await flow.report(svc)
    summary.seconds = time.monotonic() - started
    return summary


class StorageMeter:
    """Counts the worker's Azure Storage requests (queues, tables: all synchronous), the
    seconds its threads waited for them, and how much of that the event loop's thread waited
    (the handlers call storage from worker threads, so that part should stay near 0), by
    patching requests' adapter in the worker process only."""

    def __init__(self, connection: str) -> None:
        self.prefixes = tuple(part.split("=", 1)[1] for part in connection.split(";")
                              if part.split("=", 1)[0] in ("QueueEndpoint", "TableEndpoint"))
        self.requests = 0
        self.by_kind: dict[str, int] = {}  # "METHOD table-or-queue[/messages]": requests
        self.seconds = 0.0  # waited for a response, in all threads together
        self.on_loop = 0
        self.loop_seconds = 0.0
        self.loop_thread = threading.get_ident()
        self.lock = threading.Lock()  # the worker's 32 threads count at once

    def install(self) -> None:
        from requests.adapters import HTTPAdapter

        original = HTTPAdapter.send
        meter = self

        def send(adapter: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            if not str(request.url).startswith(meter.prefixes):
                return original(adapter, request, *args, **kwargs)
            began = time.perf_counter()
            try:
                return original(adapter, request, *args, **kwargs)
            finally:
                waited = time.perf_counter() - began
                path = str(request.path_url).split("?", 1)[0].strip("/").split("/")
                path = path[1:] if path[0] == "devstoreaccount1" and len(path) > 1 else path
                kind = f"{request.method} {path[0].split('(')[0]}" + (
                    f"/{path[1]}" if len(path) > 1 and path[1] == "messages" else "")
                with meter.lock:
                    meter.requests += 1
                    meter.seconds += waited
                    meter.by_kind[kind] = meter.by_kind.get(kind, 0) + 1
                    if threading.get_ident() == meter.loop_thread:
                        meter.on_loop += 1
                        meter.loop_seconds += waited

        HTTPAdapter.send = send  # type: ignore[method-assign]


async def rss_samples(stop: asyncio.Event, samples: list[tuple[float, float]],
                      every: float = 5.0) -> None:
    """The worker's resident memory (MB) every ``every`` s, to tell growth from a plateau."""
    page = os.sysconf("SC_PAGE_SIZE")
    began = time.monotonic()
    while not stop.is_set():
        resident = int(Path("/proc/self/statm").read_text().split()[1]) * page
        samples.append((round(time.monotonic() - began, 1), round(resident / 2**20, 1)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def loop_lag(stop: asyncio.Event, total: list[float], tick: float = 0.05) -> None:
    """Adds up how late a ``tick`` s sleep wakes: the time the event loop was kept busy."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        began = loop.time()
        await asyncio.sleep(tick)
        total[0] += max(0.0, loop.time() - began - tick)


async def work(settings: Settings, limit: float, driver: str = "cli") -> dict[str, Any]:
    """One cycle: ``run_once`` as ``python -m shared.cli run --once`` runs it (``cli``), or
    the queues consumed as the Functions host would (``host``)."""
    from shared import flow
    from shared.flow.worker import run_once

    svc = flow.Service.build(settings)
    assert settings.storage.connection is not None  # the lab's Azurite
    meter = StorageMeter(settings.storage.connection.get_secret_value())
    meter.install()
    stop, lag, rss = asyncio.Event(), [0.0], []  # type: ignore[var-annotated]
    monitors = [asyncio.create_task(loop_lag(stop, lag)),
                asyncio.create_task(rss_samples(stop, rss))]
    started = time.monotonic()
    try:
        if driver == "host":
            summary = await host_cycle(svc, limit=limit)
        else:
            summary = await run_once(svc, limit=limit)
        seconds = time.monotonic() - started
        stop.set()
        await asyncio.gather(*monitors)
        client = svc.graph()
        counters = asdict(client.counters)
        counters["write_token_wait_seconds"] = round(client.pacing.bucket.waited, 1)
        await client.close()
    finally:
        svc.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": seconds,
        "drained": summary.drained,
        "outcomes": dict(summary.outcomes),
        "enqueued": summary.enqueued,
        "graph_client": counters,
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "storage_requests": meter.requests,
        "storage_requests_by_kind": meter.by_kind,
        "storage_seconds": round(meter.seconds, 1),
        "storage_requests_on_loop": meter.on_loop,
        "storage_seconds_on_loop": round(meter.loop_seconds, 1),
        "loop_busy_seconds": round(lag[0], 1),
        "rss_mb_samples": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="the benchmark's worker process (one cycle)")
    parser.add_argument("--env-file", type=Path, required=True)
    parser.add_argument("--limit", type=float, required=True)
    parser.add_argument("--driver", choices=("cli", "host"), default="cli")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from shared.log import configure

    configure("ERROR", json=False)  # as `python -m shared.cli run --once` without --verbose
    result = asyncio.run(work(load_settings(args.env_file), args.limit, args.driver))
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
