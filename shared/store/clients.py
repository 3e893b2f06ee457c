"""Clients for Azure Storage queues and tables: a connection string on the lab (Azurite),
the app's managed identity in Azure (``AzureWebJobsStorage__*Uri`` + ``__clientId``)."""

from __future__ import annotations

import requests
from azure.core.credentials import TokenCredential
from azure.data.tables import TableServiceClient
from azure.data.tables.aio import TableServiceClient as AioTableServiceClient
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from azure.identity.aio import DefaultAzureCredential as AioDefaultAzureCredential
from azure.identity.aio import ManagedIdentityCredential as AioManagedIdentityCredential
from azure.storage.queue import QueueServiceClient
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from shared.config import StorageSettings
from shared.log import register_secret

# The most threads that call the storage clients at once: run --once's executor (asyncio's
# default executor, the one the Functions worker uses, never has more than 32 either).
THREADS = 32


def _connection(storage: StorageSettings) -> str:
    """The connection string, registered as a secret first (whole, and the account key or
    SAS token in it), so that no log line or mail can carry it."""
    assert storage.connection is not None
    value = storage.connection.get_secret_value()
    register_secret(value)
    for part in value.split(";"):
        name, _, secret = part.partition("=")
        if name.strip().lower() in ("accountkey", "sharedaccesssignature"):
            register_secret(secret.strip())
    return value


def _session() -> requests.Session:
    """An HTTP session that keeps a connection per thread. The SDK's own keeps requests'
    default of 10 per host: with more threads at once, urllib3 closes the others after each
    request ("Connection pool is full, discarding connection") and the next one connects
    again. The session is the client's: closing the client closes it."""
    session = requests.Session()
    # No retries in the adapter, as in the SDK's own session: its retry policy retries.
    adapter = HTTPAdapter(pool_maxsize=THREADS,
                          max_retries=Retry(total=False, redirect=False, raise_on_status=False))
    for scheme in ("http://", "https://"):
        session.mount(scheme, adapter)
    return session


def _credential(storage: StorageSettings) -> TokenCredential:
    if storage.client_id:
        return ManagedIdentityCredential(client_id=storage.client_id)
    return DefaultAzureCredential()


def table_service(storage: StorageSettings) -> TableServiceClient:
    """A table service client for the ledger, audit, cursors and role plans."""
    if storage.connection is not None:
        return TableServiceClient.from_connection_string(_connection(storage),
                                                         session=_session())
    assert storage.table_service_uri is not None  # guaranteed by StorageSettings
    return TableServiceClient(storage.table_service_uri, credential=_credential(storage),
                              session=_session())


def queue_service(storage: StorageSettings) -> QueueServiceClient:
    """A queue service client; messages are base64 text, as host.json declares."""
    if storage.connection is not None:
        return QueueServiceClient.from_connection_string(_connection(storage),
                                                         session=_session())
    assert storage.queue_service_uri is not None
    return QueueServiceClient(storage.queue_service_uri, credential=_credential(storage),
                              session=_session())


def aio_table_service(storage: StorageSettings) -> AioTableServiceClient:
    """The async table client, for code on the event loop (the licence step's shortage rows)."""
    if storage.connection is not None:
        return AioTableServiceClient.from_connection_string(_connection(storage))
    assert storage.table_service_uri is not None
    credential = (
        AioManagedIdentityCredential(client_id=storage.client_id)
        if storage.client_id
        else AioDefaultAzureCredential()
    )
    return AioTableServiceClient(storage.table_service_uri, credential=credential)
