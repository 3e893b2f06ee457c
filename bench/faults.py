"""``python -m bench.faults``: the service under faults, on the lab, with figures.

Each scenario seeds N fresh users (default 100) into O365_Provision, then runs the service's
worker (``python -m shared.cli run --once``, again and again, as the timers would) while the
scenario breaks something, until every user is provisioned or the scenario's deadline passes.
Nothing is done by hand: the harness only starts the worker again, as the timers do. Then it
counts, for that scenario's users:

- provisioned: a remote mailbox, the mapped licence and nothing else, in neither group;
- lost: not provisioned when the run ended;
- licensed twice: users holding more than one SKU, plus units consumed beyond one per
  provisioned user;
- extra Graph writes: writes the lab Graph carried out beyond one usageLocation and one
  assignLicense per user;
- time to converge: from the first worker start to the moment all were provisioned;
- alerts: mails other than the digest the lab's SMTP server received meanwhile.

Each scenario starts on its own: the users an earlier one left unfinished leave the groups and
the queues are emptied first, so no row counts another scenario's users.

    LAB_DIR=/tmp/lab-faults python -m bench.faults                  # every scenario, N = 100
    LAB_DIR=/tmp/lab-faults python -m bench.faults --only sigkill --users 40

Results: ``bench/results/faults.json`` and ``faults.md`` (the table docs/benchmarks.md shows).
The scenarios are in ``bench/fault_scenarios.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from azure.core.exceptions import ResourceNotFoundError
from ldap3 import MODIFY_ADD, MODIFY_DELETE

from bench import docs
from bench.e2e import LabGraph
from bench.fault_context import Context, Scenario, member_dns, member_sams
from bench.fault_scenarios import SCENARIOS
from lab import ad
from lab import exchange as lab_exchange
from lab.__main__ import down, up
from lab.core import REPO, Lab, format_env
from lab.seed import seed
from shared.config import load_settings
from shared.store.clients import queue_service
from shared.store.messages import QUEUES, poison_queue
from shared.store.queues import Queues

RESULTS = REPO / "bench" / "results"
WORKER_LIMIT = 90  # s per `run --once`: the timers fire again after it
# The service as a production timer setup runs it, with waits shortened to the lab's scale:
# reconcile sends lost work again after a minute instead of 15 (its only lab-specific value).
WORKER_SETTINGS = {"ROLES_ENABLED": "false", "RECONCILE_GRACE_SECONDS": "60"}


@dataclass
class Row:
    scenario: str
    users: int
    provisioned: int
    lost: int
    licensed_twice: int
    extra_graph_writes: int
    converge_seconds: float | None
    alerts: int
    worker_runs: int
    notes: str = ""



def _users(lab: Lab, sams: list[str]) -> dict[str, dict[str, Any]]:
    conn = ad.admin_connection(lab, timeout=30)
    try:
        found = {}
        for sam in sams:
            conn.search(ad.STAFF_OU, f"(sAMAccountName={sam})",
                        attributes=["userPrincipalName", "msExchRemoteRecipientType",
                                    "extensionAttribute1", "memberOf"])
            attrs = conn.response[0]["attributes"]
            found[sam] = {"upn": str(attrs["userPrincipalName"]),
                          "remote": attrs.get("msExchRemoteRecipientType"),
                          "licence": str(attrs.get("extensionAttribute1") or ""),
                          "groups": [str(g) for g in attrs.get("memberOf") or []]}
        return found
    finally:
        conn.unbind()


def _skus_of(graph: LabGraph, upn: str) -> list[str]:
    """The user's SKUs; the harness's own reads ride out the faults it injects."""
    for _ in range(50):
        try:
            response = graph.http.get(f"{graph.graph}/users/{upn}/licenseDetails")
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        if response.status_code in (429, 503):
            time.sleep(float(response.headers.get("Retry-After", "1")))
            continue
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return sorted(d["skuPartNumber"] for d in response.json()["value"])
    raise RuntimeError(f"the lab Graph kept refusing licenseDetails of {upn}")


def _consumed(graph: LabGraph) -> int:
    return sum(int(s["consumedUnits"]) for s in graph.skus())


def _applied_writes(stats: dict[str, Any]) -> int:
    """Writes the lab Graph carried out on users (usageLocation, assignLicense): requests
    minus those answered with an error."""
    done = 0
    for path in ("PATCH users/{id}", "POST users/{id}/assignLicense"):
        counts = stats["paths"].get(path, {})
        errors = sum(v for k, v in counts.items() if k.isdigit())
        done += counts.get("requests", 0) - errors
    return done


def _mails(lab: Lab) -> list[Path]:
    return sorted(Path(lab.settings["LAB_MAIL_DIR"]).glob("*.eml"))


def _is_digest(path: Path) -> bool:
    head = path.read_bytes()[:4000].decode("utf-8", "replace")
    return "Subject: Office 365 Provisioning Report" in head


# -- one scenario -------------------------------------------------------------------------------
def _worker_env(lab: Lab, **extra: str) -> Path:
    """The worker's settings: the lab's (re-read: a restarted peer may have moved) and ours."""
    path = lab.root / "faults.env"
    settings = {**Lab.open(lab.root).settings, **WORKER_SETTINGS, **extra}
    path.write_text(format_env(settings))
    path.chmod(0o600)
    return path


def _provisioned(lab: Lab, graph: LabGraph, sams: list[str]) -> tuple[list[str], int, int]:
    """(provisioned sAMAccountNames, users holding more than one SKU, users holding any)."""
    maps = {"E3": "ENTERPRISEPACK", "Exchange 2": "EXCHANGEENTERPRISE"}
    done, doubled, holding = [], 0, 0
    for sam, user in _users(lab, sams).items():
        in_groups = any(f"CN={g}," in dn for dn in user["groups"]
                        for g in (ad.PROVISION_GROUP, ad.LICENSE_GROUP))
        skus = _skus_of(graph, user["upn"])
        doubled += len(skus) > 1
        holding += bool(skus)
        if not in_groups and user["remote"] == 1 and skus == [maps[user["licence"]]]:
            done.append(sam)
    return done, doubled, holding


def _isolate(lab: Lab) -> None:
    """Start a scenario on its own: an earlier scenario's unfinished users leave the groups
    and every queue is emptied, so the worker of this one finishes nobody else's work and the
    counts below (units consumed, Graph writes, alerts) are this scenario's users' alone."""
    queues = Queues(queue_service(load_settings(lab.settings_file).storage))
    for queue in QUEUES.values():
        for name in (queue, poison_queue(queue)):
            with contextlib.suppress(ResourceNotFoundError):
                queues.client(name).clear_messages()
    conn = ad.admin_connection(lab, timeout=30)
    try:
        for group in (ad.PROVISION_GROUP, ad.LICENSE_GROUP):
            members = member_dns(conn, group)
            if members:
                conn.modify(f"CN={group},{ad.GROUPS_OU}", {"member": [(MODIFY_DELETE, members)]})
    finally:
        conn.unbind()


def _workers(lab: Lab, ctx: Context, scenario: Scenario, done: Any, **env: str) -> tuple[
        float | None, int]:
    """Start the worker again and again, as the timers would, until ``done()``; (seconds to
    converge or None, worker runs)."""
    started, runs = time.monotonic(), 0
    fault = threading.Thread(target=scenario.fault, args=(ctx,), daemon=True)
    fault.start()
    try:
        while time.monotonic() - started < scenario.deadline:
            argv = [*scenario.worker_prefix, sys.executable, "-m", "shared.cli", "--env-file",
                    str(_worker_env(lab, **env)), "run", "--once", "--limit", str(WORKER_LIMIT)]
            ctx.worker = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True)
            ctx.worker.wait()
            runs += 1
            if not fault.is_alive() and done():
                return time.monotonic() - started, runs
            time.sleep(1.0)
    finally:
        ctx.stop.set()
        if ctx.worker is not None and ctx.worker.poll() is None:
            ctx.worker.kill()
        fault.join(timeout=300)
    return None, runs


LEAVERS = ad.LEAVERS_GROUP


def _leavers_done(lab: Lab, graph: LabGraph, sams: list[str]) -> list[str]:
    """The leavers finished: a remote shared mailbox (97), no licence, out of O365_Leavers."""
    return [sam for sam, user in _users(lab, sams).items()
            if user["remote"] == 97 and not _skus_of(graph, user["upn"])
            and not any(f"CN={LEAVERS}," in dn for dn in user["groups"])]


def run_leavers(lab: Lab, scenario: Scenario, users: int) -> Row:
    """Issue 27: N users provisioned, then all put in O365_Leavers at once (the limit raised
    to N) and worked by workers SIGKILLed at random; counts each leaver converted, unlicensed
    and out of the group exactly once: lost = not all three, doubled = a second conversion
    (the audit's "mailbox type" rows) or a second assignLicense (the lab Graph's writes)."""
    from shared.flow import Service

    _isolate(lab)
    graph = LabGraph(lab)
    lab_exchange.configure(lab, reset=True)
    sams = seed(lab, users)
    graph.units_for(users)
    quiet = Scenario("provision", "no fault")
    _workers(lab, Context(lab, graph, sams), quiet,
             lambda: _converged(lab, sams) and len(_provisioned(lab, graph, sams)[0]) == users)
    conn = ad.admin_connection(lab, timeout=30)
    try:
        group = f"CN={ad.LEAVERS_GROUP},{ad.GROUPS_OU}"  # the service may write its members
        conn.search(ad.STAFF_OU, "(|" + "".join(f"(sAMAccountName={s})" for s in sams) + ")",
                    attributes=["distinguishedName"])
        dns = [str(e["dn"]) for e in conn.response if e.get("type") == "searchResEntry"]
        assert conn.modify(group, {"member": [(MODIFY_ADD, dns)]}), conn.result
    finally:
        conn.unbind()
    for user in _users(lab, sams).values():
        graph.post("mailboxes/usage", {"user": user["upn"], "storageUsedBytes": 2**30,
                                       "hasArchive": False})
    graph.post("stats/reset", {})
    mails_before = set(_mails(lab))
    ctx = Context(lab, graph, sams)
    env = {"LEAVERS_MAX_PER_DAY": str(users * 10), "SYNC_RETRY_MIN_SECONDS": "5"}
    took, runs = _workers(lab, ctx, scenario,
                          lambda: len(_leavers_done(lab, graph, sams)) == users, **env)
    done = _leavers_done(lab, graph, sams)
    stats = graph.get("stats")
    counts = stats["paths"].get("POST users/{id}/assignLicense", {})
    removals = counts.get("requests", 0) - sum(v for k, v in counts.items() if k.isdigit())
    svc = Service.build(load_settings(lab.settings_file))
    try:
        guids = {sam: svc.directory().user_by_sam(sam).guid for sam in sams}
        converted = {sam: sum(e["action"] == "mailbox type"
                              for e in svc.audit.entries(user=str(guid)))
                     for sam, guid in guids.items()}
    finally:
        svc.close()
    doubled = sum(n > 1 for n in converted.values()) + max(0, removals - len(done))
    upns = {u["upn"].lower() for u in _users(lab, sams).values()}
    witness = upns & {u.lower() for u in stats.get("unlicensedUserMailboxes", [])}
    graph.close()
    ctx.notes.append(f"{sum(converted.values())} conversions, {removals} licence removals, "
                     f"{len(witness)} licences removed from a user mailbox")
    alerts = [p for p in set(_mails(lab)) - mails_before if not _is_digest(p)]
    return Row(scenario.name, users, len(done), users - len(done), doubled,
               removals - len(done), None if took is None else round(took, 1), len(alerts), runs,
               "; ".join(ctx.notes + ([f"{ctx.kills} SIGKILLs"] if ctx.kills else [])))


def run_scenario(lab: Lab, scenario: Scenario, users: int) -> Row:
    if scenario.name == "leavers":
        return run_leavers(lab, scenario, users)
    _isolate(lab)
    graph = LabGraph(lab)
    graph.post("config", {"throttle_rate": 0, "error_rate": 0, "drop_rate": 0,
                          "drop_after_rate": 0, "sync_enabled": True})
    lab_exchange.configure(lab, reset=True)
    sams = seed(lab, users)
    graph.units_for(users)
    ctx = Context(lab, graph, sams)
    consumed_before, mails_before = _consumed(graph), set(_mails(lab))
    scenario.before(ctx)  # after the harness's own reads: a throttled Graph would refuse them
    graph.post("stats/reset", {})
    started = time.monotonic()
    converged: float | None = None
    runs = 0
    fault = threading.Thread(target=scenario.fault, args=(ctx,), daemon=True)
    fault.start()
    try:
        while time.monotonic() - started < scenario.deadline:
            argv = [*scenario.worker_prefix, sys.executable, "-m", "shared.cli", "--env-file",
                    str(_worker_env(lab)), "run", "--once", "--limit", str(WORKER_LIMIT)]
            ctx.worker = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True)
            ctx.worker.wait()
            runs += 1
            if not fault.is_alive() and _converged(lab, sams):
                done, _, _ = _provisioned(lab, graph, sams)
                if len(done) == len(sams):
                    converged = time.monotonic() - started
                    break
            time.sleep(1.0)  # the next timer tick
    finally:
        ctx.stop.set()
        if ctx.worker is not None and ctx.worker.poll() is None:
            ctx.worker.kill()
        fault.join(timeout=300)
        with contextlib.suppress(Exception):
            scenario.after(ctx)
        graph.post("config", {"throttle_rate": 0, "error_rate": 0, "drop_rate": 0,
                              "drop_after_rate": 0})
    done, doubled, holding = _provisioned(lab, graph, sams)
    stats = graph.get("stats")
    extra = _applied_writes(stats) - 2 * len(done)
    alerts = [p for p in set(_mails(lab)) - mails_before if not _is_digest(p)]
    # A unit consumed beyond one per user holding a licence was consumed twice.
    twice = doubled + max(0, _consumed(graph) - consumed_before - holding)
    graph.close()
    return Row(scenario.name, users, len(done), users - len(done), twice, extra,
               None if converged is None else round(converged, 1), len(alerts), runs,
               "; ".join(ctx.notes + ([f"{ctx.kills} SIGKILLs"] if ctx.kills else [])))


def _converged(lab: Lab, sams: list[str]) -> bool:
    left = set(member_sams(lab, ad.PROVISION_GROUP)) | set(member_sams(lab, ad.LICENSE_GROUP))
    return not left & set(sams)


# -- the run --------------------------------------------------------------------------------------
def fresh_lab(root: Path) -> Lab:
    """The lab at ``root``, started afresh with storage that survives a restart."""
    os.environ["LAB_STORAGE_PERSIST"] = "1"
    lab = Lab.open(root)
    down(lab)
    lab.settings = {}
    return up(lab)


def markdown(rows: list[Row], command: str) -> str:
    lines = ["| scenario | users | provisioned | lost | licensed twice | extra Graph writes | "
             "time to converge | alerts sent | worker runs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        took = f"{r.converge_seconds:.0f} s" if r.converge_seconds is not None else "no"
        lines.append(f"| {r.scenario} | {r.users} | {r.provisioned} | {r.lost} | "
                     f"{r.licensed_twice} | {r.extra_graph_writes} | {took} | {r.alerts} | "
                     f"{r.worker_runs} |")
    notes = [f"- {r.scenario}: {r.notes}" for r in rows if r.notes]
    return "\n".join([*lines, "", *notes, "", f"Reproduce: `{command}`", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--name", default="faults", help="results file name")
    args = parser.parse_args(argv)
    wanted = [s for s in SCENARIOS if not args.only or s.name in args.only.split(",")]
    root = Path(os.environ.get("LAB_DIR", "/tmp/lab-faults"))
    command = (f"LAB_DIR={root} python -m bench.faults --users {args.users}"
               + (f" --only {args.only}" if args.only else ""))
    lab = fresh_lab(root)
    rows: list[Row] = []
    try:
        for scenario in wanted:
            print(f"== {scenario.name}: {scenario.what}", flush=True)
            row = run_scenario(lab, scenario, args.users)
            lab = Lab.open(root)
            rows.append(row)
            print(f"   {asdict(row)}", flush=True)
    finally:
        down(Lab.open(root))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(
        {"command": command, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(rows, command))
    print(markdown(rows, command))
    if args.name == "faults":  # the run docs/benchmarks.md shows
        print(f"written: {docs.write().relative_to(REPO)}")
    return 0 if all(r.lost == 0 and r.licensed_twice == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
