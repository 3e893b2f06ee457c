"""Time from "added to O365_Provision" to "licensed" for a trickle of users, per SYNC_TRIGGER.

A fresh lab of its own (``LAB_SYNC_TRIGGER`` picks the trigger; the sync engine keeps Entra
Connect's 30-minute schedule, each cycle running 30 s), 200 ms per Exchange cmdlet and 100 ms
per Graph request. One user is added to O365_Provision every ``--every`` seconds for
``--users`` users; a worker process runs what the function app runs: the poll timer on
``POLL_SCHEDULE``'s seconds (``*/15 * * * * *`` by default: every 15 s; ``0 * * * * *``: every
minute) and the queue handlers continuously. The time of
each user's ``provisioned`` outcome minus the time it was added is its latency.

The trickle starts right after a sync cycle (the lab's first one), the worst third of the
schedule's phase for ``none``: those users wait 20-30 minutes for the next cycle.

    LAB_DIR=/tmp/lab-trickle python -m bench.trickle --trigger connect --out r.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lab import ad, seed
from lab import exchange as lab_exchange
from lab.core import REPO

QUEUES = ("mailbox", "license")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def run(root: Path, trigger: str, *, users: int = 60, every: float = 10.0,
        limit: float = 3000.0, exchange_ms: float = 200.0, graph_ms: float = 100.0
        ) -> dict[str, Any]:
    """One trickle with ``trigger``; the latencies and how the sync was asked for."""
    from shared.config import load_settings
    from shared.store.clients import table_service
    from shared.store.records import Outcomes

    from .e2e import LabGraph, fresh_lab

    os.environ["LAB_SYNC_TRIGGER"] = trigger
    lab = fresh_lab(root, 0)
    graph = LabGraph(lab)
    graph.units_for(users)
    graph.post("config", {"latency_ms": graph_ms})
    lab_exchange.configure(lab, reset=True, latency_ms={"*": exchange_ms})
    planned = seed.plan_users(users, 0, "t", random.Random(7))
    conn = ad.admin_connection(lab, timeout=60)
    for user in planned:  # in the directory, not yet in the group
        conn.add(user.dn, ["top", "person", "organizationalPerson", "user"], user.attributes)
    graph.wait_synced(0)  # a cycle has just run: the next is 30 minutes away
    settings = load_settings(lab.settings_file)
    worker = subprocess.Popen(
        [sys.executable, "-m", "bench.trickle", "--worker", "--env-file",
         str(lab.settings_file)], cwd=REPO, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    group_dn = f"CN={ad.PROVISION_GROUP},{ad.GROUPS_OU}"
    added: dict[str, float] = {}
    started = time.time()
    outcomes = Outcomes(table_service(settings.storage))
    done: dict[str, float] = {}
    try:
        for index, user in enumerate(planned):
            while time.time() < started + index * every:
                time.sleep(0.2)
            conn.modify(group_dn, {"member": [("MODIFY_ADD", [user.dn])]})
            added[user.dn] = time.time()
        while time.time() - started < limit and len(done) < users:
            time.sleep(5)
            for row in outcomes.since("provisioned", ""):
                stamp = dt.datetime.fromisoformat(str(row["RowKey"]).rsplit("-", 1)[0])
                done[str(row.get("name", ""))] = stamp.timestamp()
        sync = graph.get("sync")
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
        conn.unbind()
        graph.close()
        lab.stop_all()
    by_sam = {u.sam: added[u.dn] for u in planned if u.dn in added}
    latencies = [done[sam] - at for sam, at in by_sam.items() if sam in done]
    return {
        "trigger": trigger, "users": users, "every_seconds": every, "licensed": len(latencies),
        "p50_seconds": round(percentile(latencies, 0.5), 1) if latencies else None,
        "p95_seconds": round(percentile(latencies, 0.95), 1) if latencies else None,
        "max_seconds": round(max(latencies), 1) if latencies else None,
        "mean_seconds": round(statistics.mean(latencies), 1) if latencies else None,
        "sync_cycles": sync.get("cycles"), "sync_triggered": sync.get("triggered"),
        "sync_busy_answers": sync.get("busyAnswers"),
        "cycle_interval_seconds": 1800, "cycle_run_seconds": 30,
        "wall_seconds": round(time.time() - started),
    }


def hourly_scripts(run_seconds_per_user: float, users_per_hour: float,
                   samples: int = 3600) -> dict[str, float]:
    """The scripts' method on an hourly schedule, computed (not run): a user added at a
    uniformly random time is mail-enabled by the next run and licensed by the run after it
    (Entra Connect's 30-minute cycle falls between the two), at its place in that run's
    licensing phase; each run's phase takes ``users_per_hour`` × the measured time per user."""
    phase = users_per_hour * run_seconds_per_user
    latencies = []
    for i in range(samples):
        wait = 3600.0 * (i + 0.5) / samples  # until the next run
        latencies.append(wait + 3600.0 + phase * (i + 0.5) / samples)
    return {"p50_seconds": round(percentile(latencies, 0.5)),
            "p95_seconds": round(percentile(latencies, 0.95)),
            "run_phase_seconds": round(phase, 1)}


# -- the worker ---------------------------------------------------------------------------------
def poll_every(schedule: str) -> float:
    """Seconds between two polls of an NCRONTAB schedule that runs every minute or more often:
    ``*/N`` in its seconds field, else a minute."""
    seconds = schedule.split()[0]
    return float(seconds[2:]) if seconds.startswith("*/") else 60.0



async def work(env_file: Path) -> None:
    """The function app's poll timer (on ``POLL_SCHEDULE``) and queue handlers, until terminated."""
    from concurrent.futures import ThreadPoolExecutor

    from shared import flow
    from shared.config import load_settings

    svc = flow.Service.build(load_settings(env_file))
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=16))
    lease = int(svc.settings.service.lease_seconds)
    running: dict[str, set[asyncio.Task[None]]] = {q: set() for q in QUEUES}
    next_poll = 0.0

    async def one(queue: str, message: Any) -> None:
        try:
            await flow.handle(svc, queue, message.raw)
        except Exception:
            flow.log.exception("handler_crashed", queue=queue)
            return
        await flow.io(svc.queues.delete, message)

    every = poll_every(svc.settings.schedules.poll_schedule)
    while True:
        if time.time() >= next_poll:
            await flow.poll(svc)
            next_poll = (time.time() // every + 1) * every
        for queue in QUEUES:
            if len(running[queue]) >= 8:
                continue
            for message in await flow.io(svc.queues.receive, queue, limit=8, visibility=lease):
                task = asyncio.create_task(one(queue, message))
                running[queue].add(task)
                task.add_done_callback(running[queue].discard)
        await asyncio.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--env-file", type=Path)
    parser.add_argument("--trigger", default="connect")
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--every", type=float, default=10.0)
    parser.add_argument("--limit", type=float, default=3000.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from shared.log import configure

    configure("WARNING", json=False)
    if args.worker:
        assert args.env_file is not None
        asyncio.run(work(args.env_file))
        return
    result = run(Path(os.environ.get("LAB_DIR", REPO / ".lab")), args.trigger,
                 users=args.users, every=args.every, limit=args.limit)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
