"""What Entra ID calls things, as plain values: the source anchor of an AD user and a cloud
user. Pure (no I/O): the directory, the Graph client, the licence step and the role planner
share these, so each exists once.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from dataclasses import dataclass


def immutable_id(guid: uuid.UUID) -> str:
    """Entra Connect's source anchor (``onPremisesImmutableId``) for an ``objectGUID``: base64
    of its bytes as AD stores them (the first three fields little-endian, ``bytes_le``)."""
    return base64.b64encode(guid.bytes_le).decode("ascii")


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _items(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


@dataclass(frozen=True)
class CloudUser:
    """A user as Entra ID has it: what the licence step and the role sync read."""

    id: str
    upn: str = ""
    display_name: str = ""
    mail: str | None = None
    usage_location: str | None = None
    proxy_addresses: tuple[str, ...] = ()
    sku_ids: frozenset[uuid.UUID] = frozenset()
    immutable_id: str | None = None
    sync_enabled: bool = False
    sam: str | None = None

    @property
    def synced(self) -> bool:
        """An on-premises user that Entra Connect syncs (``onPremisesSyncEnabled``)."""
        return self.sync_enabled

    @classmethod
    def from_json(cls, user: Mapping[str, object]) -> CloudUser:
        """From Graph's JSON for a user; properties Graph left out are empty, never an error."""
        skus = frozenset(
            uuid.UUID(str(item["skuId"])) for item in _items(user.get("assignedLicenses"))
            if isinstance(item, Mapping) and item.get("skuId")
        )
        return cls(
            id=str(user["id"]),
            upn=str(user.get("userPrincipalName") or ""),
            display_name=str(user.get("displayName") or ""),
            mail=_text(user.get("mail")),
            usage_location=_text(user.get("usageLocation")),
            proxy_addresses=tuple(str(p) for p in _items(user.get("proxyAddresses"))),
            sku_ids=skus,
            immutable_id=_text(user.get("onPremisesImmutableId")),
            sync_enabled=user.get("onPremisesSyncEnabled") is True,
            sam=_text(user.get("onPremisesSamAccountName")),
        )
