"""What one ledger write costs the worker's CPU, by kind: the transaction a step ends with (the
ledger row's update with its ETag and two audit rows, one Entity Group Transaction) against a
single update and a single insert, on the lab's Azurite, through the service's own table
client (``shared.store.clients.table_service``). CPU is ``time.process_time()`` of this
process, so it is the SDK's work (building and parsing the transaction's multipart body), not
Azurite's.

    LAB_DIR=/tmp/lab python -m bench.bench_tables [--repeat 300]

The lab must be up (``python -m lab up``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from azure.core import MatchConditions
from azure.data.tables import TableClient, UpdateMode

from lab.core import REPO, Lab
from shared.config import load_settings
from shared.store.clients import table_service

RESULTS = REPO / "bench" / "results" / "tables.json"
TABLE = "benchtables"


def _timed(calls: list[Callable[[], Any]]) -> dict[str, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for call in calls:
        call()
    n = len(calls)
    return {"cpu_ms": round((time.process_time() - cpu) / n * 1000, 2),
            "wall_ms": round((time.perf_counter() - wall) / n * 1000, 2)}


def _audit(partition: str) -> dict[str, Any]:
    return {"PartitionKey": partition, "RowKey": f"audit|{uuid.uuid4()}",
            "what": "licenses", "before": "", "after": "ENTERPRISEPACK"}


def measure(table: TableClient, repeat: int) -> dict[str, dict[str, float]]:
    rows = []
    for _ in range(repeat):
        partition = str(uuid.uuid4())
        created = table.create_entity({"PartitionKey": partition, "RowKey": "license",
                                       "state": "working"})
        rows.append((partition, created["etag"]))

    def transaction(partition: str, etag: str) -> Callable[[], Any]:
        update = {"PartitionKey": partition, "RowKey": "license", "state": "done"}
        return lambda: table.submit_transaction([
            ("update", update, {"mode": UpdateMode.REPLACE, "etag": etag,
                                "match_condition": MatchConditions.IfNotModified}),
            ("create", _audit(partition)), ("create", _audit(partition))])

    def update(partition: str) -> Callable[[], Any]:
        entity = {"PartitionKey": partition, "RowKey": "license", "state": "done again"}
        return lambda: table.update_entity(entity, mode=UpdateMode.REPLACE)

    def insert(partition: str) -> Callable[[], Any]:
        return lambda: table.create_entity(_audit(partition))

    return {
        "transaction_update_and_two_inserts": _timed([transaction(p, e) for p, e in rows]),
        "single_update": _timed([update(p) for p, _ in rows]),
        "single_insert": _timed([insert(p) for p, _ in rows]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args()
    lab = Lab.open(Path(os.environ.get("LAB_DIR", REPO / ".lab")))
    service = table_service(load_settings(lab.settings_file).storage)
    table = service.create_table_if_not_exists(TABLE)
    try:
        results = measure(table, args.repeat)
    finally:
        service.delete_table(TABLE)
    command = f"LAB_DIR={lab.root} python -m bench.bench_tables --repeat {args.repeat}"
    print(f"{'write':<36} {'CPU ms':>7} {'wall ms':>8}")
    for what, figures in results.items():
        print(f"{what:<36} {figures['cpu_ms']:>7.2f} {figures['wall_ms']:>8.2f}")
    print(f"reproduce: {command}")
    RESULTS.write_text(json.dumps({
        "command": command,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "repeat": args.repeat,
        "results": results,
    }, indent=2) + "\n")
    print(f"written: {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
