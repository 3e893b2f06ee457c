"""The post-deploy check: whether a deployment can do its job, asked of each dependency the
way the service uses it, changing nothing anywhere.

One ``Probe`` per thing to check (a secret, the queues, a hybrid connection, AD, Exchange,
Graph, mail ...), each made by the module of its peer (``vault``, ``storage``, ``relay``,
``premises``, ``cloud``); ``run(settings)`` runs them all concurrently, each within its own
timeout, so a peer that does not answer stalls only its own line. A probe that needs another
(AD needs its password from Key Vault and, with ``AD_TRANSPORT=relay``, its hybrid connection)
waits for it and is *skipped* when that one failed: the output then names the one broken thing.

Used by ``python -m shared.cli check`` (one line each) and at the app's start
(``start_in_background``: one ``dependency_checked`` event each, never blocking the start).
It sits beside the composition root, above the peers and never importing the flow.
May import: `errors`, `log`, `config`, `identity`, `secrets`, `relay`, `ad`, `exchange`, `graph`,
`store`, `roles`.
"""

from __future__ import annotations

import asyncio
import threading

from shared.config import Settings
from shared.log import get_logger

from . import cloud, premises, relay, storage, vault
from .probe import TIMEOUT, Failed, Probe, Result, in_thread, result_of

__all__ = ["TIMEOUT", "Failed", "Probe", "Result", "in_thread", "log_results", "probes",
           "result_of", "run", "start_in_background"]

log = get_logger(__name__)


def probes(settings: Settings) -> list[Probe]:
    """Every probe that applies to these settings, in the order the lines are printed."""
    return [*vault.probes(settings), *storage.probes(settings), *relay.probes(settings),
            *premises.probes(settings), *cloud.probes(settings)]


async def run(settings: Settings, *, timeout: float = TIMEOUT,
              only: list[Probe] | None = None) -> list[Result]:
    """Run the probes concurrently, each within ``timeout`` seconds and after those it needs;
    one ``Result`` each, in ``probes()``' order."""
    todo = only if only is not None else probes(settings)
    tasks: dict[str, asyncio.Task[Result]] = {}

    async def one(probe: Probe) -> Result:
        before = [tasks[name] for name in probe.needs if name in tasks]
        done = await asyncio.gather(*before)
        broken = [r.check for r in done if not r.ok]
        if broken:
            return Result(probe.check, "skipped", f"not tried: {', '.join(broken)} failed")
        try:
            async with asyncio.timeout(timeout):
                return Result(probe.check, "ok", await probe.run())
        except Exception as exc:  # every failure becomes its line; none stops the others
            return result_of(probe.check, exc)

    for probe in todo:
        tasks[probe.check] = asyncio.create_task(one(probe))
    return list(await asyncio.gather(*tasks.values()))


def log_results(results: list[Result]) -> None:
    """One ``dependency_checked`` event per result (fields check, ok, status, detail, fix)."""
    for r in results:
        event = log.info if r.status != "FAILED" else log.warning
        event("dependency_checked", check=r.check, ok=r.ok, status=r.status, detail=r.detail,
              fix=r.fix, step="check")


def start_in_background(settings: Settings) -> threading.Thread:
    """Run the checks once in a daemon thread of their own and log what they find; the start
    of the app neither waits for them nor fails with them."""

    def work() -> None:
        try:
            log_results(asyncio.run(run(settings)))
        except Exception as exc:  # a check that cannot even run is logged, never raised
            log.warning("dependency_check_failed", error=type(exc).__name__, step="check")

    thread = threading.Thread(target=work, name="dependency-check", daemon=True)
    thread.start()
    return thread
