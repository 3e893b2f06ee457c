"""The licence planner, in memory: no peer, no network."""

from __future__ import annotations

import uuid

import pytest

from shared.config import ProvisioningSettings
from shared.entra import immutable_id
from shared.errors import PermanentError
from shared.provisioning.licensing import (
    AssignLicense,
    RemoveFromGroup,
    ReportShortage,
    SetUsageLocation,
    SkuFacts,
    WaitForRouting,
    plan,
)

E3 = uuid.UUID("6fd2c87f-b296-42f0-b197-1e91e994b900")
EXO2 = uuid.UUID("19ec0d23-8335-4cbd-94ac-6050e30712fa")
OTHER = uuid.UUID("18181a46-0d4e-45cd-891e-60aabd171b4e")
PROV = ProvisioningSettings(routing_domain="contoso.mail.onmicrosoft.com")
ROUTED = ("SMTP:ann@contoso.com", "smtp:ann@contoso.mail.onmicrosoft.com")


def skus(e3_free: int = 5, exo_free: int = 5) -> dict[str, SkuFacts]:
    return {
        "ENTERPRISEPACK": SkuFacts(E3, "ENTERPRISEPACK", e3_free, True),
        "EXCHANGEENTERPRISE": SkuFacts(EXO2, "EXCHANGEENTERPRISE", exo_free, True),
    }


def run(**overrides):
    facts = {"user": "ann@contoso.com", "sku_part": "ENTERPRISEPACK", "country": "DE",
             "routing_address": "ann@contoso.mail.onmicrosoft.com",
             "current_skus": frozenset(), "usage_location": None, "proxy_addresses": ROUTED,
             "skus": skus(), "provisioning": PROV}
    facts.update(overrides)
    return plan(**facts)


def test_new_user_gets_location_licence_and_leaves_group():
    """An unlicensed user: usageLocation from c, one assign, then out of O365_License."""
    expected = [SetUsageLocation(None, "DE"), AssignLicense((E3,), ()),
                RemoveFromGroup("O365_License")]
    assert expected == run()


def test_existing_licence_is_replaced_in_one_call():
    """With LICENSE_REPLACE=all, whatever the user had is removed in the same assignLicense
    that adds the new SKU (the seed script's -RemoveLicenses)."""
    every = ProvisioningSettings(routing_domain="contoso.mail.onmicrosoft.com",
                                 license_replace="all")
    actions = run(current_skus=frozenset({EXO2, OTHER}), usage_location="DE",
                  provisioning=every)
    assert [AssignLicense((E3,), tuple(sorted({EXO2, OTHER}))),
            RemoveFromGroup("O365_License")] == actions


def test_managed_replaces_only_mapped_skus_and_keeps_add_ons():
    """The default LICENSE_REPLACE=managed removes the other LICENSE_MAP SKU and keeps an
    add-on (a SKU no entry of LICENSE_MAP names)."""
    assert "managed" == PROV.license_replace
    actions = run(current_skus=frozenset({EXO2, OTHER}), usage_location="DE")
    assert [AssignLicense((E3,), (EXO2,)), RemoveFromGroup("O365_License")] == actions


def test_managed_with_only_an_add_on_adds_and_removes_nothing():
    """A user holding the right SKU and an add-on needs no assignLicense under managed."""
    actions = run(current_skus=frozenset({E3, OTHER}), usage_location="DE")
    assert [RemoveFromGroup("O365_License")] == actions


def test_correct_usage_location_is_not_patched():
    """A usageLocation that already matches c is left alone."""
    assert not any(isinstance(a, SetUsageLocation) for a in run(usage_location="DE"))


def test_already_licensed_user_needs_no_write():
    """The second run: same SKU, same location → only the group removal (idempotent)."""
    assert [RemoveFromGroup("O365_License")] == run(current_skus=frozenset({E3}),
                                                     usage_location="DE")


def test_missing_routing_address_waits_without_writing():
    """Safe ordering: Exchange Online only once proxyAddresses show <sam>@routing domain."""
    actions = run(proxy_addresses=("SMTP:ann@contoso.com",))
    assert [WaitForRouting("ann@contoso.mail.onmicrosoft.com")] == actions


def test_routing_address_match_ignores_prefix_case():
    """SMTP:/smtp: and letter case do not matter when looking for the routing address."""
    actions = run(proxy_addresses=("SMTP:Ann@Contoso.Mail.OnMicrosoft.com",))
    assert isinstance(actions[-1], RemoveFromGroup)


def test_sku_without_exchange_does_not_wait_for_routing():
    """A licence without Exchange Online has nothing to order against."""
    no_exo = {"ENTERPRISEPACK": SkuFacts(E3, "ENTERPRISEPACK", 5, False)}
    actions = run(skus=no_exo, proxy_addresses=())
    assert AssignLicense((E3,), ()) in actions


def test_zero_free_units_reports_shortage_and_writes_nothing():
    """No free unit → no assign, no patch, no group change: one shortage action."""
    assert [ReportShortage("ENTERPRISEPACK", E3)] == run(skus=skus(e3_free=0))


def test_zero_free_units_do_not_matter_to_a_user_who_has_the_sku():
    """A user who already holds the SKU needs no free unit."""
    actions = run(skus=skus(e3_free=0), current_skus=frozenset({E3}), usage_location="DE")
    assert [RemoveFromGroup("O365_License")] == actions


def test_sku_missing_from_tenant_is_permanent():
    """A mapped licence the tenant does not subscribe to cannot be assigned."""
    with pytest.raises(PermanentError, match="no subscription for ENTERPRISEPACK") as caught:
        run(skus={})
    assert ("ann@contoso.com", "license") == (caught.value.user, caught.value.step)


def test_immutable_id_is_base64_of_little_endian_guid_bytes():
    """Entra Connect's sourceAnchor: objectGUID bytes as AD stores them, base64."""
    guid = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
    assert "MyIRAFVEd2aImaq7zN3u/w==" == immutable_id(guid)


def test_graph_user_json_maps_to_cloud_user():
    """The licence step reads Graph's JSON itself: every selected property is mapped, SKU ids
    become UUIDs, and properties Graph leaves out are None or empty, never an error."""
    from shared.entra import CloudUser

    sku = uuid.UUID("6fd2c87f-b296-42f0-b197-1e91e994b900")
    user = CloudUser.from_json({
        "id": "4a7c", "userPrincipalName": "ada@contoso.example", "mail": None,
        "usageLocation": "NL", "proxyAddresses": ["SMTP:ada@contoso.example"],
        "assignedLicenses": [{"skuId": str(sku), "disabledPlans": []}],
        "onPremisesImmutableId": "abc=", "onPremisesSyncEnabled": True,
        "onPremisesSamAccountName": "ada",
    })
    assert (user.id, user.upn, user.usage_location, user.sku_ids, user.sync_enabled,
            user.sam) == ("4a7c", "ada@contoso.example", "NL", frozenset({sku}), True, "ada")
    bare = CloudUser.from_json({"id": "5b8d"})
    assert (bare.usage_location, bare.proxy_addresses, bare.sku_ids, bare.sync_enabled) == (
        None, (), frozenset(), False)


def test_sku_missing_from_tenant_says_what_to_buy_or_remap():
    """The failure names the SKU and both ways out: buy it, or map the name elsewhere."""
    with pytest.raises(PermanentError) as caught:
        run(skus={})
    assert ("the tenant has no subscription for ENTERPRISEPACK",
            "buy ENTERPRISEPACK, or map the licence name to another SKU in LICENSE_MAP") == (
        caught.value.reason, caught.value.fix)


def test_a_user_with_the_sku_and_others_loses_only_the_others():
    """A user who holds the SKU already and another mapped one: one assignLicense that adds
    nothing and removes the other."""
    actions = run(current_skus=frozenset({E3, EXO2}), usage_location="DE")
    assert [AssignLicense((), (EXO2,)), RemoveFromGroup("O365_License")] == actions


def test_sku_facts_come_from_graph_s_subscribed_sku():
    """A subscribed SKU becomes the planner's facts: its id, part number, free units (prepaid
    minus consumed, never below zero) and whether a service plan is Exchange Online's."""
    from shared.graph.client import SubscribedSku

    e3 = SubscribedSku(E3, "ENTERPRISEPACK", 25, 20,
                       ("SHAREPOINTENTERPRISE", "EXCHANGE_S_ENTERPRISE"))
    teams = SubscribedSku(OTHER, "TEAMS_EXPLORATORY", 10, 12, ("TEAMS1", "MCO_EXCHANGE_S"))
    assert [SkuFacts(E3, "ENTERPRISEPACK", 5, True),
            SkuFacts(OTHER, "TEAMS_EXPLORATORY", 0, False)] == [SkuFacts.of(e3), SkuFacts.of(teams)]
