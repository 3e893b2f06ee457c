"""The operator's pause (``python -m shared.cli pause``): which halves of the service are
paused, one row per half in the ``cursors`` table (partition ``pause``), where the CLI and every
Functions instance read it. A paused half polls nothing and changes nothing: its timers return
at once and its queue handlers put each message back, delayed, untouched
(``shared.flow.handlers``); ``resume`` deletes the row."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from azure.data.tables import TableClient, UpdateMode

from shared.config import StorageSettings
from shared.store.clients import table_service
from shared.store.cursors import TABLE
from shared.store.messages import Step

PARTITION = "pause"
# How long a worker trusts what it read (s): a pause reaches every instance within this.
FRESH = 30.0


class Half(StrEnum):
    """What a pause stops: the first script's job, or the second's."""

    PROVISIONING = "provisioning"
    ROLES = "roles"


HALF_OF_STEP = {Step.MAILBOX: Half.PROVISIONING, Step.LICENSE: Half.PROVISIONING,
                Step.ROLE: Half.ROLES, Step.LEAVER: Half.PROVISIONING}
# The Functions host's own switch (AzureWebJobs.<function>.Disabled), per half: the functions
# of function_app.py that poll or change something. The poison functions only record.
FUNCTIONS = {Half.PROVISIONING: ("poll_provision_group", "reconcile", "mailbox", "license",
                                  "leavers_cycle", "leavers"),
             Half.ROLES: ("plan_roles", "roles")}


def halves(*, roles: bool, provisioning: bool) -> tuple[Half, ...]:
    """The halves a ``pause``/``resume`` with these flags names: both when it names none."""
    chosen = tuple(h for h, on in ((Half.PROVISIONING, provisioning), (Half.ROLES, roles)) if on)
    return chosen or (Half.PROVISIONING, Half.ROLES)


@dataclass(frozen=True)
class Paused:
    """One paused half: since when, by whom, why."""

    half: Half
    since: str
    by: str = ""
    reason: str = ""


class PauseStore:
    """The pause rows; ``paused(half)`` is cached for ``FRESH`` s per process."""

    def __init__(self, storage: StorageSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._storage = storage
        self._table: TableClient | None = None
        self._clock = clock
        self._cache: tuple[float, dict[Half, Paused]] | None = None

    def _client(self) -> TableClient:
        if self._table is None:
            self._table = table_service(self._storage).create_table_if_not_exists(TABLE)
        return self._table

    def read(self) -> dict[Half, Paused]:
        """Every paused half, read now."""
        found = {}
        for e in self._client().query_entities("PartitionKey eq @p", parameters={"p": PARTITION}):
            if e["RowKey"] in Half._value2member_map_:
                half = Half(e["RowKey"])
                found[half] = Paused(half, str(e.get("since", "")), str(e.get("by", "")),
                                     str(e.get("reason", "")))
        self._cache = (self._clock(), found)
        return found

    def paused(self, half: Half) -> Paused | None:
        """Whether ``half`` is paused, as read at most ``FRESH`` s ago."""
        if self._cache is None or self._clock() - self._cache[0] >= FRESH:
            return self.read().get(half)
        return self._cache[1].get(half)

    def pause(self, half: Half, *, by: str = "", reason: str = "") -> None:
        """Pause ``half`` (again: the first time stands)."""
        if half in self.read():
            return
        self._client().upsert_entity(
            {"PartitionKey": PARTITION, "RowKey": half.value,
             "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
             "by": by, "reason": reason}, mode=UpdateMode.REPLACE)
        self._cache = None

    def resume(self, half: Half) -> bool:
        """Resume ``half``; False when it was not paused."""
        was = half in self.read()
        self._client().delete_entity(PARTITION, half.value)  # no error when there is none
        self._cache = None
        return was
