"""Durable cursors in Azure Table storage: the DirSync cookie of each polled group, and the
report timer's position. A cursor moves only after the work it covers is done (queued, mailed),
so a restart neither misses nor replays changes."""

from __future__ import annotations

import urllib.parse

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared.config import StorageSettings
from shared.store.clients import table_service

TABLE = "cursors"
PARTITION = "cursor"


def _row_key(name: str) -> str:
    # RowKey may not hold / \ # ? or control characters; quote keeps every other name readable.
    return urllib.parse.quote(name, safe=" !$&'()*+,;=:@-._~")


class CursorStore:
    """``get(name) -> bytes | None`` and ``put(name, value)``, one table row per cursor."""

    def __init__(self, storage: StorageSettings) -> None:
        self._storage = storage
        self._table: TableClient | None = None

    def _client(self) -> TableClient:
        if self._table is None:
            self._table = table_service(self._storage).create_table_if_not_exists(TABLE)
        return self._table

    def get(self, name: str) -> bytes | None:
        """The cursor's last value, or None if it was never set."""
        try:
            entity = self._client().get_entity(PARTITION, _row_key(name))
        except ResourceNotFoundError:
            return None
        value = entity.get("value")
        return bytes(value) if value is not None else None

    def put(self, name: str, value: bytes) -> None:
        """Store the cursor's new value, replacing the old one."""
        entity = {"PartitionKey": PARTITION, "RowKey": _row_key(name), "value": bytes(value)}
        self._client().upsert_entity(entity, mode=UpdateMode.REPLACE)

    def delete(self, name: str) -> None:
        """Forget the cursor: the next DirSync poll starts with a full read."""
        self._client().delete_entity(PARTITION, _row_key(name))
