"""Licence 2,000 users against the lab Graph with 100 ms latency and Graph's documented write
budget (3,000 writes per 150 s), through the real ``LicenseStep`` and ``GraphClient``.

The cloud users are created through the lab Graph's seeding path (``POST /_lab/users``), not
through AD and the sync engine, so the run measures Graph and not LDAP; the directory side is
an in-memory stand-in returning the same ``DirectoryUser`` values AD would.

    LAB_DIR=/tmp/lab-graph python -m bench.bench_licensing [--users 2000] [--latency-ms 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx

from lab.__main__ import up
from lab.core import REPO, Lab
from shared.ad.directory import DirectoryUser
from shared.config import load_settings
from shared.entra import immutable_id
from shared.graph.client import GraphClient
from shared.provisioning.licensing import LicenseOutcome, LicenseStep, MemoryShortageLedger


class SeededDirectory:
    """Stands in for AD: the users the bench seeded, and group removals counted."""

    def __init__(self, users: dict[uuid.UUID, DirectoryUser]) -> None:
        self.users = users
        self.removed = 0

    def user(self, guid: uuid.UUID) -> DirectoryUser:
        return self.users[guid]

    def remove_member(self, group: str, user: DirectoryUser) -> bool:
        self.removed += 1
        return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    lab = up(Lab.open(Path(os.environ.get("LAB_DIR", REPO / ".lab"))))
    settings = load_settings(lab.settings_file)
    control = lab.settings["LAB_GRAPH_CONTROL_URL"]
    http = httpx.Client(headers={"Authorization": f"Bearer {lab.settings['AZURE_STATIC_TOKEN']}"},
                        timeout=120)
    defaults = http.get(f"{control}/config").json()
    routing = settings.provisioning.routing_domain
    run_id = uuid.uuid4().hex[:6]
    users: dict[uuid.UUID, DirectoryUser] = {}
    seeds = []
    for i in range(args.users):
        guid, sam = uuid.uuid4(), f"b{run_id}{i:05d}"
        upn = f"{sam}@o365lab.example"
        proxies = (f"SMTP:{upn}", f"smtp:{sam}@{routing}")
        users[guid] = DirectoryUser(
            guid=guid, dn=f"CN={sam},OU=Bench", sam=sam, upn=upn, display_name=sam,
            mail=upn, country="DE", license_name="E3", proxy_addresses=proxies,
            target_address=f"SMTP:{sam}@{routing}", mail_nickname=sam,
            remote_recipient_type=1, member_of=())
        seeds.append({"userPrincipalName": upn, "onPremisesImmutableId": immutable_id(guid),
                      "onPremisesSyncEnabled": True, "onPremisesSamAccountName": sam,
                      "proxyAddresses": list(proxies), "mail": upn})
    for start in range(0, len(seeds), 500):
        http.post(f"{control}/users", json={"users": seeds[start:start + 500]}).raise_for_status()
    skus = http.get(f"{lab.settings['LAB_GRAPH_URL']}/subscribedSkus",
                    headers={}).json()["value"]
    consumed = next(s["consumedUnits"] for s in skus if s["skuPartNumber"] == "ENTERPRISEPACK")
    http.post(f"{control}/units", json={"ENTERPRISEPACK": consumed + args.users})
    http.post(f"{control}/config", json={"latency_ms": args.latency_ms,
                                         "writes_per_window": 3000,
                                         "write_window_seconds": 150})
    http.post(f"{control}/stats/reset")
    graph_settings = settings.graph.model_copy(update={"concurrency": args.concurrency})
    directory = SeededDirectory(users)

    async def run() -> tuple[list[object], float, GraphClient]:
        client = GraphClient(graph_settings, settings.identity, settings.service.ca_bundle)
        step = LicenseStep(settings.provisioning, directory, client,  # type: ignore[arg-type]
                           MemoryShortageLedger())
        gate = asyncio.Semaphore(args.concurrency)
        first = datetime.now(UTC)

        async def one(guid: uuid.UUID) -> object:
            async with gate:
                try:
                    return await step.run(guid, first_attempt_at=first, correlation_id="bench")
                except Exception as exc:
                    return exc

        began = time.monotonic()
        outcomes = await asyncio.gather(*(one(g) for g in users))
        elapsed = time.monotonic() - began
        await client.close()
        return list(outcomes), elapsed, client

    outcomes, elapsed, client = asyncio.run(run())
    stats = http.get(f"{control}/stats").json()
    http.post(f"{control}/config", json=defaults)
    licensed = sum(isinstance(o, LicenseOutcome) and o.status == "licensed" for o in outcomes)
    failures = [str(o) for o in outcomes if not isinstance(o, LicenseOutcome)][:5]
    total = stats["total"]
    writes, reads = total.get("writes", 0), total.get("reads", 0)
    throttled = total.get("429", 0)
    result = {
        "users": args.users,
        "licensed": licensed,
        "seconds": round(elapsed, 1),
        "users_per_second": round(licensed / elapsed, 2),
        "graph_writes_per_user": round(writes / args.users, 2),
        "graph_reads_per_user": round(reads / args.users, 2),
        "http_429": throttled,
        "client_retries": client.counters.retried,
        "client_wait_for_write_tokens_seconds": round(client.pacing.bucket.waited, 1),
        # writes sent / writes the documented budget allowed during the run (a full bucket of
        # 3,000 plus its refill of 3,000 per 150 s)
        "write_budget_used": round(writes / (3000 + elapsed * 3000 / 150), 3),
        "latency_ms": args.latency_ms,
        "concurrency": args.concurrency,
        "users_created_via": "lab seeding path (POST /_lab/users), not AD + sync",
        "failures": failures,
        "command": "LAB_DIR=/tmp/lab-graph python -m bench.bench_licensing "
                   f"--users {args.users} --latency-ms {args.latency_ms:g} "
                   f"--concurrency {args.concurrency}",
    }
    out = REPO / "bench" / "results" / "licensing.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print(f"{key:>40}: {value}")
    print(f"{'results':>40}: {out}")


if __name__ == "__main__":
    main()
