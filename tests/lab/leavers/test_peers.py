"""The leavers' thin adapters (``shared.leavers.peers``) against the lab's Exchange, AD and
Graph: converting a remote mailbox the hybrid way, the cloud type following only after a sync
cycle, licence removal and Graph's refusal for a group-inherited licence, and the mailbox facts.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import httpx
import pytest
from ldap3 import BASE, MODIFY_REPLACE, Connection

from lab.core import Lab
from shared.config import Settings
from shared.errors import PermanentError
from shared.exchange.client import ExchangeClient
from shared.graph.client import GraphClient
from shared.leavers import peers
from shared.leavers.peers import MailboxFacts, MailboxType

pytestmark = pytest.mark.lab

E3 = "6fd2c87f-b296-42f0-b197-1e91e994b900"
EXO2 = "19ec0d23-8335-4cbd-94ac-6050e30712fa"
T = TypeVar("T")


class Cloud:
    """The lab Graph as these tests drive it: controls, raw Graph calls, the service's client."""

    def __init__(self, lab: Lab, settings: Settings) -> None:
        self.settings = settings
        self.url = lab.settings["LAB_GRAPH_URL"]
        self.control = lab.settings["LAB_GRAPH_CONTROL_URL"]
        self.http = httpx.Client(timeout=60, headers={
            "Authorization": f"Bearer {lab.settings['AZURE_STATIC_TOKEN']}"})
        self.defaults = self.lab("GET", "config")

    def lab(self, method: str, name: str, body: dict[str, Any] | None = None) -> Any:
        response = self.http.request(method, f"{self.control}/{name}", json=body)
        response.raise_for_status()
        return response.json()

    def graph(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, f"{self.url}/{path}", **kwargs)

    def run(self, call: Callable[[GraphClient], Awaitable[T]]) -> T:
        """``call`` with a fresh service Graph client (one per event loop)."""
        async def go() -> T:
            client = GraphClient(self.settings.graph, self.settings.identity,
                                 self.settings.service.ca_bundle)
            try:
                return await call(client)
            finally:
                await client.close()
        return asyncio.run(go())

    def licensed_user(self, *skus: str) -> tuple[str, str]:
        """A cloud user holding ``skus`` (so with an Exchange Online mailbox); (id, upn)."""
        upn = f"leaver-{uuid.uuid4().hex[:8]}@o365lab.example"
        user_id = self.lab("POST", "users", {"users": [{"userPrincipalName": upn,
                                                        "usageLocation": "DE"}]})["ids"][0]
        self.assign(user_id, add=list(skus))
        return user_id, upn

    def assign(self, user_id: str, add: Sequence[str] = (),
               remove: Sequence[str] = ()) -> httpx.Response:
        return self.graph("POST", f"users/{user_id}/assignLicense", json={
            "addLicenses": [{"skuId": s, "disabledPlans": []} for s in add],
            "removeLicenses": list(remove)})

    def consumed(self, sku_id: str) -> int:
        skus = self.graph("GET", "subscribedSkus").json()["value"]
        return int(next(s["consumedUnits"] for s in skus if s["skuId"] == sku_id))

    def free_units(self) -> None:
        skus = self.graph("GET", "subscribedSkus").json()["value"]
        self.lab("POST", "units", {s["skuPartNumber"]: s["consumedUnits"] + 25 for s in skus})


@pytest.fixture
def cloud(lab: Lab, settings: Settings) -> Iterator[Cloud]:
    graph = Cloud(lab, settings)
    graph.free_units()
    graph.lab("POST", "stats/reset")
    yield graph
    graph.lab("POST", "reports/settings", {"displayConcealedNames": False})
    graph.lab("POST", "config", graph.defaults)


@pytest.fixture
def exchange(settings: Settings, lab: Lab) -> Iterator[ExchangeClient]:
    client = ExchangeClient(settings.exchange, password=lab.settings["LAB_EXCHANGE_PASSWORD"],
                            ca_bundle=settings.service.ca_bundle)
    yield client
    client.close()


EXCHANGE_ATTRIBUTES = ("msExchRemoteRecipientType", "msExchRecipientTypeDetails",
                       "msExchRecipientDisplayType", "msExchHideFromAddressLists")


def read(ad: Connection, dn: str) -> dict[str, Any]:
    ad.search(dn, "(objectClass=*)", BASE, attributes=list(EXCHANGE_ATTRIBUTES))
    entry = ad.entries[0]
    return {name: entry[name].value for name in EXCHANGE_ATTRIBUTES}


def remote_user(make_user: Callable[..., Any], exchange: ExchangeClient,
                settings: Settings) -> Any:
    user = make_user()
    exchange.enable_remote_mailbox(str(user.guid),
                                   f"{user.sam}@{settings.provisioning.routing_domain}")
    return user


def test_convert_writes_the_documented_attributes_once(make_user, exchange, ad_admin,
                                                       settings) -> None:
    """Set-RemoteMailbox -Type Shared -HiddenFromAddressListsEnabled $true writes what Exchange
    writes for a remote shared mailbox; a second conversion changes nothing and says so."""
    user = remote_user(make_user, exchange, settings)
    assert MailboxType.USER == peers.premises_type(exchange, str(user.guid))

    first = peers.convert_to_shared(exchange, str(user.guid), hide=True)
    after_first = read(ad_admin, user.dn)
    second = peers.convert_to_shared(exchange, str(user.guid), hide=True)

    assert (True, False) == (first, second)
    assert {"msExchRemoteRecipientType": 97, "msExchRecipientTypeDetails": 34359738368,
            "msExchRecipientDisplayType": -2147483642,
            "msExchHideFromAddressLists": True} == after_first
    assert after_first == read(ad_admin, user.dn)
    mailbox = exchange.get_remote_mailbox(str(user.guid))
    assert mailbox is not None
    assert ("RemoteSharedMailbox", "ProvisionMailbox, SharedMailbox", True) == (
        mailbox.recipient_type_details, mailbox.remote_recipient_type, mailbox.hidden)
    assert MailboxType.SHARED == peers.premises_type(exchange, str(user.guid))


def test_convert_without_hiding_and_back_to_regular(make_user, exchange, ad_admin,
                                                    settings) -> None:
    """Without ``hide`` the address-list flag is left alone; -Type Regular restores the user
    mailbox's values, keeping the provisioning bit (a migrated mailbox would keep Migrated)."""
    user = remote_user(make_user, exchange, settings)
    assert peers.convert_to_shared(exchange, str(user.guid), hide=False)
    assert read(ad_admin, user.dn)["msExchHideFromAddressLists"] is None

    result = exchange.invoke("Set-RemoteMailbox", [("Identity", str(user.guid)),
                                                   ("Type", "Regular")])

    assert (False, []) == (result.failed, result.errors)
    assert {"msExchRemoteRecipientType": 1, "msExchRecipientTypeDetails": 2147483648,
            "msExchRecipientDisplayType": -2147483642,
            "msExchHideFromAddressLists": None} == read(ad_admin, user.dn)


def test_set_remote_mailbox_refuses_as_exchange_does(make_user, exchange, settings) -> None:
    """Exchange's errors: an unknown -Type, a string for the Boolean, a user without a remote
    mailbox (the adapter's PermanentError names the user and the fix)."""
    user = remote_user(make_user, exchange, settings)
    bogus = exchange.invoke("Set-RemoteMailbox", [("Identity", str(user.guid)),
                                                  ("Type", "Bogus")])
    text = exchange.invoke("Set-RemoteMailbox", [("Identity", str(user.guid)),
                                                 ("HiddenFromAddressListsEnabled", "False")])
    plain = make_user()

    assert "Regular, Room, Equipment, Shared" in str(bogus.errors[0])
    assert "Boolean parameters accept only Boolean values" in str(text.errors[0])
    with pytest.raises(PermanentError) as caught:
        peers.convert_to_shared(exchange, str(plain.guid), hide=False)
    assert str(plain.guid) in str(caught.value)
    assert "Fix:" in str(caught.value)
    nobody = exchange.invoke("Set-RemoteMailbox", [("Identity", str(plain.guid)),
                                                   ("Type", "Shared")])
    assert "couldn't be found" in str(nobody.errors[0])


def wait_synced(cloud: Cloud, guid: uuid.UUID) -> str:
    from shared.entra import immutable_id

    for _ in range(60):
        cloud.lab("POST", "sync", {"wait": True})
        found = cloud.graph("GET", "users", params={
            "$filter": f"onPremisesImmutableId eq '{immutable_id(guid)}'", "$count": "true",
            "$select": "id"}, headers={"ConsistencyLevel": "eventual"}).json()["value"]
        if found:
            return str(found[0]["id"])
    raise AssertionError(f"{guid} never synced")


def test_cloud_type_follows_only_after_a_sync_cycle(make_user, exchange, cloud,
                                                    settings) -> None:
    """The cloud mailbox stays a user mailbox after the on-premises conversion until a sync
    cycle carries msExchRemoteRecipientType to Exchange Online; then it is shared."""
    cloud.lab("POST", "config", {"sync_interval_seconds": 3600, "sync_delay_seconds": 0.5})
    user = remote_user(make_user, exchange, settings)
    user_id = wait_synced(cloud, user.guid)
    cloud.graph("PATCH", f"users/{user_id}", json={"usageLocation": "DE"})
    assert cloud.assign(user_id, add=[E3]).status_code == 200

    before = cloud.run(lambda g: peers.cloud_type(g, user_id))
    peers.convert_to_shared(exchange, str(user.guid), hide=False)
    not_yet = cloud.run(lambda g: peers.cloud_type(g, user_id))
    cloud.lab("POST", "sync", {"wait": True})
    after = cloud.run(lambda g: peers.cloud_type(g, user_id))

    assert (MailboxType.USER, MailboxType.USER, MailboxType.SHARED) == (before, not_yet, after)
    settings_json = cloud.graph("GET", f"users/{user_id}/mailboxSettings").json()
    assert "shared" == settings_json["userPurpose"]


def test_no_cloud_mailbox_is_none_with_graphs_error(cloud) -> None:
    """A user never given Exchange Online has no mailbox: Graph's 404
    MailboxNotEnabledForRESTAPI, which cloud_type reads as NONE."""
    user_id, _ = cloud.licensed_user()

    raw = cloud.graph("GET", f"users/{user_id}/mailboxSettings/userPurpose")

    assert (404, "MailboxNotEnabledForRESTAPI") == (raw.status_code, raw.json()["error"]["code"])
    assert MailboxType.NONE == cloud.run(lambda g: peers.cloud_type(g, user_id))


def test_mailbox_settings_need_the_permission(cloud) -> None:
    """Without MailboxSettings.Read (or ReadWrite) in the token Graph answers 403."""
    user_id, _ = cloud.licensed_user(E3)
    token = cloud.lab("POST", "token", {"roles": ["User.Read.All"]})["token"]

    denied = httpx.get(f"{cloud.url}/users/{user_id}/mailboxSettings/userPurpose",
                       headers={"Authorization": f"Bearer {token}"}, timeout=30)
    report = httpx.get(f"{cloud.url}/{peers.REPORT}",
                       headers={"Authorization": f"Bearer {token}"}, timeout=30)

    assert (403, 403) == (denied.status_code, report.status_code)


def test_removing_a_licence_frees_a_unit_and_a_rerun_does_nothing(cloud) -> None:
    """One assignLicense removes the SKU and gives its unit back; a second call finds nothing
    left to remove and sends no assignLicense."""
    user_id, _ = cloud.licensed_user(EXO2)
    before = cloud.consumed(EXO2)
    cloud.lab("POST", "stats/reset")

    cloud.run(lambda g: peers.remove_licences(g, user_id, [EXO2.upper()]))
    cloud.run(lambda g: peers.remove_licences(g, user_id, [EXO2]))

    assert before - 1 == cloud.consumed(EXO2)
    held = cloud.graph("GET", f"users/{user_id}", params={"$select": "assignedLicenses"})
    assert [] == held.json()["assignedLicenses"]
    stats = cloud.lab("GET", "stats")["paths"]
    assert 1 == stats["POST users/{id}/assignLicense"]["requests"]


def test_removing_a_licence_the_user_lacks_is_graphs_error(cloud) -> None:
    """Graph's 400 for removing a SKU the user does not hold."""
    user_id, _ = cloud.licensed_user(EXO2)

    answer = cloud.assign(user_id, remove=[E3])

    assert 400 == answer.status_code
    assert "User does not have a corresponding license." == answer.json()["error"]["message"]


def test_a_group_inherited_licence_is_refused(cloud) -> None:
    """Graph refuses to remove a licence inherited from a group, keeps the unit; the adapter's
    PermanentError names the user, the SKU, the group and the fix. Also assigned directly, the
    licence loses only its direct assignment."""
    user_id, upn = cloud.licensed_user()
    group = str(uuid.uuid4())
    cloud.lab("POST", "licenses/group", {"user": user_id, "sku": "ENTERPRISEPACK",
                                         "group": group})
    before = cloud.consumed(E3)

    raw = cloud.assign(user_id, remove=[E3])
    with pytest.raises(PermanentError) as caught:
        cloud.run(lambda g: peers.remove_licences(g, user_id, [E3]))

    assert 400 == raw.status_code
    assert ("User license is inherited from a group membership and it cannot be removed "
            "directly from the user.") == raw.json()["error"]["message"]
    message = str(caught.value)
    assert all(part in message for part in (upn, E3, group, "remove the user from the "
                                                             "licensing group"))
    assert before == cloud.consumed(E3)
    states = cloud.graph("GET", f"users/{user_id}", params={
        "$select": "licenseAssignmentStates"}).json()["licenseAssignmentStates"]
    assert [(group, E3)] == [(s["assignedByGroup"], s["skuId"]) for s in states]

    assert 200 == cloud.assign(user_id, add=[E3]).status_code  # now direct as well
    assert 200 == cloud.assign(user_id, remove=[E3]).status_code
    assert before == cloud.consumed(E3)


def test_unlicensing_a_user_mailbox_is_witnessed(cloud) -> None:
    """The lab records a user whose Exchange licence went while the mailbox was a user
    mailbox (its mail would be deleted after the grace): what leavers must never do."""
    user_id, upn = cloud.licensed_user(E3)

    cloud.run(lambda g: peers.remove_licences(g, user_id, [E3]))

    assert upn in cloud.lab("GET", "stats")["unlicensedUserMailboxes"]


def set_writeback(ad: Connection, dn: str, *, archive: int | None,
                  holds: list[str] | None) -> None:
    """What Entra Connect's Exchange hybrid writeback puts into AD."""
    changes = {"msExchArchiveStatus": [(MODIFY_REPLACE, [] if archive is None else [archive])],
               "msExchUserHoldPolicies": [(MODIFY_REPLACE, holds or [])]}
    assert ad.modify(dn, changes), ad.result


def test_facts_read_the_report_and_the_written_back_attributes(make_user, exchange, cloud,
                                                               ad_admin, settings) -> None:
    """Size and archive from getMailboxUsageDetail, hold from the written-back holds; unknown
    (None) when the user is not in the report yet, or the tenant conceals names."""
    cloud.lab("POST", "config", {"sync_interval_seconds": 3600, "sync_delay_seconds": 0.5})
    user = remote_user(make_user, exchange, settings)
    user_id = wait_synced(cloud, user.guid)
    cloud.graph("PATCH", f"users/{user_id}", json={"usageLocation": "DE"})
    assert cloud.assign(user_id, add=[E3]).status_code == 200

    def facts() -> MailboxFacts:
        return cloud.run(lambda g: peers.mailbox_facts(g, exchange, user_id, str(user.guid),
                                                       report_max_age=0))

    not_reported = facts()
    cloud.lab("POST", "mailboxes/usage", {"user": user_id, "storageUsedBytes": 61 * 1024 ** 3,
                                          "hasArchive": False})
    set_writeback(ad_admin, user.dn, archive=None, holds=["98E9BABD09A04bcf8455A58C2AA74182"])
    big_on_hold = facts()
    cloud.lab("POST", "mailboxes/usage", {"user": user_id, "storageUsedBytes": 1234})
    set_writeback(ad_admin, user.dn, archive=1, holds=None)
    small_archived = facts()
    cloud.lab("POST", "reports/settings", {"displayConcealedNames": True})
    concealed = facts()

    assert MailboxFacts(None, False, False) == not_reported
    assert MailboxFacts(61 * 1024 ** 3, False, True) == big_on_hold
    assert MailboxFacts(1234, True, False) == small_archived
    assert MailboxFacts(None, True, False) == concealed


def test_the_report_is_a_redirect_to_a_csv(cloud) -> None:
    """getMailboxUsageDetail answers 302 to a download URL that needs no token and serves the
    documented columns."""
    user_id, upn = cloud.licensed_user(E3)
    cloud.lab("POST", "mailboxes/usage", {"user": user_id, "storageUsedBytes": 42,
                                          "hasArchive": True})

    answer = cloud.graph("GET", peers.REPORT, follow_redirects=False)
    csv_text = httpx.get(answer.headers["Location"], timeout=30).content.decode("utf-8-sig")

    assert 302 == answer.status_code
    header, *rows = csv_text.splitlines()
    assert header.startswith("Report Refresh Date,User Principal Name,Display Name")
    assert "Storage Used (Byte)" in header and "Has Archive" in header
    assert any(upn in row and ",42," in row and ",True," in row for row in rows)


def test_check_names_the_leavers_permissions(lab: Lab, tmp_path) -> None:
    """``check`` fails the permissions line for a token without MailboxSettings.Read and
    Reports.Read.All, naming both and the grant script."""
    import subprocess
    import sys

    from lab import tokens
    from lab.core import REPO, format_env

    control = lab.settings["LAB_GRAPH_CONTROL_URL"]
    roles = [r for r in tokens.APP_ROLES if r not in ("MailboxSettings.Read", "Reports.Read.All")]
    token = httpx.post(f"{control}/token", json={"roles": roles}, timeout=30, headers={
        "Authorization": f"Bearer {lab.settings['AZURE_STATIC_TOKEN']}"}).json()["token"]
    env = tmp_path / "settings.env"
    env.write_text(format_env({**lab.settings, "AZURE_STATIC_TOKEN": token}))

    done = subprocess.run([sys.executable, "-m", "shared.cli", "--env-file", str(env), "check"],
                          cwd=REPO, capture_output=True, text=True, timeout=240)

    failed = [x.removeprefix("FAILED").strip() for x in done.stdout.splitlines()
              if x.startswith("FAILED")]
    assert 1 == done.returncode
    assert 1 == len(failed), failed
    assert failed[0].startswith(
        "graph permissions: the app's token lacks MailboxSettings.Read (or "
        "MailboxSettings.ReadWrite), Reports.Read.All. Fix: grant them with "
        "infra/scripts/grant-graph-permissions.sh")


def test_a_role_without_set_remote_mailbox_is_named(lab: Lab, make_user, exchange, settings,
                                                    tmp_path) -> None:
    """An Exchange role set up before leavers lacks Set-RemoteMailbox (RBAC hides it: Exchange's
    CommandNotFoundException): the conversion is a PermanentError with the role fix, and
    ``check`` says so on the exchange line."""
    import subprocess
    import sys

    from lab import exchange as lab_exchange
    from lab.core import REPO, format_env

    user = remote_user(make_user, exchange, settings)
    env = tmp_path / "settings.env"
    env.write_text(format_env(dict(lab.settings)))
    lab_exchange.configure(lab, denied_cmdlets=["Set-RemoteMailbox"])
    try:
        with pytest.raises(PermanentError) as caught:
            peers.convert_to_shared(exchange, str(user.guid), hide=False)
        done = subprocess.run([sys.executable, "-m", "shared.cli", "--env-file", str(env),
                               "check"], cwd=REPO, capture_output=True, text=True, timeout=240)
    finally:
        lab_exchange.configure(lab, reset=True)

    assert "Set-RemoteMailbox" in str(caught.value) and "role" in str(caught.value)
    failed = [x.removeprefix("FAILED").strip() for x in done.stdout.splitlines()
              if x.startswith("FAILED")]
    assert [f"exchange: {settings.exchange.user} may not run Set-RemoteMailbox (leavers make "
            "mailboxes shared with it). Fix: add Set-RemoteMailbox to the account's management "
            "role: docs/permissions.md, Exchange Server"] == failed
    assert MailboxType.USER == peers.premises_type(exchange, str(user.guid))


def test_a_migrated_mailbox_becomes_100_and_shared(make_user, exchange, cloud, ad_admin,
                                                   settings) -> None:
    """A mailbox moved to the cloud (msExchRemoteRecipientType 4, Migrated) keeps that bit:
    -Type Shared writes 100 (Migrated + SharedMailbox), and the cloud follows after a cycle."""
    cloud.lab("POST", "config", {"sync_interval_seconds": 3600, "sync_delay_seconds": 0.5})
    user = remote_user(make_user, exchange, settings)
    assert ad_admin.modify(user.dn, {"msExchRemoteRecipientType": [(MODIFY_REPLACE, [4])]})
    user_id = wait_synced(cloud, user.guid)
    cloud.graph("PATCH", f"users/{user_id}", json={"usageLocation": "DE"})
    assert cloud.assign(user_id, add=[E3]).status_code == 200
    migrated = cloud.run(lambda g: peers.cloud_type(g, user_id))

    assert peers.convert_to_shared(exchange, str(user.guid), hide=False)
    cloud.lab("POST", "sync", {"wait": True})

    assert 100 == read(ad_admin, user.dn)["msExchRemoteRecipientType"]
    mailbox = exchange.get_remote_mailbox(str(user.guid))
    assert mailbox is not None and "Migrated, SharedMailbox" == mailbox.remote_recipient_type
    assert (MailboxType.USER, MailboxType.SHARED) == (
        migrated, cloud.run(lambda g: peers.cloud_type(g, user_id)))
