"""The lab Graph and the service's Graph client, over HTTP (the SDK talks to the lab)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from lab.core import Lab
from shared.config import Settings
from shared.entra import immutable_id
from shared.errors import PermanentError
from shared.graph.client import GraphClient

pytestmark = pytest.mark.lab


class GraphLab:
    """The lab Graph as a test drives it: knobs, counters, sync, seeding."""

    def __init__(self, lab: Lab) -> None:
        self.url = lab.settings["LAB_GRAPH_URL"]
        self.control = lab.settings["LAB_GRAPH_CONTROL_URL"]
        self.token = lab.settings["AZURE_STATIC_TOKEN"]
        self.http = httpx.Client(headers={"Authorization": f"Bearer {self.token}"}, timeout=60)
        self.defaults = self.get("config")

    def get(self, name: str) -> Any:
        response = self.http.get(f"{self.control}/{name}")
        response.raise_for_status()
        return response.json()

    def post(self, name: str, body: dict[str, Any] | None = None) -> Any:
        response = self.http.post(f"{self.control}/{name}", json=body or {})
        response.raise_for_status()
        return response.json()

    def config(self, **knobs: Any) -> dict[str, Any]:
        return dict(self.post("config", knobs))

    def restore(self) -> None:
        self.post("config", self.defaults)

    def stats(self) -> dict[str, Any]:
        return dict(self.get("stats"))

    def reset_stats(self) -> None:
        self.post("stats/reset")

    def count(self, key: str, what: str) -> int:
        return int(self.stats()["paths"].get(key, {}).get(what, 0))

    def units(self, **units: int) -> None:
        self.post("units", units)

    def free_units(self, free: int = 25) -> None:
        """Make ``free`` units of each SKU available, whatever earlier runs consumed."""
        skus = self.graph("GET", "subscribedSkus").json()["value"]
        self.units(**{s["skuPartNumber"]: s["consumedUnits"] + free for s in skus})

    def sync(self) -> dict[str, Any]:
        return dict(self.post("sync", {"wait": True}))

    def seed_synced(self, upn: str, sam: str, proxy: list[str] | None = None,
                    **extra: Any) -> uuid.UUID:
        """A synced-looking cloud user made through the seeding path (no AD object)."""
        guid = uuid.uuid4()
        self.post("users", {"users": [{
            "userPrincipalName": upn, "onPremisesImmutableId": immutable_id(guid),
            "onPremisesSyncEnabled": True, "onPremisesSamAccountName": sam,
            "proxyAddresses": proxy or [], **extra}]})
        return guid

    def graph(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, f"{self.url}/{path}", **kwargs)

    def wait_for_user(self, guid: uuid.UUID, timeout: float = 30) -> dict[str, Any]:
        """Poll until the sync engine has mirrored the AD user ``guid``; its cloud JSON."""
        deadline = time.monotonic() + timeout
        select = "id,userPrincipalName,proxyAddresses,onPremisesImmutableId,usageLocation"
        while time.monotonic() < deadline:
            self.sync()
            found = self.graph("GET", "users", params={
                "$filter": f"onPremisesImmutableId eq '{immutable_id(guid)}'",
                "$count": "true", "$select": select}, headers={"ConsistencyLevel": "eventual"})
            found.raise_for_status()
            if found.json()["value"]:
                return dict(found.json()["value"][0])
            time.sleep(0.2)
        raise AssertionError(f"user {guid} did not sync within {timeout} s")


E3 = "6fd2c87f-b296-42f0-b197-1e91e994b900"
EXO2 = "19ec0d23-8335-4cbd-94ac-6050e30712fa"


@pytest.fixture
def glab(lab: Lab) -> Iterator[GraphLab]:
    """The lab Graph with fresh counters; knobs are put back after the test."""
    graph = GraphLab(lab)
    graph.free_units()
    graph.reset_stats()
    yield graph
    graph.restore()
    graph.free_units()


def test_missing_or_wrong_token_is_401_in_graph_shape(glab: GraphLab) -> None:
    """No token and a wrong token both get 401 InvalidAuthenticationToken."""
    bare = glab.http.build_request("GET", f"{glab.url}/users")
    del bare.headers["Authorization"]
    missing = glab.http.send(bare)
    wrong = glab.graph("GET", "users", headers={"Authorization": "Bearer nope"})
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert missing.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert wrong.json()["error"]["code"] == "InvalidAuthenticationToken"


def test_advanced_filter_needs_eventual_and_count(glab: GraphLab) -> None:
    """onPremisesImmutableId filters only with ConsistencyLevel: eventual and $count=true."""
    query = {"$filter": "onPremisesImmutableId eq 'abc'"}
    plain = glab.graph("GET", "users", params=query)
    advanced = glab.graph("GET", "users", params={**query, "$count": "true"},
                          headers={"ConsistencyLevel": "eventual"})
    assert plain.status_code == 400
    assert plain.json()["error"]["code"] == "Request_UnsupportedQuery"
    assert (advanced.status_code, advanced.json()["@odata.count"]) == (200, 0)


def test_paging_with_top_and_next_link(glab: GraphLab) -> None:
    """$top pages the user list and @odata.nextLink walks it to the end without repeats."""
    for i in range(5):
        upn = f"p{i}-{uuid.uuid4().hex[:6]}@x.test"
        glab.post("users", {"users": [{"userPrincipalName": upn}]})
    total = glab.graph("GET", "users", params={"$count": "true", "$top": "1"},
                       headers={"ConsistencyLevel": "eventual"}).json()["@odata.count"]
    seen: list[str] = []
    url: str | None = f"{glab.url}/users?$top=500&$select=id"
    while url:
        page = glab.http.get(url).json()
        seen += [u["id"] for u in page["value"]]
        assert len(page["value"]) <= 500
        url = page.get("@odata.nextLink")
    assert total == len(seen)
    assert len(seen) == len(set(seen))


def test_select_limits_properties_and_defaults_hide_licence_fields(glab: GraphLab) -> None:
    """Without $select Graph's default set omits usageLocation; with it, only those come."""
    upn = f"sel-{uuid.uuid4().hex[:6]}@x.test"
    glab.post("users", {"users": [{"userPrincipalName": upn, "usageLocation": "FR"}]})
    default = glab.graph("GET", f"users/{upn}").json()
    chosen = glab.graph("GET", f"users/{upn}", params={"$select": "usageLocation"}).json()
    assert "usageLocation" not in default
    assert {k: v for k, v in chosen.items() if k[0] != "@"} == {"usageLocation": "FR"}


def test_assign_license_failures_and_consumed_units(glab: GraphLab) -> None:
    """No usage location, unknown SKU and no free unit fail as Graph does; units stay true."""
    upn = f"lic-{uuid.uuid4().hex[:6]}@x.test"
    glab.post("users", {"users": [{"userPrincipalName": upn}]})
    body = {"addLicenses": [{"skuId": E3, "disabledPlans": []}], "removeLicenses": []}
    no_location = glab.graph("POST", f"users/{upn}/assignLicense", json=body)
    glab.graph("PATCH", f"users/{upn}", json={"usageLocation": "DE"})
    unknown = glab.graph("POST", f"users/{upn}/assignLicense", json={
        "addLicenses": [{"skuId": str(uuid.uuid4())}], "removeLicenses": []})

    def consumed(part: str) -> int:
        skus = glab.graph("GET", "subscribedSkus").json()["value"]
        return next(s["consumedUnits"] for s in skus if s["skuPartNumber"] == part)

    before = consumed("ENTERPRISEPACK")
    glab.units(ENTERPRISEPACK=before)
    full = glab.graph("POST", f"users/{upn}/assignLicense", json=body)
    glab.units(ENTERPRISEPACK=before + 1)
    ok = glab.graph("POST", f"users/{upn}/assignLicense", json=body)
    swap = glab.graph("POST", f"users/{upn}/assignLicense", json={
        "addLicenses": [{"skuId": EXO2}], "removeLicenses": [E3]})
    answers = (no_location, unknown, full, ok, swap)
    assert [400, 400, 400, 200, 200] == [r.status_code for r in answers]
    assert "invalid usage location" in no_location.json()["error"]["message"]
    assert "does not correspond to a valid company License" in unknown.json()["error"]["message"]
    assert "does not have any available licenses" in full.json()["error"]["message"]
    assert before == consumed("ENTERPRISEPACK")
    details = glab.graph("GET", f"users/{upn}/licenseDetails").json()["value"]
    assert [d["skuPartNumber"] for d in details] == ["EXCHANGEENTERPRISE"]


def test_write_budget_throttles_with_retry_after_and_percentage(glab: GraphLab) -> None:
    """Past the write quota Graph answers 429 with Retry-After; above 80 % it warns."""
    glab.config(writes_per_window=10, write_window_seconds=5)
    upn = f"thr-{uuid.uuid4().hex[:6]}@x.test"
    glab.post("users", {"users": [{"userPrincipalName": upn}]})
    answers = [glab.graph("PATCH", f"users/{upn}", json={"usageLocation": "DE"})
               for _ in range(12)]
    statuses = [a.status_code for a in answers]
    assert statuses == [204] * 10 + [429, 429]
    assert "x-ms-throttle-limit-percentage" in answers[9].headers
    assert "x-ms-throttle-limit-percentage" not in answers[0].headers
    assert int(answers[10].headers["Retry-After"]) >= 1
    assert answers[10].headers["x-ms-throttle-information"] == "WriteLimitExceeded"
    assert glab.count("PATCH users/{id}", "429") == 2


def test_batch_items_are_throttled_and_ordered_one_by_one(glab: GraphLab) -> None:
    """$batch: over 20 items is refused; absolute URLs fail per item; dependsOn → 424."""
    too_many = glab.graph("POST", "$batch", json={"requests": [
        {"id": str(i), "method": "GET", "url": "/subscribedSkus"} for i in range(21)]})
    answer = glab.graph("POST", "$batch", json={"requests": [
        {"id": "1", "method": "GET", "url": "/users/nobody@x.test"},
        {"id": "2", "method": "GET", "url": "/subscribedSkus", "dependsOn": ["1"]},
        {"id": "3", "method": "GET", "url": f"{glab.url}/subscribedSkus"},
        {"id": "4", "method": "GET", "url": "/subscribedSkus"},
    ]})
    assert too_many.status_code == 400
    statuses = {r["id"]: r["status"] for r in answer.json()["responses"]}
    assert statuses == {"1": 404, "2": 424, "3": 400, "4": 200}
    assert glab.count("GET subscribedSkus", "requests") == 1


def test_injected_503_and_drops_are_retried_by_the_client(glab: GraphLab,
                                                          settings: Settings) -> None:
    """The client retries 503 (after Retry-After) and dropped connections on reads."""
    glab.config(fail_next=2, drop_next=1, retry_after_503=0)

    async def read() -> int:
        client = GraphClient(settings.graph, settings.identity, settings.service.ca_bundle)
        try:
            skus = await client.subscribed_skus()
            assert client.counters.retried == 3
            return len(skus)
        finally:
            await client.close()

    # the lab tenant's SKUs: ENTERPRISEPACK, EXCHANGEENTERPRISE and the add-on POWER_BI_PRO
    assert 3 == asyncio.run(read())


def test_client_finds_synced_user_by_immutable_id_then_upn(glab: GraphLab, lab: Lab,
                                                           settings: Settings) -> None:
    """find_user: immutable id (even with + and / in it), UPN fallback only for synced users."""
    guid = uuid.UUID(bytes_le=bytes.fromhex("fbff3e00" + "00" * 12))  # base64 has + and /
    assert "+" in immutable_id(guid) or "/" in immutable_id(guid)
    upn = f"find-{uuid.uuid4().hex[:6]}@x.test"
    tenant = f"{lab.settings['LAB_TENANT']}.onmicrosoft.com"
    glab.post("users", {"users": [{"userPrincipalName": upn, "onPremisesSyncEnabled": True,
                                   "onPremisesImmutableId": immutable_id(guid)}]})

    async def find() -> tuple[str | None, str | None, object, object]:
        client = GraphClient(settings.graph, settings.identity, settings.service.ca_bundle)
        try:
            by_id = await client.find_user(immutable_id(guid))
            by_upn = await client.find_user("bm90LWl0", upn)
            cloud_only = await client.find_user("bm90LWl0", f"breakglass@{tenant}")
            missing = await client.find_user("bm90LWl0", "nobody@x.test")
            return (by_id.upn if by_id else None, by_upn.upn if by_upn else None,
                    cloud_only, missing)
        finally:
            await client.close()

    assert (upn, None, None, None) == asyncio.run(find())


def test_client_raises_permanent_error_with_graph_reason(glab: GraphLab,
                                                         settings: Settings) -> None:
    """A Graph 400 becomes a one-line PermanentError carrying Graph's code and message."""
    upn = f"bad-{uuid.uuid4().hex[:6]}@x.test"
    ids = glab.post("users", {"users": [{"userPrincipalName": upn}]})["ids"]

    async def patch() -> None:
        client = GraphClient(settings.graph, settings.identity, settings.service.ca_bundle)
        try:
            await client.set_usage_location(ids[0], "XX", user=upn)
        finally:
            await client.close()

    with pytest.raises(PermanentError) as caught:
        asyncio.run(patch())
    assert "Request_BadRequest" in str(caught.value)
    assert upn in str(caught.value)
    assert "\n" not in str(caught.value)


def test_sync_mirrors_ad_user_updates_and_soft_deletes(glab: GraphLab, make_user, ad_admin,
                                                       settings: Settings) -> None:
    """AD → cloud: immutable id, sam, proxyAddresses, no usageLocation; changes follow;
    deleting the AD user soft-deletes the cloud user."""
    glab.config(sync_delay_seconds=0.2, sync_interval_seconds=0.5)
    user = make_user(mail="m@o365lab.example", proxyAddresses=["SMTP:m@o365lab.example"],
                     extensionAttribute1="E3")
    cloud = glab.wait_for_user(user.guid)
    assert immutable_id(user.guid) == cloud["onPremisesImmutableId"]
    assert cloud["usageLocation"] is None
    full = glab.graph("GET", f"users/{cloud['id']}", params={
        "$select": "onPremisesSamAccountName,onPremisesSyncEnabled,onPremisesExtensionAttributes"
    }).json()
    assert (user.sam, True, "E3") == (full["onPremisesSamAccountName"],
                                      full["onPremisesSyncEnabled"],
                                      full["onPremisesExtensionAttributes"]["extensionAttribute1"])
    routing = f"smtp:{user.sam}@{settings.provisioning.routing_domain}"
    assert ad_admin.modify(user.dn, {"proxyAddresses": [("MODIFY_ADD", [routing])]})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        glab.sync()
        got = glab.graph("GET", f"users/{cloud['id']}", params={"$select": "proxyAddresses"})
        if routing in got.json()["proxyAddresses"]:
            break
        time.sleep(0.2)
    assert routing in got.json()["proxyAddresses"]
    assert ad_admin.delete(user.dn)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        glab.sync()
        if glab.graph("GET", f"users/{cloud['id']}").status_code == 404:
            break
        time.sleep(0.2)
    assert glab.graph("GET", f"users/{cloud['id']}").status_code == 404
