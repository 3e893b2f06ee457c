"""``check``: whether a deployment can do its job, asked of each dependency the way the service
uses it, changing nothing anywhere.

One ``Probe`` per thing to check (a secret, the queues, a hybrid connection, AD, Exchange,
Graph, mail ...), each made by the module of its peer (``vault``, ``storage``, ``relay``,
``premises``, ``cloud``); ``run(settings)`` runs them all concurrently, each within its own
timeout, so a peer that does not answer stalls only its own line. A probe that needs another
(AD needs its password from Key Vault and, with ``AD_TRANSPORT=relay``, its hybrid connection)
waits for it and is *skipped* when that one failed: the output then names the one broken thing.

Used by ``python -m shared.cli check`` (one line each) and at the app's start
(``start_in_background``: one ``dependency_checked`` event each, never blocking the start).
This package imports the adapters (``shared.secrets``, ``shared.directory``, ``shared.exchange``,
``shared.graph``, ``shared.mail`` ...), never the flow: it sits beside the composition root.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from shared.config import Settings
from shared.errors import ConfigError, ProvisioningError
from shared.log import get_logger, redact

log = get_logger(__name__)

T = TypeVar("T")
TIMEOUT = 45.0  # seconds one probe may take; the peers' own timeouts are shorter
Status = Literal["ok", "FAILED", "skipped"]


@dataclass(frozen=True)
class Result:
    """One line of the check: what was checked, how it went, and the fix when it failed."""

    check: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def line(self) -> str:
        """The result as one line: ``FAILED  graph permissions: ... Fix: ...``."""
        fix = f". Fix: {self.fix}" if self.fix else ""
        return redact(f"{self.status:<7} {self.check}: {self.detail.rstrip('.')}{fix}")


class Failed(Exception):
    """A probe's finding that is not one of the service's errors: what happened, and the fix."""

    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix


@dataclass(frozen=True)
class Probe:
    """One check: its name, the probes it needs first, and the coroutine that returns what it
    found (raising ``Failed``, a ``ProvisioningError`` or a ``ConfigError`` when it failed)."""

    check: str
    run: Callable[[], Awaitable[str]]
    needs: tuple[str, ...] = field(default=())


def in_thread(function: Callable[[], T]) -> Awaitable[T]:
    """Run a blocking call in a daemon thread: a peer that hangs past the probe's timeout must
    not keep the process (the CLI) from ending, as the default executor's threads would."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(outcome)

    def work() -> None:
        try:
            value = function()
        except BaseException as exc:  # handed to the awaiting probe, which reports it
            error = exc
            settle(lambda: None if future.done() else future.set_exception(error))
            return
        settle(lambda: None if future.done() else future.set_result(value))

    threading.Thread(target=work, name="check", daemon=True).start()
    return future


def result_of(check: str, error: BaseException) -> Result:
    """The FAILED line an error means, in the words its adapter chose."""
    if isinstance(error, Failed):
        return Result(check, "FAILED", error.detail, error.fix)
    if isinstance(error, ProvisioningError):
        return Result(check, "FAILED", error.reason.rstrip("."), error.fix)
    if isinstance(error, ConfigError):
        problem, _, fix = error.problem.partition("; ")
        return Result(check, "FAILED", f"{error.setting} {problem}", fix)
    if isinstance(error, TimeoutError):
        return Result(check, "FAILED", "no answer within the check's time limit",
                      "check that the peer is up and reachable from the app; its own "
                      "timeout setting bounds each try")
    return Result(check, "FAILED", f"unexpected {type(error).__name__}",
                  "run the check again with --verbose and report what it logs")


def probes(settings: Settings) -> list[Probe]:
    """Every probe that applies to these settings, in the order the lines are printed."""
    from . import cloud, premises, relay, storage, vault

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
