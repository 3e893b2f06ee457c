"""DirSync and full enumeration of O365_Provision at 1,000 and 20,000 members: time and LDAP
bytes read (ldap3's usage counters: LDAP messages, before TLS) for

- a no-change DirSync poll (what the poll timer costs every five minutes),
- a DirSync poll after 10 membership changes,
- a full enumeration (range retrieval + GUIDs), what the reconcile timer and a first run cost.

Each size runs on a DC of its own beside the lab in LAB_DIR (``lab.ad.side_lab``), restored from
a seeded snapshot (built on first use: minutes for 20,000 users, seconds afterwards).

    python -m bench.bench_dirsync [--sizes 1000,20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ldap3 import MODIFY_ADD, MODIFY_DELETE

from lab import ad, seed
from lab.core import REPO, Lab
from shared.ad.directory import Directory
from shared.config import AdSettings, ProvisioningSettings, ServiceSettings

RESULTS = REPO / "bench" / "results" / "dirsync.json"
GROUP = ad.PROVISION_GROUP


def _measure(directory: Directory, action: Callable[[], Any], repeat: int) -> dict[str, Any]:
    times, received, sent = [], [], []
    result = None
    for _ in range(repeat):
        usage = directory.connection.usage
        usage.reset()
        start = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - start)
        received.append(usage.bytes_received)
        sent.append(usage.bytes_transmitted)
    return {
        "seconds_median": round(statistics.median(times), 4),
        "seconds_min": round(min(times), 4),
        "bytes_read": int(statistics.median(received)),
        "bytes_sent": int(statistics.median(sent)),
        "result": result,
    }


def bench_size(lab: Lab, size: int, repeat: int) -> dict[str, Any]:
    side = ad.side_lab(lab, f"bench{size}")
    try:
        started = time.perf_counter()
        ad.start(side)
        seed.seed(side, size)
        ready = time.perf_counter() - started
        env = side.settings_file
        settings = AdSettings(_env_file=env)  # type: ignore[call-arg]
        directory = Directory(
            settings, ProvisioningSettings(_env_file=env),  # type: ignore[call-arg]
            password=settings.password.get_secret_value(),
            ca_bundle=ServiceSettings(_env_file=env).ca_bundle,  # type: ignore[call-arg]
            collect_usage=True,
        )
        directory.group_dn(GROUP)
        first = directory.poll(GROUP, None)
        cookie = first.cookie

        full = _measure(directory, lambda: len(directory.group_members(GROUP)), repeat)
        assert full["result"] == size, full

        def no_change() -> int:
            delta = directory.poll(GROUP, cookie)
            return len(delta.added) + len(delta.removed)

        quiet = _measure(directory, no_change, repeat)
        assert quiet["result"] == 0, quiet

        admin = ad.admin_connection(side)
        group_dn = directory.group_dn(GROUP)
        victims = admin.extend.standard.paged_search(
            ad.STAFF_OU, "(objectClass=user)", attributes=["cn"], paged_size=10,
            generator=True)
        ten = [next(victims)["dn"] for _ in range(10)]
        state = {"cookie": cookie, "out": False}

        def ten_changes() -> int:
            change = MODIFY_ADD if state["out"] else MODIFY_DELETE
            admin.modify(group_dn, {"member": [(change, ten)]})
            state["out"] = not state["out"]
            directory.connection.usage.reset()  # count the poll only, not the admin's change
            start = time.perf_counter()
            delta = directory.poll(GROUP, state["cookie"])  # type: ignore[arg-type]
            state["cookie"] = delta.cookie
            elapsed.append(time.perf_counter() - start)
            return len(delta.added) + len(delta.removed)

        elapsed: list[float] = []
        changed = _measure(directory, ten_changes, repeat)
        changed["seconds_median"] = round(statistics.median(elapsed), 4)
        changed["seconds_min"] = round(min(elapsed), 4)
        assert changed["result"] == 10, changed
        admin.unbind()
        directory.close()
        return {
            "members": size,
            "ready_seconds": round(ready, 1),
            "no_change_poll": quiet,
            "ten_change_poll": changed,
            "full_enumeration": full,
        }
    finally:
        side.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,20000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    lab = Lab.open(Path(os.environ.get("LAB_DIR", REPO / ".lab")))
    sizes = [int(s) for s in args.sizes.split(",")]
    command = f"LAB_DIR={lab.root} python -m bench.bench_dirsync --sizes {args.sizes} " \
              f"--repeat {args.repeat}"
    rows = [bench_size(lab, size, args.repeat) for size in sizes]
    print(f"{'members':>8} {'what':<18} {'median s':>9} {'bytes read':>11} {'bytes sent':>10}")
    for row in rows:
        for what in ("no_change_poll", "ten_change_poll", "full_enumeration"):
            m = row[what]
            print(f"{row['members']:>8} {what:<18} {m['seconds_median']:>9.4f} "
                  f"{m['bytes_read']:>11} {m['bytes_sent']:>10}")
    print(f"reproduce: {command}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "command": command,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "bytes": "LDAP message bytes counted by ldap3 (Connection(collect_usage=True)), pre-TLS",
        "results": rows,
    }, indent=2) + "\n")
    print(f"written: {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
