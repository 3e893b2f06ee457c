"""The licence step end to end: lab AD → sync engine → lab Graph, through
shared.provisioning.licensing."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Iterator

import pytest

from lab.core import Lab
from shared.ad.directory import Directory
from shared.config import Settings
from shared.graph.client import GraphClient
from shared.provisioning.licensing import LicenseStep, MemoryShortageLedger
from shared.results import Done, NotYet, Stale, Wait
from shared.secrets import SecretProvider
from tests.lab.graph.test_graph import GraphLab

pytestmark = pytest.mark.lab
ASSIGN = "POST users/{id}/assignLicense"
PATCH = "PATCH users/{id}"
EXO2 = "19ec0d23-8335-4cbd-94ac-6050e30712fa"


@pytest.fixture
def glab(lab: Lab) -> Iterator[GraphLab]:
    """The lab Graph with quick sync and fresh counters; knobs restored afterwards."""
    graph = GraphLab(lab)
    graph.config(sync_delay_seconds=0.3, sync_interval_seconds=0.5)
    graph.free_units()
    graph.reset_stats()
    yield graph
    graph.restore()
    graph.free_units()


@pytest.fixture
def directory(settings: Settings) -> Iterator[Directory]:
    """The service's directory adapter, bound as the service account."""
    provider = SecretProvider.from_settings(settings)
    d = Directory(settings.ad, settings.provisioning,
                  password=provider.resolve(settings.ad.password, setting="AD_PASSWORD"),
                  ca_bundle=settings.service.ca_bundle)
    yield d
    d.close()
    provider.close()


@pytest.fixture
def provisioned(make_user, ad_admin, directory: Directory, settings: Settings):
    """Factory: an AD user in O365_License with licence name, country and (by default) the
    remote routing address Enable-RemoteMailbox leaves in proxyAddresses."""

    def make(license_name: str = "E3", country: str = "DE", routed: bool = True):
        sam = f"l{uuid.uuid4().hex[:10]}"
        proxies = [f"SMTP:{sam}@o365lab.example"]
        if routed:
            proxies.append(f"smtp:{sam}@{settings.provisioning.routing_domain}")
        user = make_user(sam=sam, mail=f"{sam}@o365lab.example", proxyAddresses=proxies,
                         extensionAttribute1=license_name, c=country)
        group = directory.group_dn(settings.provisioning.license_group)
        assert ad_admin.modify(group, {"member": [("MODIFY_ADD", [user.dn])]}), ad_admin.result
        return user

    return make


def run_step(settings: Settings, directory: Directory, guids: list[uuid.UUID], *,
             ledger: MemoryShortageLedger | None = None
             ) -> list[Done | NotYet | BaseException]:
    """Run the step for ``guids`` concurrently on one event loop with one Graph client."""

    async def main() -> list[Done | NotYet | BaseException]:
        client = GraphClient(settings.graph, settings.identity, settings.service.ca_bundle)
        step = LicenseStep(settings.provisioning, directory, client,
                           ledger or MemoryShortageLedger())
        try:
            return list(await asyncio.gather(
                *(step.run(g, correlation_id=f"t-{g}") for g in guids),
                return_exceptions=True))
        finally:
            await client.close()

    # Directory is one blocking connection: the step calls it from threads, one at a time
    # per user here, which ldap3's synchronous strategy tolerates for these few users.
    return asyncio.run(main())


def licences(glab: GraphLab, cloud_id: str) -> list[str]:
    details = glab.graph("GET", f"users/{cloud_id}/licenseDetails").json()["value"]
    return sorted(d["skuPartNumber"] for d in details)


def in_group(directory: Directory, settings: Settings, guid: uuid.UUID) -> bool:
    return guid in directory.group_members(settings.provisioning.license_group)


def test_unsynced_user_waits_then_is_licensed_and_second_run_writes_nothing(
        glab: GraphLab, provisioned, directory: Directory, settings: Settings) -> None:
    """Not synced → NotYet(sync), saying what it means past the deadline; after the sync
    engine mirrors the user → licensed, out of O365_License; a second message (an attempt
    whose answer to the group removal was lost) finds the user out of the group holding the
    licence: done, reported already licensed; a user put back in the group is already
    licensed too: neither makes a Graph write."""
    glab.config(sync_enabled=False)
    user = provisioned()
    [early] = run_step(settings, directory, [user.guid])
    assert isinstance(early, NotYet), early
    assert (Wait.SYNC, "not synced: no cloud user with this objectGUID or UPN") == (
        early.kind, early.late)
    glab.config(sync_enabled=True)
    cloud = glab.wait_for_user(user.guid)
    [done] = run_step(settings, directory, [user.guid])
    assert isinstance(done, Done), done
    assert done.report is not None
    assert ("licensed", "ENTERPRISEPACK") == (done.report["status"], done.report["sku"])
    assert ["ENTERPRISEPACK"] == licences(glab, cloud["id"])
    assert not in_group(directory, settings, user.guid)
    glab.reset_stats()
    [lost_answer] = run_step(settings, directory, [user.guid])
    assert isinstance(lost_answer, Done) and lost_answer.report is not None, lost_answer
    assert ("already-licensed", "ENTERPRISEPACK", ()) == (
        lost_answer.report["status"], lost_answer.report["sku"], lost_answer.changes)
    directory.add_member(settings.provisioning.license_group, directory.user(user.guid))
    [again] = run_step(settings, directory, [user.guid])
    assert isinstance(again, Done) and again.report is not None
    assert "already-licensed" == again.report["status"]
    assert 0 == glab.stats()["total"].get("writes", 0)


def test_a_user_out_of_the_group_without_the_licence_is_stale(
        glab: GraphLab, provisioned, directory: Directory, settings: Settings) -> None:
    """Taken out of O365_License before any licence (or holding another one): the message is
    stale, names the user and the group, and nothing is written."""
    user = provisioned()
    glab.wait_for_user(user.guid)
    directory.remove_member(settings.provisioning.license_group, directory.user(user.guid))
    glab.reset_stats()
    [stale] = run_step(settings, directory, [user.guid])
    assert isinstance(stale, Stale), stale
    assert f"{stale.user} is not a member of {settings.provisioning.license_group}" == \
        stale.reason
    assert 0 == glab.stats()["total"].get("writes", 0)


def test_no_licence_while_routing_address_missing(glab: GraphLab, provisioned, ad_admin,
                                                  directory: Directory,
                                                  settings: Settings) -> None:
    """Safe ordering: no assignLicense until proxyAddresses show the routing address; then
    the licence goes on and no second (cloud) mailbox is created."""
    user = provisioned(routed=False)
    cloud = glab.wait_for_user(user.guid)
    [waiting] = run_step(settings, directory, [user.guid])
    assert isinstance(waiting, NotYet) and Wait.ROUTING == waiting.kind, waiting
    assert (0, 0) == (glab.count(ASSIGN, "requests"), glab.count(PATCH, "requests"))
    routing = f"smtp:{user.sam}@{settings.provisioning.routing_domain}"
    assert ad_admin.modify(user.dn, {"proxyAddresses": [("MODIFY_ADD", [routing])]})
    deadline = time.monotonic() + 20
    while routing not in glab.wait_for_user(user.guid)["proxyAddresses"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    [done] = run_step(settings, directory, [user.guid])
    assert isinstance(done, Done), done
    assert ["ENTERPRISEPACK"] == licences(glab, cloud["id"])
    assert [] == glab.stats()["cloudMailboxes"]


def test_existing_licence_replaced_in_one_call_and_location_not_repatched(
        glab: GraphLab, provisioned, directory: Directory, settings: Settings) -> None:
    """A user holding EXCHANGEENTERPRISE with usageLocation DE: one assignLicense swaps it for
    ENTERPRISEPACK; usageLocation, already right, is not patched."""
    user = provisioned()
    cloud = glab.wait_for_user(user.guid)
    assert 204 == glab.graph("PATCH", f"users/{cloud['id']}",
                             json={"usageLocation": "DE"}).status_code
    assert 200 == glab.graph("POST", f"users/{cloud['id']}/assignLicense", json={
        "addLicenses": [{"skuId": EXO2}], "removeLicenses": []}).status_code
    glab.reset_stats()
    [done] = run_step(settings, directory, [user.guid])
    assert isinstance(done, Done), done
    assert (1, 0) == (glab.count(ASSIGN, "requests"), glab.count(PATCH, "requests"))
    assert ["ENTERPRISEPACK"] == licences(glab, cloud["id"])
    assert [("licenses", "EXCHANGEENTERPRISE", "ENTERPRISEPACK")] == [
        (c.what, c.before, c.after) for c in done.changes]


POWER_BI_PRO = "f8a1db68-be16-40ed-86d5-cb42ce701560"


@pytest.mark.parametrize(("replace", "expected"), [
    ("managed", ["ENTERPRISEPACK", "POWER_BI_PRO"]),
    ("all", ["ENTERPRISEPACK"]),
])
def test_an_add_on_licence_is_kept_unless_told_to_replace_everything(
        glab: GraphLab, provisioned, directory: Directory, settings: Settings,
        replace: str, expected: list[str]) -> None:
    """A user holding the add-on POWER_BI_PRO (no LICENSE_MAP entry) and EXCHANGEENTERPRISE:
    with LICENSE_REPLACE=managed (the default) one assignLicense swaps EXCHANGEENTERPRISE for
    ENTERPRISEPACK and keeps the add-on; with `all`, as the old script did, the add-on goes
    too."""
    user = provisioned()
    cloud = glab.wait_for_user(user.guid)
    assert 204 == glab.graph("PATCH", f"users/{cloud['id']}",
                             json={"usageLocation": "DE"}).status_code
    assert 200 == glab.graph("POST", f"users/{cloud['id']}/assignLicense", json={
        "addLicenses": [{"skuId": EXO2}, {"skuId": POWER_BI_PRO}],
        "removeLicenses": []}).status_code
    chosen = dataclasses.replace(settings, provisioning=settings.provisioning.model_copy(
        update={"license_replace": replace}))
    glab.reset_stats()
    [done] = run_step(chosen, directory, [user.guid])
    assert isinstance(done, Done), done
    assert (1, expected) == (glab.count(ASSIGN, "requests"), licences(glab, cloud["id"]))


def test_zero_free_units_no_assign_and_one_shortage_notice(
        glab: GraphLab, provisioned, directory: Directory, settings: Settings) -> None:
    """No free ENTERPRISEPACK: zero assign calls, users stay in O365_License, and one notice
    for the SKU however many users hit it."""
    users = [provisioned() for _ in range(3)]
    for user in users:
        glab.wait_for_user(user.guid)
    skus = glab.graph("GET", "subscribedSkus").json()["value"]
    consumed = next(s["consumedUnits"] for s in skus if s["skuPartNumber"] == "ENTERPRISEPACK")
    glab.units(ENTERPRISEPACK=consumed)
    glab.reset_stats()
    ledger = MemoryShortageLedger()
    outcomes = run_step(settings, directory, [u.guid for u in users], ledger=ledger)
    outcomes += run_step(settings, directory, [users[0].guid], ledger=ledger)
    assert [Wait.SHORTAGE] * 4 == [getattr(o, "kind", o) for o in outcomes]
    notices = [o.shortage for o in outcomes
               if isinstance(o, NotYet) and o.shortage and o.shortage.first_today]
    assert 1 == len(notices)
    assert "ENTERPRISEPACK" == notices[0].part_number
    assert 0 == glab.stats()["total"].get("writes", 0)
    assert all(in_group(directory, settings, u.guid) for u in users)


@pytest.mark.slow
def test_throttled_writes_honour_retry_after_and_everyone_ends_licensed(
        glab: GraphLab, provisioned, directory: Directory, settings: Settings) -> None:
    """With a tiny write budget Graph answers 429 + Retry-After; the client waits as told and
    every user still ends licensed."""
    users = [provisioned() for _ in range(5)]
    clouds = [glab.wait_for_user(u.guid) for u in users]
    glab.config(writes_per_window=3, write_window_seconds=2)
    glab.reset_stats()
    outcomes = run_step(settings, directory, [u.guid for u in users])
    assert all(isinstance(o, Done) and o.report and o.report["status"] == "licensed"
               for o in outcomes), outcomes
    assert glab.count(ASSIGN, "429") + glab.count(PATCH, "429") > 0
    assert all(["ENTERPRISEPACK"] == licences(glab, c["id"]) for c in clouds)


@pytest.mark.slow
def test_a_shortage_cleared_is_licensed_within_minutes_of_units_appearing(
        glab: GraphLab, provisioned, settings: Settings) -> None:
    """Through the queues and the state machine: a user waits on ENTERPRISEPACK with no free
    unit (ledger WAITING, shortage), units are added with the lab's control, and the user is
    licensed within one shortage recheck of it, not after SYNC_RETRY_MAX_SECONDS. The recheck
    is the production decision (Policy.delay), shortened here by its setting (120 s in
    production) to keep the test short."""
    import threading

    from shared import flow
    from shared.flow.handlers import enqueue
    from shared.flow.worker import run_once
    from shared.store.ledger import State
    from shared.store.messages import Step, WorkItem

    recheck = 3.0
    quick = dataclasses.replace(settings, provisioning=settings.provisioning.model_copy(
        update={"shortage_recheck_seconds": recheck}))
    user = provisioned()
    cloud = glab.wait_for_user(user.guid)
    used = {s["skuPartNumber"]: s["consumedUnits"]
            for s in glab.graph("GET", "subscribedSkus").json()["value"]}
    glab.units(ENTERPRISEPACK=used["ENTERPRISEPACK"])  # no free unit
    svc = flow.Service.build(quick)
    try:
        asyncio.run(enqueue(svc, WorkItem(user=user.guid, step=Step.LICENSE)))
        done: list[object] = []
        worker = threading.Thread(
            target=lambda: done.append(asyncio.run(run_once(svc, limit=240))), daemon=True)
        worker.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            row = svc.ledger.get(user.guid, Step.LICENSE.value)
            if row is not None and row.state is State.WAITING and row.wait == "shortage":
                break
            time.sleep(0.5)
        assert row is not None and ("waiting", "shortage") == (row.state.value, row.wait), row
        assert [] == licences(glab, cloud["id"])
        glab.free_units()
        appeared = time.monotonic()
        while time.monotonic() < appeared + 300 and not licences(glab, cloud["id"]):
            time.sleep(0.5)
        licensed_after = time.monotonic() - appeared
        assert ["ENTERPRISEPACK"] == licences(glab, cloud["id"])
        assert licensed_after < recheck + 30, licensed_after
        worker.join(timeout=240)
    finally:
        svc.close()
