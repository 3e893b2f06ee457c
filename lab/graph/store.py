"""The lab tenant, in memory in the Graph process: users, deleted users, SKUs.

Users are kept as Graph JSON objects (camelCase property names), so a handler can answer with
them as they are. All access happens on the server's event loop, so nothing here locks; the
sync engine reads LDAP in a thread and applies its changes on the loop.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

JSON = dict[str, Any]

# Real SKU and service-plan ids, as Microsoft's "Product names and service plan identifiers
# for licensing" lists them.
EXCHANGE_S_ENTERPRISE = ("efb87545-963c-4e0d-99df-69c6916d9eb0", "EXCHANGE_S_ENTERPRISE")
E3_PLANS = (
    EXCHANGE_S_ENTERPRISE,
    ("5dbe027f-2339-4123-9542-606e4d348a72", "SHAREPOINTENTERPRISE"),
    ("e95bec33-7c88-4a70-8e19-b10bd9d0c014", "SHAREPOINTWAC"),
    ("43de0ff5-c92c-492b-9116-175376d08c38", "OFFICESUBSCRIPTION"),
    ("0feaeb32-d00e-4d66-bd5a-43b5b83db82c", "MCOSTANDARD"),
    ("57ff2da0-773e-42df-b2af-ffb7a2317929", "TEAMS1"),
    ("7547a3fe-08ee-4ccb-b430-5077c5041653", "YAMMER_ENTERPRISE"),
    ("bea4c11e-220a-4e6d-8eb8-8ea15d019f90", "RMS_S_ENTERPRISE"),
    ("2789c901-c14e-48ab-a76a-be334d9d793a", "FORMS_PLAN_E3"),
    ("b737dad2-2f6c-4c65-90e3-ca563267e8b9", "PROJECTWORKMANAGEMENT"),
    ("a23b959c-7ce8-4e57-9140-b90eb88a9e97", "SWAY"),
)
SKUS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    # part number: (skuId, service plans)
    "ENTERPRISEPACK": ("6fd2c87f-b296-42f0-b197-1e91e994b900", E3_PLANS),
    "EXCHANGEENTERPRISE": ("19ec0d23-8335-4cbd-94ac-6050e30712fa", (EXCHANGE_S_ENTERPRISE,)),
    # an add-on no LICENSE_MAP names: what LICENSE_REPLACE=managed keeps (issue 29)
    "POWER_BI_PRO": ("f8a1db68-be16-40ed-86d5-cb42ce701560",
                     (("70d33638-9c74-4d01-bfd3-562de28bd4ba", "BI_AZURE_P2"),)),
}

# Graph's default property set for a user; everything else only comes with $select.
DEFAULT_USER_PROPERTIES = (
    "businessPhones", "displayName", "givenName", "jobTitle", "mail", "mobilePhone",
    "officeLocation", "preferredLanguage", "surname", "userPrincipalName", "id",
)

# Properties Entra Connect masters for synced users; Graph refuses to change them.
ON_PREMISES_MASTERED = frozenset(
    {
        "displayName", "givenName", "surname", "mail", "mailNickname", "userPrincipalName",
        "proxyAddresses", "onPremisesImmutableId", "onPremisesSamAccountName",
        "onPremisesExtensionAttributes", "accountEnabled", "jobTitle", "department",
    }
)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Sku:
    part_number: str
    sku_id: str
    plans: tuple[tuple[str, str], ...]
    prepaid: int
    consumed: int = 0

    def as_json(self, tenant_id: str) -> JSON:
        return {
            "accountName": "lab",
            "accountId": tenant_id,
            "appliesTo": "User",
            "capabilityStatus": "Enabled",
            "consumedUnits": self.consumed,
            "id": f"{tenant_id}_{self.sku_id}",
            "prepaidUnits": {"enabled": self.prepaid, "suspended": 0, "warning": 0,
                             "lockedOut": 0},
            "servicePlans": [
                {"servicePlanId": pid, "servicePlanName": name,
                 "provisioningStatus": "Success", "appliesTo": "User"}
                for pid, name in self.plans
            ],
            "skuId": self.sku_id,
            "skuPartNumber": self.part_number,
            "subscriptionIds": [str(uuid.uuid5(uuid.NAMESPACE_URL, self.sku_id))],
        }


@dataclass
class Tenant:
    """The lab tenant. ``users`` by Graph id; indexes are rebuilt on every change."""

    tenant_id: str
    domain: str  # <tenant>.onmicrosoft.com
    routing_domain: str  # <tenant>.mail.onmicrosoft.com
    users: dict[str, JSON] = field(default_factory=dict)
    deleted: dict[str, JSON] = field(default_factory=dict)
    skus: dict[str, Sku] = field(default_factory=dict)  # by skuId
    by_upn: dict[str, str] = field(default_factory=dict)
    by_immutable: dict[str, str] = field(default_factory=dict)
    # UPNs of synced users given Exchange Online without a routing address (a second mailbox)
    cloud_mailboxes: set[str] = field(default_factory=set)
    # Exchange Online mailboxes by user id (lab.graph.mailboxes), and the UPNs whose Exchange
    # licence was removed while their mailbox was a user mailbox (the mail would be lost)
    mailboxes: dict[str, JSON] = field(default_factory=dict)
    unlicensed_user_mailboxes: set[str] = field(default_factory=set)
    # group-based licensing: user id -> skuId -> the group it is inherited from; and the
    # (user id, skuId) pairs also assigned directly
    inherited: dict[str, dict[str, str]] = field(default_factory=dict)
    direct_also: set[tuple[str, str]] = field(default_factory=set)

    # -- users -------------------------------------------------------------------------
    def size(self) -> int:
        return len(self.users)

    def find(self, key: str) -> JSON | None:
        """A user by id or userPrincipalName (case-insensitive), as Graph resolves users/{key}."""
        user = self.users.get(key.lower())
        if user is None and key.lower() in self.by_upn:
            user = self.users.get(self.by_upn[key.lower()])
        return user

    def add(self, properties: JSON) -> JSON:
        """Create a user from Graph properties; returns it. UPN must be unique."""
        upn = str(properties["userPrincipalName"])
        if upn.lower() in self.by_upn:
            raise ValueError(f"Another object with the same value for property "
                             f"userPrincipalName already exists: {upn}")
        user: JSON = {
            "id": str(uuid.uuid4()),
            "accountEnabled": True,
            "businessPhones": [],
            "displayName": upn.split("@")[0],
            "givenName": None, "surname": None, "jobTitle": None, "mail": None,
            "mobilePhone": None, "officeLocation": None, "preferredLanguage": None,
            "mailNickname": upn.split("@")[0],
            "usageLocation": None,
            "assignedLicenses": [],
            "assignedPlans": [],
            "licenseAssignmentStates": [],
            "proxyAddresses": [],
            "onPremisesImmutableId": None,
            "onPremisesSyncEnabled": None,
            "onPremisesSamAccountName": None,
            "onPremisesDistinguishedName": None,
            "onPremisesDomainName": None,
            "onPremisesSecurityIdentifier": None,
            "onPremisesLastSyncDateTime": None,
            "onPremisesExtensionAttributes": {f"extensionAttribute{i}": None
                                              for i in range(1, 16)},
            "createdDateTime": now_iso(),
            "userType": "Member",
        }
        user.update(copy.deepcopy(properties))
        self.users[user["id"]] = user
        self._index(user)
        return user

    def update(self, user: JSON, changes: JSON) -> None:
        self._unindex(user)
        user.update(copy.deepcopy(changes))
        self._index(user)

    def soft_delete(self, user: JSON) -> None:
        """Move to deleted items, as Graph does; the licences go back to the pool."""
        self._unindex(user)
        self.users.pop(user["id"], None)
        for assigned in user["assignedLicenses"]:
            sku = self.skus.get(assigned["skuId"])
            if sku:
                sku.consumed -= 1
        user["deletedDateTime"] = now_iso()
        self.deleted[user["id"]] = user

    def _index(self, user: JSON) -> None:
        self.by_upn[str(user["userPrincipalName"]).lower()] = user["id"]
        if user.get("onPremisesImmutableId"):
            self.by_immutable[user["onPremisesImmutableId"]] = user["id"]

    def _unindex(self, user: JSON) -> None:
        self.by_upn.pop(str(user["userPrincipalName"]).lower(), None)
        if user.get("onPremisesImmutableId"):
            self.by_immutable.pop(user["onPremisesImmutableId"], None)

    # -- licences ----------------------------------------------------------------------
    def sku_by_part(self, part_number: str) -> Sku | None:
        return next((s for s in self.skus.values() if s.part_number == part_number), None)


def seed_tenant(tenant_id: str, name: str, units: dict[str, int],
                routing_domain: str = "") -> Tenant:
    """The tenant the lab starts with: the SKUs and two cloud-only accounts."""
    domain = f"{name}.onmicrosoft.com"
    tenant = Tenant(tenant_id=tenant_id, domain=domain,
                    routing_domain=routing_domain or f"{name}.mail.onmicrosoft.com")
    for part, (sku_id, plans) in SKUS.items():
        tenant.skus[sku_id] = Sku(part, sku_id, plans, prepaid=units.get(part, 0))
    tenant.add({"userPrincipalName": f"breakglass@{domain}", "displayName": "Break Glass",
                "mailNickname": "breakglass"})
    tenant.add({"userPrincipalName": f"cloudadmin@{domain}", "displayName": "Cloud Admin",
                "mailNickname": "cloudadmin", "usageLocation": "US"})
    return tenant
