"""What the Azure Relay path costs, against the direct path, in one run on one lab: per Exchange
cmdlet (a reused session), per PowerShell session opened, per DirSync poll (no change) and per
relay stream opened.

Both clients are the service's own (``Directory``, ``ExchangeClient``), built from the lab's
settings routed ``relay`` (local forwarder → lab relay → azbridge-like bridge → peer, TLS end to
end) and ``direct``. The two paths alternate in rounds, so drift on the machine hits both.
``--latency-ms`` sets the Exchange endpoint's per-cmdlet latency (0: the protocol cost alone);
``--open-latency-ms`` the bridge's delay per stream opened (a distant relay region).

    LAB_DIR=/tmp/lab-relay python -m bench.bench_relay [--cmdlets 300] [--polls 300]

Prints its figures and writes ``bench/results/relay.json`` and ``relay.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab import exchange as lab_exchange
from lab import relay as lab_relay
from lab.__main__ import up
from lab.core import REPO, Lab, format_env
from shared.ad.directory import Directory
from shared.config import Settings, load_settings
from shared.exchange.client import ExchangeClient
from shared.log import configure as configure_logging
from shared.relay import forward as relay_forward
from shared.secrets import SecretProvider

RESULTS = REPO / "bench" / "results" / "relay.json"
PATHS = ("direct", "relay")


def routed(lab: Lab, transport: str) -> Settings:
    copy = Lab(root=lab.root, settings=dict(lab.settings))
    lab_relay.route(copy, transport)
    path = lab.root / "relay" / f"bench-{transport}.env"
    path.write_text(format_env(copy.settings))
    return load_settings(path)


def timed(call: Callable[[], Any], count: int) -> list[float]:
    """Milliseconds of each of ``count`` calls."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"n": len(samples), "median_ms": statistics.median(ordered),
            "mean_ms": statistics.fmean(ordered),
            "p90_ms": ordered[int(0.9 * (len(ordered) - 1))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cmdlets", type=int, default=300)
    parser.add_argument("--polls", type=int, default=300)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--open-latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    configure_logging("WARNING", json=False)

    lab = up(Lab.open(Path(os.environ.get("LAB_DIR", REPO / ".lab"))))
    settings = {path: routed(lab, path) for path in PATHS}
    base = settings["relay"]
    ad_password = SecretProvider.from_settings(base).resolve(base.ad.password,
                                                             setting="AD_PASSWORD")
    ex_password = lab.settings["LAB_EXCHANGE_PASSWORD"]
    lab_exchange.configure(lab, reset=True, close_sessions=True,
                           latency_ms={"*": args.latency_ms})
    lab_relay.bridge(lab, open_latency_ms=args.open_latency_ms)
    samples: dict[str, dict[str, list[float]]] = {k: {p: [] for p in PATHS} for k in
                                                   ("cmdlet", "session", "poll", "stream")}
    poll_bytes: dict[str, int] = {}
    group = base.provisioning.provision_group
    try:
        directories = {p: Directory(settings[p].ad, settings[p].provisioning,
                                    password=ad_password, ca_bundle=settings[p].service.ca_bundle,
                                    collect_usage=True) for p in PATHS}
        clients = {p: ExchangeClient(settings[p].exchange, password=ex_password,
                                     ca_bundle=settings[p].service.ca_bundle) for p in PATHS}
        cookies = {p: directories[p].poll(group, None).cookie for p in PATHS}
        for p in PATHS:
            clients[p].get_remote_mailbox("warm-up")
        link = base.ad.relay
        assert link is not None
        forwarder = relay_forward.tunnel(link, 0, base.ad.urls[0].split("//")[1].split(":")[0],
                                         636)
        for _ in range(args.rounds):
            for p in PATHS:
                client, directory = clients[p], directories[p]
                samples["cmdlet"][p] += timed(lambda c=client: c.get_remote_mailbox("nobody"),
                                              args.cmdlets // args.rounds)
                usage = directory.connection.usage
                before = usage.bytes_received if usage else 0
                samples["poll"][p] += timed(
                    lambda d=directory, p=p: d.poll(group, cookies[p]), args.polls // args.rounds)
                if usage:
                    poll_bytes[p] = round((usage.bytes_received - before)
                                          / (args.polls // args.rounds))

                def session(p: str = p) -> None:
                    with ExchangeClient(settings[p].exchange, password=ex_password,
                                        ca_bundle=settings[p].service.ca_bundle) as fresh:
                        fresh.get_remote_mailbox("nobody")

                samples["session"][p] += timed(session, max(1, args.sessions // args.rounds))
            samples["stream"]["relay"] += timed(forwarder.open, args.streams // args.rounds)
        for p in PATHS:
            clients[p].close()
            directories[p].close()
    finally:
        lab_exchange.configure(lab, reset=True)
        lab_relay.bridge(lab, open_latency_ms=0)

    figures: dict[str, Any] = {}
    for kind in ("cmdlet", "session", "poll"):
        figures[kind] = {p: summary(samples[kind][p]) for p in PATHS}
        direct, relay = figures[kind]["direct"]["median_ms"], figures[kind]["relay"]["median_ms"]
        figures[kind]["added_ms"] = relay - direct
        figures[kind]["added_percent"] = 100 * (relay - direct) / direct
    figures["stream_open"] = summary(samples["stream"]["relay"])
    figures["poll_bytes_read"] = poll_bytes
    command = (f"LAB_DIR={lab.root} python -m bench.bench_relay --cmdlets {args.cmdlets} "
               f"--polls {args.polls} --sessions {args.sessions} --streams {args.streams} "
               f"--rounds {args.rounds} --latency-ms {args.latency_ms:g} "
               f"--open-latency-ms {args.open_latency_ms:g}")
    report = {
        "benchmark": "Azure Relay path against the direct path (lab relay + azbridge-like bridge)",
        "cmdlet_latency_ms": args.latency_ms,
        "stream_open_latency_ms": args.open_latency_ms,
        "figures": figures,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "command": command,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    rows = []
    names = {"cmdlet": "Exchange cmdlet (Get-RemoteMailbox, reused session)",
             "session": "Exchange session opened + one cmdlet",
             "poll": "DirSync poll, no change"}
    for kind, label in names.items():
        f = figures[kind]
        rows.append(f"| {label} | {f['direct']['median_ms']:.1f} | {f['relay']['median_ms']:.1f}"
                    f" | {f['added_ms']:+.1f} ms ({f['added_percent']:+.0f} %) | "
                    f"{f['direct']['n']} each |")
    markdown = "\n".join([
        "# Azure Relay path against the direct path",
        "",
        f"Exchange endpoint latency per cmdlet: {args.latency_ms:g} ms; bridge delay per stream "
        f"opened: {args.open_latency_ms:g} ms. Medians; the two paths alternate in "
        f"{args.rounds} rounds. Machine: Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, lab peers on the same machine.",
        "",
        "| operation | direct (ms) | relay (ms) | relay adds | samples |",
        "|---|---|---|---|---|",
        *rows,
        f"| relay stream opened (token, rendezvous, azbridge preamble) | — | "
        f"{figures['stream_open']['median_ms']:.1f} | | {figures['stream_open']['n']} |",
        "",
        f"DirSync no-change poll reads {poll_bytes.get('direct', 0)} B direct and "
        f"{poll_bytes.get('relay', 0)} B through the relay (LDAP message bytes; the relay adds "
        "WebSocket framing outside the TLS session).",
        "",
        f"Reproduce: `{command}`",
        "",
    ])
    RESULTS.with_suffix(".md").write_text(markdown)
    print(markdown)
    markdown_file = RESULTS.with_suffix(".md").relative_to(REPO)
    print(f"written: {RESULTS.relative_to(REPO)} and {markdown_file}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
