"""``python -m lab.graph --settings .lab/settings.env --port N``: the lab Graph process."""

from __future__ import annotations

import argparse
import asyncio
import importlib
from pathlib import Path

from dotenv import dotenv_values

from . import OPTIONAL_MODULES, ROUTE_MODULES
from .server import Graph, serve
from .store import seed_tenant
from .sync import ENGINE, AdSource, SyncEngine
from .throttle import Knobs


def load_route_modules() -> list[str]:
    """Import the route modules, and the optional ones that exist; return those loaded."""
    loaded = []
    for name in ROUTE_MODULES + OPTIONAL_MODULES:
        try:
            importlib.import_module(f"lab.graph.{name}")
        except ModuleNotFoundError as exc:
            if name in OPTIONAL_MODULES and exc.name == f"lab.graph.{name}":
                continue
            raise
        loaded.append(name)
    return loaded


def knobs_from(settings: dict[str, str]) -> Knobs:
    def get(name: str, default: str) -> str:
        return settings.get(name) or default

    return Knobs(
        latency_ms=float(get("LAB_GRAPH_LATENCY_MS", "0")),
        error_rate=float(get("LAB_GRAPH_ERROR_RATE", "0")),
        drop_rate=float(get("LAB_GRAPH_DROP_RATE", "0")),
        writes_per_window=int(get("LAB_GRAPH_WRITES_PER_WINDOW", "3000")),
        write_window_seconds=float(get("LAB_GRAPH_WRITE_WINDOW_SECONDS", "150")),
        ru_per_window=int(get("LAB_GRAPH_RU_PER_WINDOW", "0")),
        ru_window_seconds=float(get("LAB_GRAPH_RU_WINDOW_SECONDS", "10")),
        sync_delay_seconds=float(get("LAB_GRAPH_SYNC_DELAY", "30")),
        sync_interval_seconds=float(get("LAB_GRAPH_SYNC_INTERVAL", "1800")),
    )


def ad_source(settings: dict[str, str]) -> AdSource | None:
    """The lab AD to mirror, when the AD peer has published its settings."""
    url = settings.get("LAB_AD_URL")
    if not url:
        return None
    base_dn = settings["LAB_AD_BASE_DN"]
    ca = settings.get("LAB_AD_CA_CERT") or settings.get("CA_BUNDLE")
    return AdSource(
        url=url.split(",")[0].strip(),
        user=settings["LAB_AD_ADMIN_USER"],
        password=settings["LAB_AD_ADMIN_PASSWORD"],
        base_dn=base_dn,
        scope_dn=settings.get("LAB_GRAPH_SYNC_SCOPE") or base_dn,
        ca_bundle=Path(ca) if ca else None,
    )


async def main(settings: dict[str, str], port: int) -> None:
    load_route_modules()
    knobs = knobs_from(settings)
    tenant = seed_tenant(
        settings["LAB_GRAPH_TENANT_ID"],
        settings.get("LAB_TENANT", "o365lab"),
        {"ENTERPRISEPACK": int(settings.get("LAB_GRAPH_E3_UNITS") or 250),
         "EXCHANGEENTERPRISE": int(settings.get("LAB_GRAPH_EXO2_UNITS") or 250),
         "POWER_BI_PRO": int(settings.get("LAB_GRAPH_ADDON_UNITS") or 25)},
        settings.get("ROUTING_DOMAIN", ""),
    )
    graph = Graph(tenant, knobs, settings["AZURE_STATIC_TOKEN"])
    graph.budgets.tenant_id = tenant.tenant_id
    graph.settings = settings
    engine = SyncEngine(graph, ad_source(settings))
    ENGINE.append(engine)
    await serve(graph, "127.0.0.1", port, [engine.run])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m lab.graph")
    parser.add_argument("--settings", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int)
    args = parser.parse_args()
    values = {k: v or "" for k, v in dotenv_values(args.settings).items()}
    asyncio.run(main(values, args.port))
