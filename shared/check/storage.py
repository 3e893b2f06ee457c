"""Storage: the work queues (and their poison twins) and the service's tables, read with the
configured connection string or identity. Nothing is created, sent or written: a queue or
table that does not exist yet is said so (the app creates it at its first start)."""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice
from typing import Any

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
)

from shared.config import Settings
from shared.roles.plans import PLANS_TABLE
from shared.store.clients import queue_service, table_service
from shared.store.cursors import TABLE as CURSORS
from shared.store.ledger import AUDIT, LEDGER, OUTCOMES
from shared.store.messages import QUEUES, poison_queue

from .probe import Failed, Probe, in_thread

SHORTAGES = "shortages"  # shared/flow/service.py's; the check does not import the flow
TABLES = (LEDGER, AUDIT, OUTCOMES, CURSORS, PLANS_TABLE, SHORTAGES)


def _account(settings: Settings) -> str:
    s = settings.storage
    return "the connection string's account" if s.connection is not None else (
        f"{s.queue_service_uri} / {s.table_service_uri}")


def _refused(what: str, exc: HttpResponseError, role: str) -> Failed:
    code = getattr(exc, "error_code", None) or f"HTTP {exc.status_code}"
    return Failed(f"{what} was refused ({code})",
                  f"give the app's identity '{role}' on the storage account (infra/ does), or "
                  "correct AzureWebJobsStorage; a new role assignment takes minutes to apply")


def _unreachable(what: str, exc: Exception) -> Failed:
    return Failed(f"{what} could not be reached ({type(exc).__name__})",
                  "check the storage account's name, its firewall and the app's network "
                  "(VNet integration, private endpoints)")


def _read_each(settings: Settings, service: Any, kind: str, names: list[str],
               read: Callable[[str], object], role: str) -> str:
    """Read each of ``names`` with ``read``, counting those not created yet; one refusal or an
    unreachable service fails the line. Closes ``service``."""
    noun = kind.removesuffix("s")
    missing = []
    try:
        for name in names:
            try:
                read(name)
            except ResourceNotFoundError:
                missing.append(name)
    except (ClientAuthenticationError, HttpResponseError) as exc:
        raise _refused(f"reading {kind} in {_account(settings)}", exc, role) from None
    except ServiceRequestError as exc:
        raise _unreachable(f"the {noun} service of {_account(settings)}", exc) from None
    finally:
        service.close()
    later = f"; not created yet: {', '.join(missing)}" if missing else ""
    return f"{len(names) - len(missing)} of {len(names)} {kind} read{later}"


def queues(settings: Settings) -> str:
    """Read each queue's properties; blocking."""
    service = queue_service(settings.storage)
    names = [n for q in QUEUES.values() for n in (q, poison_queue(q))]
    return _read_each(settings, service, "queues", names,
                      lambda name: service.get_queue_client(name).get_queue_properties(),
                      "Storage Queue Data Contributor")


def tables(settings: Settings) -> str:
    """Read one entity of each table; blocking."""
    service = table_service(settings.storage)
    return _read_each(settings, service, "tables", list(TABLES),
                      lambda name: list(islice(service.get_table_client(name).list_entities(
                          results_per_page=1, select=["PartitionKey"]), 1)),
                      "Storage Table Data Contributor")


def probes(settings: Settings) -> list[Probe]:
    """The queues and the tables, one line each."""

    async def run_queues() -> str:
        return await in_thread(lambda: queues(settings))

    async def run_tables() -> str:
        return await in_thread(lambda: tables(settings))

    return [Probe("storage queues", run_queues), Probe("storage tables", run_tables)]
