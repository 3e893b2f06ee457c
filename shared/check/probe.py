"""What every probe of the check shares: a probe, its result line, the finding it raises, and
the daemon thread a blocking call runs in."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from shared.errors import ConfigError, ProvisioningError
from shared.log import redact

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
