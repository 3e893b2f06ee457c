"""``python -m bench``: issue 7's benchmark in one run, against the lab.

1. end-to-end throughput for ``--users`` N (2,000) users, from "in O365_Provision" to
   "licensed, in neither group", with 200 ms per Exchange cmdlet, 100 ms per Graph request and
   Graph's write budget (3,000 writes per 150 s) enforced by the lab Graph (``bench/e2e.py``);
2. the existing scripts' method on a sample of fresh users in the same lab, same latencies
   (``bench/legacy.py``), extrapolated linearly to N, and the ratio;
3. polling cost at 1,000 and 20,000 members: no-change and 10-change DirSync polls against a
   full enumeration (``bench/bench_dirsync.py``, on DCs of their own restored from snapshots);
4. scaling: the end-to-end run at every ``--sizes`` N (500 and 2,000; 10,000 on request).

Writes ``bench/results/<name>.json`` and ``.md`` (``e2e`` for the default run) and prints the
command that reproduces them.

    LAB_DIR=/tmp/lab-bench python -m bench                      # ~15 min on 2 cores
    LAB_DIR=/tmp/lab-bench python -m bench --quick              # ~3 min
    LAB_DIR=/tmp/lab-bench python -m bench --sizes 500,2000,10000   # ~75 min
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lab.core import REPO, Lab
from lab.service import LAB_SERVICE_SETTINGS
from shared.log import configure as configure_logging

from . import bench_dirsync, docs, e2e, legacy, trickle
from .targets import HEADLINE_USERS, ceiling, ratio, run_of, targets

RESULTS = REPO / "bench" / "results"
DEFAULTS = {"users": HEADLINE_USERS, "sizes": "500,2000", "legacy_sample": 100,
            "poll_sizes": "1000,20000", "poll_repeat": 5}
QUICK = {"users": 200, "sizes": "200", "legacy_sample": 20, "poll_sizes": "1000",
         "poll_repeat": 3}



def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, help="N of the throughput and legacy figures "
                        f"(default {DEFAULTS['users']})")
    parser.add_argument("--sizes", help=f"N of the scaling runs (default {DEFAULTS['sizes']})")
    parser.add_argument("--legacy-sample", type=int,
                        help=f"users the scripts' method provisions (default "
                             f"{DEFAULTS['legacy_sample']}; 0 skips it)")
    parser.add_argument("--poll-sizes", help=f"group sizes of the polling figures (default "
                        f"{DEFAULTS['poll_sizes']}; 'none' skips them)")
    parser.add_argument("--poll-repeat", type=int)
    parser.add_argument("--quick", action="store_true",
                        help="a short run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    parser.add_argument("--exchange-ms", type=float, default=200.0)
    parser.add_argument("--graph-ms", type=float, default=100.0)
    parser.add_argument("--location-share", type=float, default=0.5,
                        help="share of users whose usageLocation is right already (0.5)")
    parser.add_argument("--driver", choices=("cli", "host"), default="cli",
                        help="cli: shared.cli.run_once (default); host: the queues consumed "
                             "as the Functions host does with host.json")
    parser.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                        help="an app setting for the worker, e.g. EXCHANGE_SESSIONS=8 "
                             "(repeatable; default: the lab's settings)")
    parser.add_argument("--limit", type=float, default=4 * 3600,
                        help="give up a run after this many seconds")
    parser.add_argument("--trickle", default="none,connect,cloud-sync",
                        help="SYNC_TRIGGERs whose time to licensed is measured with a trickle "
                             "(one user every 10 s for 10 minutes), each in a lab of its own "
                             "beside the other runs; 'none' as the only value skips them")
    parser.add_argument("--keep-lab", action="store_true", help="leave the lab running")
    parser.add_argument("--name", help="results file name (default: from the options)")
    args = parser.parse_args()
    for key, default in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    return args


def command(args: argparse.Namespace, lab: Lab) -> str:
    parts = [f"LAB_DIR={lab.root}", "python", "-m", "bench"]
    if args.quick:
        parts.append("--quick")
    defaults = QUICK if args.quick else DEFAULTS
    if args.trickle != "none,connect,cloud-sync":
        parts += ["--trickle", args.trickle]
    for key in ("users", "sizes", "legacy_sample", "poll_sizes", "poll_repeat"):
        if getattr(args, key) != defaults[key]:
            parts += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    for key, default in (("exchange_ms", 200.0), ("graph_ms", 100.0), ("location_share", 0.5),
                         ("driver", "cli")):
        if getattr(args, key) != default:
            parts += [f"--{key.replace('_', '-')}", f"{getattr(args, key):g}"
                      if isinstance(getattr(args, key), float) else str(getattr(args, key))]
    for setting in args.set:
        parts += ["--set", setting]
    return " ".join(shlex.quote(part) for part in parts)


def overrides(pairs: list[str]) -> dict[str, str]:
    found = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set takes SETTING=VALUE, not {pair!r}")
        found[key.strip().upper()] = value.strip()
    return found


def name_of(args: argparse.Namespace) -> str:
    if args.name:
        return str(args.name)
    name = "e2e-quick" if args.quick else "e2e"
    if args.driver != "cli":
        name += f"-{args.driver}"
    for setting in args.set:
        key, _, value = setting.partition("=")
        name += f"-{key.lower().replace('_', '-')}-{value}"
    return name


def commit() -> str:
    """The code measured: BENCH_COMMIT when given (a run from an exported tree), else git's
    HEAD, marked dirty when shared/ or lab/ differ from it."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "shared", "lab"],
                               cwd=REPO, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty.strip() else "")


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip()
                  for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    memory = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"cpu": model, "cpus": os.cpu_count(), "memory_gb": round(memory / 2**20, 1),
            "os": platform.platform(), "python": platform.python_version()}


def main() -> None:
    args = parse()
    configure_logging("WARNING", json=False)
    lab = Lab.open(Path(os.environ.get("LAB_DIR", REPO / ".lab")))
    conditions = e2e.Conditions(exchange_ms=args.exchange_ms, graph_ms=args.graph_ms)
    sizes = sorted({int(s) for s in str(args.sizes).split(",") if s} | {args.users})
    started = time.monotonic()
    report: dict[str, Any] = {
        "benchmark": "issue 7: end to end, the scripts' method, polling, scaling",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "commit": commit(),
        "command": command(args, lab),
        "conditions": {
            "exchange_ms_per_cmdlet": conditions.exchange_ms,
            "graph_ms_per_request": conditions.graph_ms,
            "graph_write_budget": f"{conditions.writes_per_window} per "
                                  f"{conditions.write_window_seconds:g} s",
            "usage_location_preset_share": args.location_share,
            "driver": args.driver,
            # The lab's Connect delta cycle (lab/graph: LAB_GRAPH_SYNC_DELAY) and when the
            # licence step first looks for the synced user: no licence starts before both.
            "sync_cycle_seconds": float(os.environ.get("LAB_GRAPH_SYNC_DELAY", "30")),
            "sync_wait_seconds": float({**LAB_SERVICE_SETTINGS, **overrides(args.set)}
                                       ["SYNC_WAIT_SECONDS"]),
        },
        "runs": [],
    }
    name = name_of(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    # The trickles run beside the rest, each in a lab of its own: they are mostly waiting
    # (one user every 10 s, a sync cycle every 30 minutes).
    trickles: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for trigger in [t for t in str(args.trickle).split(",") if t and args.trickle != "none"]:
        out = Path(f"/tmp/bench-trickle-{trigger}.json")
        out.unlink(missing_ok=True)
        env = {**os.environ, "LAB_DIR": f"{lab.root}-trickle-{trigger}"}
        trickles[trigger] = (subprocess.Popen(
            [sys.executable, "-m", "bench.trickle", "--trigger", trigger, "--out", str(out)],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL), out)
        print(f"trickle with SYNC_TRIGGER={trigger}: started", flush=True)

    def save() -> None:  # after every part, so that a failure later keeps what was measured
        (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")

    try:
        for size in sizes:
            load = os.getloadavg()[0]
            print(f"end to end: {size} users ...", flush=True)
            result = e2e.run(lab.root, size, conditions, limit=args.limit,
                             overrides=overrides(args.set), driver=args.driver,
                             location_share=args.location_share)
            result["load_average_before"] = round(load, 2)
            result["load_average_after"] = round(os.getloadavg()[0], 2)
            report["runs"].append(result)
            report["conditions"].update(result["service_settings"])
            save()
            print(f"  {result['provisioned']} users in {result['seconds']} s: "
                  f"{result['users_per_second']} users/s, peak {result['worker']['peak_rss_mb']}"
                  " MB", flush=True)
            if size == args.users and args.legacy_sample:
                print(f"the scripts' method: {args.legacy_sample} users ...", flush=True)
                lab = Lab.open(lab.root)
                report["legacy"] = legacy.measure(lab, args.legacy_sample)
                save()
                print(f"  {report['legacy']['users_per_second']} users/s", flush=True)
        if str(args.poll_sizes) != "none":
            report["polling"] = []
            for size in (int(s) for s in str(args.poll_sizes).split(",")):
                print(f"polling: {size} members ...", flush=True)
                report["polling"].append(bench_dirsync.bench_size(lab, size, args.poll_repeat))
        if trickles:
            report["trickle"] = []
            for trigger, (proc, out) in trickles.items():
                proc.wait()
                if out.exists():
                    report["trickle"].append(json.loads(out.read_text()))
                print(f"trickle {trigger}: {report['trickle'][-1] if out.exists() else 'failed'}",
                      flush=True)
            old = report.get("legacy")
            if old:
                per_user = old["run_seconds"][1] / old["sample_users"]
                report["trickle_scripts_hourly"] = trickle.hourly_scripts(per_user, 360.0)
            save()
    finally:
        for proc, _ in trickles.values():
            if proc.poll() is None:
                proc.terminate()
        if not args.keep_lab:
            Lab.open(lab.root).stop_all()
    report["bench_seconds"] = round(time.monotonic() - started)
    report["targets"] = targets(report, args.users)
    save()
    markdown = render(report, args.users)
    (RESULTS / f"{name}.md").write_text(markdown)
    print()
    print(markdown)
    print(f"written: bench/results/{name}.json, bench/results/{name}.md")
    if name == "e2e":  # the run docs/benchmarks.md shows
        print(f"written: {docs.write().relative_to(REPO)}")
    print(f"reproduce: {report['command']}")


# -- figures against targets (bench/targets.py) --------------------------------------------
def _sync_floor(report: dict[str, Any], users: int, scripts: float) -> list[str]:
    """The sentence on what the sync adds to the write budget's bound (the scripts' figure
    leaves the sync out: it falls between their two runs)."""
    wait = report["conditions"].get("sync_cycle_seconds")
    rate = ceiling(report, users)
    if wait is None or not rate:
        return []
    floor = wait + users / rate
    return ["", f"No licence starts before the first triggered Connect cycle has ended, "
                f"{wait:g} s after the first mailbox step at the earliest, so {users:,} users "
                f"take at least {wait:g} s + {users:,} ÷ {rate:.1f} users/s = {floor:.0f} s: "
                f"{users / floor:.2f} users/s, {users / floor / scripts:.1f}× the scripts' "
                f"method, whose figure leaves the sync between its two runs out."]


# -- Markdown ------------------------------------------------------------------------------
def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def _met(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "**no**")


def render(report: dict[str, Any], users: int) -> str:
    m, c = report["machine"], report["conditions"]
    lines = [
        f"### Benchmark ({report['date']}, commit {report.get('commit', 'unknown')})",
        "",
        f"Machine: {m['cpus']} × {m['cpu']}, {m['memory_gb']} GB, Python {m['python']}; "
        "the lab's peers (Samba, Azurite, the Exchange and Graph stand-ins) share it with the "
        "worker.",
        f"Conditions: {c['exchange_ms_per_cmdlet']:g} ms per Exchange cmdlet, "
        f"{c['graph_ms_per_request']:g} ms per Graph request, Graph's write budget "
        f"({c['graph_write_budget']}) enforced by the lab; {c['usage_location_preset_share']:.0%}"
        " of the users have their usageLocation right already; one worker, driven by "
        f"`{c['driver']}`, with EXCHANGE_SESSIONS={c.get('exchange_sessions')} and "
        f"GRAPH_CONCURRENCY={c.get('graph_concurrency')}"
        + "".join(f", {k}={v}" for k, v in (c.get("overrides") or {}).items()
                  if k not in ("EXCHANGE_SESSIONS", "GRAPH_CONCURRENCY"))
        + (f"; the lab's Entra Connect delta cycle runs {c['sync_cycle_seconds']:g} s, "
           f"triggered by the service, whose licence step looks once that cycle has ended "
           f"(Get-ADSyncScheduler), {c['sync_wait_seconds']:g} s after the mailbox step at "
           f"the latest (SYNC_WAIT_SECONDS)"
           if "sync_cycle_seconds" in c else "") + ".",
        "",
    ]
    run = run_of(report, users)
    if run:
        g, x, w = run["graph"], run["exchange"], run["worker"]
        lines += [
            f"**End to end, N = {users:,}** (in `O365_Provision` → licensed, in neither group)",
            "",
            "| figure | value |",
            "|---|---|",
            f"| users provisioned | {run['provisioned']:,} of {users:,} in {run['seconds']:,.0f} s"
            f" (left in the groups: {sum(run['left_in_groups'].values())}) |",
            f"| throughput | {run['users_per_second']:.2f} users/s "
            f"(steady, 10th–90th percentile: {run['steady_users_per_second']} users/s) |",
            f"| Graph writes per user | {g['writes_per_user']:.2f} (usageLocation right: "
            f"{g['writes_per_user_location_right']}, unset: "
            f"{g['writes_per_user_location_unset']}) |",
            f"| Graph reads per user | {g['reads_per_user']:.2f} |",
            f"| 429s received | {g['http_429']} ({g['http_429_share']:.2%} of requests) |",
            f"| write budget used while licence work existed | {g['write_budget_used']:.0%} "
            f"(busiest 150 s: {g['busiest_150s_writes']:,} of 3,000 writes) |",
            f"| PSRP runspace pools opened | {x['pools_opened']} |",
            f"| Exchange cmdlets per user | {x['cmdlets_per_user']:.2f} (cmdlet latency alone "
            f"kept {x['sessions']} session(s) busy {x['latency_busy_share']:.0%} of the run) |",
            f"| worker peak memory (ru_maxrss) | {w['peak_rss_mb']:.0f} MB"
            + (" (resident at each quarter of the run: "
               + ", ".join(f"{v:.0f}" for v in w["rss_mb_by_quarter"]) + " MB)"
               if w.get("rss_mb_by_quarter") else "") + " |",
            f"| worker CPU | {w['cpu_seconds']:.0f} s ({w['cpu_seconds'] / users * 1000:.0f} ms "
            "per user) |",
            *([f"| worker event loop | busy {w['loop_busy_share']:.0%} of the run; blocked in "
               f"synchronous storage calls alone {w['storage_on_loop_share']:.0%} |",
               f"| storage requests per user | {w['storage_requests_per_user']:.2f} "
               f"({w['storage_ms_per_request']:.1f} ms each on average, as the worker's threads "
               "waited for them) |"]
              if "loop_busy_share" in w else []),
            "| CPU of the lab's peers | " + ", ".join(
                f"{k} {v:.0f} s" for k, v in run["lab_cpu_seconds"].items() if v >= 0.5) + " |",
            f"| cloud mailboxes created by licensing too early | "
            f"{g['cloud_mailboxes_created']} |",
            *(f"| failure | {reason} |" for reason in run.get("failures", [])),
            "",
        ]
    old = report.get("legacy")
    if old and run:
        found = ratio(report, users) or 0.0
        lines += [
            f"**Against the existing scripts' method** (run on {old['sample_users']} fresh "
            f"users in the same lab, two scheduled runs, extrapolated linearly to N = "
            f"{users:,}; the wait between the runs is not counted)",
            "",
            "| | service | scripts' method |",
            "|---|---|---|",
            f"| users/s | {run['users_per_second']:.2f} | {old['users_per_second']:.2f} |",
            f"| time for {users:,} users | {run['seconds'] / 60:.1f} min | "
            f"{users / old['users_per_second'] / 60:.1f} min (extrapolated) |",
            f"| Graph reads / writes per user | {run['graph']['reads_per_user']:.2f} / "
            f"{run['graph']['writes_per_user']:.2f} | {old['graph_reads_per_user']:.2f} / "
            f"{old['graph_writes_per_user']:.2f} |",
            f"| Exchange cmdlets per user | {run['exchange']['cmdlets_per_user']:.2f} | "
            f"{old['exchange_cmdlets_per_user']:.2f} |",
            f"| ratio | {found:.2f}× | 1× |",
            "",
            f"Graph's write budget alone caps any method at {ceiling(report, users):.1f} users/s "
            f"with this mix of users ({run['graph']['writes_per_user']:.2f} writes each): "
            f"{ceiling(report, users) / old['users_per_second']:.1f}× the scripts' method.",
            *_sync_floor(report, users, old["users_per_second"]),
            "",
        ]
    if report.get("trickle"):
        lines += [
            "**Time from group add to licensed** (one user every 10 s for 10 minutes, the lab's "
            "30-minute sync cycle, each cycle running 30 s; the trickle starts right after a "
            "cycle; the poll on the default POLL_SCHEDULE, every 15 s)",
            "",
            "| SYNC_TRIGGER | licensed | p50 | p95 | max | sync cycles (triggered, busy answers) |",
            "|---|---|---|---|---|---|",
        ]
        for t in report["trickle"]:
            lines.append(
                f"| `{t['trigger']}` | {t['licensed']} of {t['users']} | "
                f"{_minutes(t['p50_seconds'])} | {_minutes(t['p95_seconds'])} | "
                f"{_minutes(t['max_seconds'])} | {t['sync_cycles']} ({t['sync_triggered']}, "
                f"{t['sync_busy_answers']}) |")
        hourly = report.get("trickle_scripts_hourly")
        if hourly:
            lines.append(
                f"| scripts' method, hourly (computed) | - | {_minutes(hourly['p50_seconds'])} | "
                f"{_minutes(hourly['p95_seconds'])} | - | - |")
            lines += ["", "The scripts' row is computed, not run: a user added at a uniformly "
                      "random time is mail-enabled by the next hourly run and licensed by the "
                      "one after (Connect's 30-minute cycle falls between them), at its place "
                      "in that run's licensing phase, which takes 360 users × the time per user "
                      f"measured for the scripts' licensing run ({hourly['run_phase_seconds']:g} "
                      "s a run)."]
        lines.append("")
    if report.get("polling"):
        lines += [
            "**Polling cost** (LDAP message bytes read, median of the repeats)",
            "",
            "| members | no-change poll | 10-change poll | full enumeration |",
            "|---|---|---|---|",
        ]
        for poll in report["polling"]:
            cells = [f"{poll[k]['seconds_median'] * 1000:.1f} ms, {poll[k]['bytes_read']:,} B"
                     for k in ("no_change_poll", "ten_change_poll", "full_enumeration")]
            lines.append(f"| {poll['members']:,} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "**Scaling**",
        "",
        "| N | users/s | steady users/s | time | worker peak memory | worker CPU per user | "
        "storage request (Azurite), mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['users']:,} | {r['users_per_second']:.2f} | {r['steady_users_per_second']} | "
            f"{r['seconds'] / 60:.1f} min | {r['worker']['peak_rss_mb']:.0f} MB | "
            f"{r['worker']['cpu_seconds'] / r['users'] * 1000:.0f} ms | "
            f"{r['worker'].get('storage_ms_per_request', '-')} ms |")
    for r in report.get("stopped_runs", []):
        lines += ["", f"N = {r['users']:,} was stopped after {r['minutes']:.0f} min with "
                  f"{r['provisioned']:,} users licensed: {r['note']}"]
    lines += ["", "**Targets**", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['figure']} | {_met(t['met'])} |" for t in report["targets"]]
    lines += ["", f"Reproduce: `{report['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
