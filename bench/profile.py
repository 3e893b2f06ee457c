"""Where the worker's CPU goes: py-spy's raw output (``py-spy record --gil --format raw``,
attached to the benchmark's worker process) summed by component, as a share of the samples.

    py-spy record -p <pid of "python -m bench.e2e"> --gil --format raw --rate 50 -o run.txt
    python -m bench.profile run.txt

A stack counts for every component named in it (inclusive), so the shares add up to more than
100 %; ``threading.py`` is the worker threads' frame, under which most work runs.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

COMPONENTS = {
    "storage (Tables + Queues SDK, ledger, queues)": ("azure/data/tables", "azure/storage/queue",
                                                      "shared/store/ledger.py",
                                                      "shared/store/queues.py",
                                                      "shared/store/records.py"),
    "Exchange (pypsrp, shared/exchange/client.py)": ("pypsrp", "shared/exchange/client.py"),
    "LDAP (ldap3, shared/ad/directory.py)": ("ldap3", "shared/ad/directory.py",
                                             "shared/ad/ldap.py"),
    "Graph (httpx, kiota, msgraph, shared/graph/client.py)": ("httpx", "kiota", "msgraph",
                                                      "shared/graph/client.py"),
    "logging (structlog)": ("structlog", "shared/log.py"),
}


def shares(path: Path) -> tuple[int, dict[str, float]]:
    """Samples in the file, and each component's share of them."""
    total, found = 0, Counter[str]()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        for name, markers in COMPONENTS.items():
            if any(marker in stack for marker in markers):
                found[name] += int(count)
    return total, {name: found[name] / total for name in COMPONENTS} if total else {}


def main() -> None:
    for arg in sys.argv[1:]:
        total, found = shares(Path(arg))
        print(f"{arg}: {total} samples")
        for name, share in found.items():
            print(f"  {share:6.1%}  {name}")


if __name__ == "__main__":
    main()
