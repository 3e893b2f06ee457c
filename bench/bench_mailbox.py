"""Mailbox-enables per second against the lab's Exchange endpoint: one reused runspace pool
against one new PowerShell session per user.

Each user costs what the mailbox step asks of Exchange: ``Get-RemoteMailbox`` then
``Enable-RemoteMailbox``, with the endpoint's per-cmdlet latency set to ``--latency-ms``
(200 ms by default, roughly what an on-premises Exchange answers through a hybrid relay).
Users are created fresh in a throw-away OU for each mode and deleted afterwards.

    LAB_DIR=/tmp/lab-bench python -m bench.bench_mailbox [--users 200] [--latency-ms 200]

Prints both rates and writes ``bench/results/mailbox.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from ldap3 import BASE, Connection
from ldap3.utils.dn import escape_rdn

from lab import exchange as lab_exchange
from lab.__main__ import up
from lab.ad import admin_connection
from lab.core import REPO, Lab
from shared.config import load_settings
from shared.exchange.client import ExchangeClient
from shared.log import configure as configure_logging

RESULTS = REPO / "bench" / "results" / "mailbox.json"


def make_users(conn: Connection, base_dn: str, count: int) -> tuple[str, list[tuple[str, str]]]:
    """A fresh OU with ``count`` users; returns the OU and (objectGUID, sam) per user."""
    ou = f"OU=bench-{uuid.uuid4().hex[:8]},{base_dn}"
    assert conn.add(ou, "organizationalUnit"), conn.result
    users = []
    for n in range(count):
        sam = f"b{uuid.uuid4().hex[:10]}"
        dn = f"CN={escape_rdn(f'Bench User {n}')},{ou}"
        assert conn.add(dn, ["top", "person", "organizationalPerson", "user"],
                        {"sAMAccountName": sam, "userPrincipalName": f"{sam}@o365lab.example",
                         "extensionAttribute1": "E3", "c": "NZ"}), conn.result
        conn.search(dn, "(objectClass=*)", BASE, attributes=["objectGUID"])
        guid = uuid.UUID(bytes_le=conn.response[0]["raw_attributes"]["objectGUID"][0])
        users.append((str(guid), sam))
    return ou, users


def drop_ou(conn: Connection, ou: str) -> None:
    conn.delete(ou, controls=[("1.2.840.113556.1.4.805", True, None)])  # tree delete


def enable_all(clients: Any, users: list[tuple[str, str]], routing_domain: str) -> float:
    """Get-RemoteMailbox + Enable-RemoteMailbox for every user; returns seconds taken.
    ``clients`` yields the client to use for each user."""
    started = time.perf_counter()
    for (guid, sam), client in zip(users, clients, strict=False):
        if client.get_remote_mailbox(guid) is None:
            client.enable_remote_mailbox(guid, f"{sam}@{routing_domain}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--open-latency-ms", type=float, default=0.0,
                        help="time the endpoint takes to open a session (0: protocol only)")
    args = parser.parse_args()
    configure_logging("WARNING", json=False)

    lab = up(Lab.open(Path(os.environ.get("LAB_DIR", REPO / ".lab"))))
    settings = load_settings(lab.settings_file)
    password = lab.settings["LAB_EXCHANGE_PASSWORD"]
    ca = settings.service.ca_bundle
    routing = settings.provisioning.routing_domain
    conn = admin_connection(lab, timeout=60)
    lab_exchange.configure(lab, reset=True, close_sessions=True,
                           latency_ms={"*": args.latency_ms},
                           open_latency_ms=args.open_latency_ms)
    results: dict[str, Any] = {}
    try:
        # One pool, opened once and reused for every user.
        ou, users = make_users(conn, lab.settings["LAB_AD_BASE_DN"], args.users)
        try:
            with ExchangeClient(settings.exchange, password=password, ca_bundle=ca) as client:
                seconds = enable_all(iter(lambda: client, None), users, routing)
                results["reused_pool"] = {"seconds": seconds, "pools": client.pools_opened}
        finally:
            drop_ou(conn, ou)

        # A new session per user, as a script that connects for each user would.
        ou, users = make_users(conn, lab.settings["LAB_AD_BASE_DN"], args.users)
        opened = 0

        def fresh() -> Any:
            nonlocal opened
            while True:
                with ExchangeClient(settings.exchange, password=password, ca_bundle=ca) as c:
                    opened += 1
                    yield c

        try:
            seconds = enable_all(fresh(), users, routing)
            results["session_per_user"] = {"seconds": seconds, "pools": opened}
        finally:
            drop_ou(conn, ou)
    finally:
        lab_exchange.configure(lab, reset=True)
        conn.unbind()

    for mode in results.values():
        mode["enables_per_second"] = args.users / mode["seconds"]
    command = (f"LAB_DIR={lab.root} python -m bench.bench_mailbox --users {args.users} "
               f"--latency-ms {args.latency_ms:g} --open-latency-ms {args.open_latency_ms:g}")
    report = {
        "benchmark": "mailbox-enables per second (Get-RemoteMailbox + Enable-RemoteMailbox)",
        "users": args.users,
        "cmdlet_latency_ms": args.latency_ms,
        "session_open_latency_ms": args.open_latency_ms,
        "auth": settings.exchange.auth,
        "results": results,
        "speedup": (results["reused_pool"]["enables_per_second"]
                    / results["session_per_user"]["enables_per_second"]),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "command": command,
    }
    # A run with a session-opening cost goes beside the plain one, named after it.
    results_file = (RESULTS if not args.open_latency_ms else
                    RESULTS.with_name(f"mailbox-open{args.open_latency_ms:g}ms.json"))
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(report, indent=2) + "\n")
    for name, mode in results.items():
        print(f"{name:17} {mode['enables_per_second']:6.2f} enables/s  "
              f"({args.users} users in {mode['seconds']:.1f} s, {mode['pools']} pool(s))")
    print(f"reused pool is {report['speedup']:.2f}x faster")
    print(f"reproduce: {command}")
    print(f"written: {results_file.relative_to(REPO)}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
