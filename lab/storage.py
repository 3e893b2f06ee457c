"""Storage peer: Azurite (npm package ``azurite``) for queues and tables, on loopback.

In memory: the lab's directory starts afresh at every ``up``, so queues, ledger and cursors
must too, or they would describe users that no longer exist. ``LAB_STORAGE_PERSIST=1`` keeps
them in the lab folder instead (``storage/``, emptied at ``up``), so that ``restart`` keeps
every queue and table, as a restarted Azure Storage front end does."""

from __future__ import annotations

import os
import shutil

from . import system
from .core import Lab, LabError, free_port, wait_for_port

# Azurite's documented development account; public, identical on every machine.
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def connection_string(queue_port: int, table_port: int, blob_port: int) -> str:
    host = "http://127.0.0.1"
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint={host}:{blob_port}/{ACCOUNT};"
        f"QueueEndpoint={host}:{queue_port}/{ACCOUNT};"
        f"TableEndpoint={host}:{table_port}/{ACCOUNT};"
    )


def start(lab: Lab) -> None:
    blob, queue, table = free_port(), free_port(), free_port()
    persist = os.environ.get("LAB_STORAGE_PERSIST") == "1"
    if persist:
        shutil.rmtree(lab.root / "storage", ignore_errors=True)
    lab.settings["LAB_STORAGE_PERSIST"] = "1" if persist else ""
    _run(lab, blob, queue, table)
    lab.settings["LAB_STORAGE_BLOB_PORT"] = str(blob)
    lab.endpoint("storage", "queue", f"http://127.0.0.1:{queue}")
    lab.endpoint("storage", "table", f"http://127.0.0.1:{table}")
    lab.settings["AzureWebJobsStorage"] = connection_string(queue, table, blob)
    lab.settings["LAB_STORAGE_QUEUE_PORT"] = str(queue)
    lab.settings["LAB_STORAGE_TABLE_PORT"] = str(table)


def _run(lab: Lab, blob: int, queue: int, table: int) -> None:
    azurite = system.azurite()
    if not azurite.exists():
        raise LabError(f"storage: Azurite is not in {azurite.parent}; fix: bash scripts/setup")
    keep = (["--location", str(lab.path("storage", "data").parent)]
            if lab.settings.get("LAB_STORAGE_PERSIST") else ["--inMemoryPersistence"])
    proc = lab.spawn(
        "storage",
        [
            str(azurite), "--silent", "--skipApiVersionCheck", "--loose", *keep,
            "--blobHost", "127.0.0.1", "--blobPort", str(blob),
            "--queueHost", "127.0.0.1", "--queuePort", str(queue),
            "--tableHost", "127.0.0.1", "--tablePort", str(table),
        ],
    )
    for port in (blob, queue, table):
        wait_for_port("127.0.0.1", port, peer="storage", lab=lab, proc=proc)


def restart(lab: Lab) -> None:
    """Stop Azurite and start it again on the same ports; with ``LAB_STORAGE_PERSIST=1`` every
    queue and table is still there (in memory, nothing is)."""
    ports = (int(lab.settings[f"LAB_STORAGE_{kind}_PORT"]) for kind in ("BLOB", "QUEUE", "TABLE"))
    lab.stop("storage")
    _run(lab, *ports)
    lab.save()
