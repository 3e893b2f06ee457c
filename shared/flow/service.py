"""The composition root: what one worker needs, built once from settings.

Storage clients are made at build time; the clients of the peers (LDAP, Exchange, Graph,
mail) on first use, so that a timer that needs only the directory never opens Exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from shared.ad.directory import Directory
from shared.config import Settings, load_settings
from shared.log import configure
from shared.secrets import SecretProvider
from shared.store.clients import aio_table_service, queue_service, table_service
from shared.store.cursors import CursorStore
from shared.store.ledger import Ledger
from shared.store.pause import PauseStore
from shared.store.queues import Queues
from shared.store.records import Audit, Outcomes

from .transitions import Policy

if TYPE_CHECKING:
    from azure.data.tables.aio import TableServiceClient as AioTableServiceClient

    from shared.exchange.client import ExchangeClient
    from shared.graph.client import GraphClient
    from shared.mail.sender import Mailer
    from shared.provisioning.licensing import LicenseStep
    from shared.provisioning.mailbox import MailboxStep
    from shared.provisioning.sync import SyncTrigger

SHORTAGES = "shortages"  # one row per SKU and day: the shortage alert goes out once
T = TypeVar("T")
P = ParamSpec("P")


async def io(call: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """A blocking storage or directory call, off the event loop."""
    return await asyncio.to_thread(call, *args, **kwargs)


@dataclass
class LoopClients:
    """What belongs to one event loop: the licence step and its async table client."""

    loop: asyncio.AbstractEventLoop
    license_step: LicenseStep
    tables: AioTableServiceClient
    sync: SyncTrigger | None = None


@dataclass
class Service:
    """What one worker needs; peers' clients open on first use."""

    settings: Settings
    secrets: SecretProvider
    queues: Queues
    ledger: Ledger
    audit: Audit
    outcomes: Outcomes
    cursors: CursorStore
    policy: Policy
    pauses: PauseStore
    _directory: Directory | None = None
    _mailboxes: Pool[MailboxStep] | None = None
    _exchanges: Pool[ExchangeClient] | None = None
    _mailer: Mailer | None = None
    _loop_clients: LoopClients | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, settings: Settings) -> Service:
        tables = table_service(settings.storage)
        tables.create_table_if_not_exists(SHORTAGES)  # written by the licence step's async client
        return cls(
            settings=settings,
            secrets=SecretProvider.from_settings(settings),
            queues=Queues(queue_service(settings.storage)),
            ledger=Ledger(tables),
            audit=Audit(tables),
            outcomes=Outcomes(tables),
            cursors=CursorStore(settings.storage),
            policy=Policy.of(settings),
            pauses=PauseStore(settings.storage),
        )

    def directory(self) -> Directory:
        """The worker's LDAP connection (one, serialised inside ``Directory``)."""
        with self._lock:
            if self._directory is None:
                self._directory = self._new_directory()
            return self._directory

    def _new_directory(self) -> Directory:
        s = self.settings
        return Directory(s.ad, s.provisioning,
                         password=self.secrets.resolve(s.ad.password, setting="AD_PASSWORD"),
                         ca_bundle=s.service.ca_bundle)

    async def adirectory(self) -> Directory:
        """``directory()`` from async code: the first call may read the password from Key
        Vault, a blocking call, so it runs in a thread."""
        if self._directory is not None:
            return self._directory
        return await asyncio.to_thread(self.directory)

    def mailbox_steps(self) -> Pool[MailboxStep]:
        """Mailbox steps, each with its own Exchange session and its own LDAP connection,
        ``EXCHANGE_SESSIONS`` at most: one session runs one cmdlet at a time and one LDAP
        connection one operation, so the steps do not queue behind each other's reads."""
        from shared.exchange.client import ExchangeClient
        from shared.provisioning.mailbox import MailboxStep

        s = self.settings

        def build() -> MailboxStep:
            exchange = ExchangeClient(
                s.exchange,
                password=self.secrets.resolve(s.exchange.password, setting="EXCHANGE_PASSWORD"),
                ca_bundle=s.service.ca_bundle,
            )
            return MailboxStep(s, self._new_directory(), exchange)

        with self._lock:
            if self._mailboxes is None:
                self._mailboxes = Pool(s.exchange.sessions, build)
            return self._mailboxes

    def exchange_clients(self) -> Pool[ExchangeClient]:
        """Exchange sessions for the leaver step (``EXCHANGE_SESSIONS`` at most), beside the
        mailbox steps' own: a leaver never waits behind a new user's mailbox, nor the reverse."""
        from shared.exchange.client import ExchangeClient

        s = self.settings

        def build() -> ExchangeClient:
            return ExchangeClient(
                s.exchange,
                password=self.secrets.resolve(s.exchange.password, setting="EXCHANGE_PASSWORD"),
                ca_bundle=s.service.ca_bundle,
            )

        with self._lock:
            if self._exchanges is None:
                self._exchanges = Pool(s.exchange.sessions, build)
            return self._exchanges

    async def license_step(self) -> LicenseStep:
        """The licence step of the running event loop (its Graph client is per loop)."""
        from shared.provisioning.licensing import LicenseStep, TableShortageLedger

        loop = asyncio.get_running_loop()
        directory = await self.adirectory()
        current = self._loop_clients  # read after the await: no other handler made one since
        if current is None or current.loop is not loop:
            tables = aio_table_service(self.settings.storage)
            step = LicenseStep(self.settings.provisioning, directory, self.graph(),
                               TableShortageLedger(tables.get_table_client(SHORTAGES)))
            current = self._loop_clients = LoopClients(loop, step, tables)
        return current.license_step

    async def sync_trigger(self) -> SyncTrigger:
        """The sync trigger of the running event loop (``SYNC_TRIGGER``; a no-op for none)."""
        from shared.provisioning.sync import SyncTrigger

        await self.license_step()  # the loop's clients exist from here on
        current = self._loop_clients
        assert current is not None
        if current.sync is None:
            s = self.settings
            connect = None
            if s.sync.trigger == "connect":
                from shared.exchange.client import ExchangeClient

                password = await asyncio.to_thread(
                    self.secrets.resolve, s.connect.password, setting="CONNECT_PASSWORD")
                connect = ExchangeClient(s.connect.as_psrp(), password=password,
                                         ca_bundle=s.service.ca_bundle)
            current.sync = SyncTrigger(s, connect, self.graph(), wake=self.queues.wake)
        return current.sync

    def graph(self) -> GraphClient:
        """The Graph client of the running event loop."""
        from shared.graph.client import graph_client

        return graph_client(self.settings)

    def mailer(self) -> Mailer:
        from shared.mail.sender import Mailer

        with self._lock:
            if self._mailer is None:
                self._mailer = Mailer(self.settings, self.secrets)
            return self._mailer

    async def aclose(self) -> None:
        """Close what belongs to the running event loop (Graph, the async table client)."""
        current, self._loop_clients = self._loop_clients, None
        if current is not None:
            if current.sync is not None:
                await current.sync.close()
            await current.tables.close()
        await self.graph().close()

    def close(self) -> None:
        """Close the blocking clients (LDAP, the Exchange sessions)."""
        for closable in (self._mailboxes, self._exchanges, self._directory):
            if closable is not None:
                closable.close()
        self._mailboxes = self._exchanges = self._directory = self._mailer = None
        self._loop_clients = None


class Pool(Generic[T]):
    """Up to ``size`` clients, made on demand; each is used by one thread at a time."""

    def __init__(self, size: int, factory: Callable[[], T]) -> None:
        self._size = size
        self._factory = factory
        self._free: queue.LifoQueue[T] = queue.LifoQueue()
        self._made = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def use(self) -> Iterator[T]:
        item = self._take()
        try:
            yield item
        finally:
            self._free.put(item)

    @contextlib.asynccontextmanager
    async def ause(self) -> AsyncIterator[T]:
        """``use`` from async code: waiting for a free client happens in a thread."""
        item = await asyncio.to_thread(self._take)
        try:
            yield item
        finally:
            self._free.put(item)

    def _take(self) -> T:
        with self._lock:
            make = self._free.empty() and self._made < self._size
            if make:
                self._made += 1
        if not make:
            return self._free.get()
        try:
            return self._factory()
        except BaseException:
            with self._lock:
                self._made -= 1
            raise

    def close(self) -> None:
        while not self._free.empty():
            close: Any = getattr(self._free.get_nowait(), "close", None)
            if callable(close):
                close()


_service: Service | None = None


def service() -> Service:
    """The worker's service, built from the app settings on first use."""
    global _service  # one per worker process, by design
    if _service is None:
        settings = load_settings()
        configure(settings.service.log_level, console=False)
        _service = Service.build(settings)
        _check_in_background(settings)
    return _service


def _check_in_background(settings: Settings) -> None:
    """The deployment check at the worker's start: one ``dependency_checked`` event per
    dependency, from a thread of its own; the start never waits for it or fails with it."""
    from shared.check import start_in_background

    try:
        start_in_background(settings)
    except Exception as exc:  # a check that cannot even start must not stop the worker
        from shared.log import get_logger

        get_logger(__name__).warning("dependency_check_failed", error=type(exc).__name__)
