"""The licence planner's guarantees, for any user (hypothesis): a plan that completes leaves
the user with exactly the mapped SKU, writes usageLocation only when it differs, writes
nothing while it must wait (routing address, free unit), and applied once leaves nothing to
do but the group removal."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace

from hypothesis import given
from hypothesis import strategies as st

from shared.config import ProvisioningSettings
from shared.provisioning.licensing import (
    Action,
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
OTHERS = [uuid.UUID("18181a46-0d4e-45cd-891e-60aabd171b4e"),
          uuid.UUID("c7df2760-2c81-4ef7-b578-5b5392b571df")]
MAPPED = {"ENTERPRISEPACK": E3, "EXCHANGEENTERPRISE": EXO2}  # LICENSE_MAP's defaults
PROV = ProvisioningSettings(routing_domain="contoso.mail.onmicrosoft.com")
ROUTING = "ann@contoso.mail.onmicrosoft.com"
PROXIES = ["SMTP:ann@contoso.com", "smtp:ann@contoso.mail.onmicrosoft.com",
           "SMTP:Ann@Contoso.Mail.OnMicrosoft.com", "smtp:bob@contoso.mail.onmicrosoft.com",
           "X500:/o=Contoso/ou=Exchange/cn=Recipients/cn=ann"]


@dataclass(frozen=True)
class User:
    """The facts the planner reads about one user and the tenant."""

    sku_part: str
    country: str
    current_skus: frozenset[uuid.UUID]
    usage_location: str | None
    proxy_addresses: tuple[str, ...]
    skus: dict[str, SkuFacts]

    def plan(self) -> list[Action]:
        return plan(user="ann@contoso.com", sku_part=self.sku_part, country=self.country,
                    routing_address=ROUTING, current_skus=self.current_skus,
                    usage_location=self.usage_location, proxy_addresses=self.proxy_addresses,
                    skus=self.skus, provisioning=PROV)

    @property
    def routed(self) -> bool:
        return f"smtp:{ROUTING}" in {p.lower() for p in self.proxy_addresses}

    def after(self, actions: list[Action]) -> User:
        """The user once ``actions`` are carried out."""
        user = self
        for action in actions:
            if isinstance(action, SetUsageLocation):
                user = replace(user, usage_location=action.after)
            elif isinstance(action, AssignLicense):
                user = replace(user, current_skus=user.current_skus - set(action.remove)
                               | set(action.add))
        return user


@st.composite
def users(draw: st.DrawFn) -> User:
    skus = {part: SkuFacts(sku_id, part, draw(st.integers(0, 2)), draw(st.booleans()))
            for part, sku_id in MAPPED.items()}
    return User(
        sku_part=draw(st.sampled_from(sorted(MAPPED))),
        country=draw(st.sampled_from(["DE", "US", "GB"])),
        current_skus=frozenset(draw(st.lists(st.sampled_from([E3, EXO2, *OTHERS])))),
        usage_location=draw(st.sampled_from([None, "DE", "US", "GB", "de"])),
        proxy_addresses=tuple(draw(st.lists(st.sampled_from(PROXIES), max_size=3))),
        skus=skus,
    )


@given(users())
def test_a_completed_plan_leaves_exactly_the_mapped_sku(user: User) -> None:
    """Whatever the user held, a plan that goes through leaves exactly one mapped licence: the
    SKU the licence name maps to (the other mapped SKU is removed); every unmapped SKU (an
    add-on) is kept, as LICENSE_REPLACE=managed says."""
    actions = user.plan()
    if actions[-1] == RemoveFromGroup("O365_License"):
        add_ons = user.current_skus - set(MAPPED.values())
        assert frozenset({MAPPED[user.sku_part]}) | add_ons == user.after(actions).current_skus


@given(users())
def test_usage_location_is_written_only_when_it_differs(user: User) -> None:
    """A plan that goes through writes usageLocation exactly when it differs from the country,
    first (Graph refuses a licence to a user without one), from what it was to the country."""
    actions = user.plan()
    if actions[-1] != RemoveFromGroup("O365_License"):
        return
    writes = [a for a in actions if isinstance(a, SetUsageLocation)]
    expected = [] if user.usage_location == user.country else [
        SetUsageLocation(user.usage_location, user.country)]
    assert expected == writes
    assert writes == actions[:len(writes)]


@given(users())
def test_nothing_is_written_while_the_user_must_wait(user: User) -> None:
    """A SKU with Exchange Online before the routing address shows, or a SKU the user lacks
    with no free unit: one wait or one shortage, and no write at all."""
    sku = user.skus[user.sku_part]
    actions = user.plan()
    if sku.has_exchange and not user.routed:
        assert [WaitForRouting(ROUTING)] == actions
    elif sku.sku_id not in user.current_skus and sku.free <= 0:
        assert [ReportShortage(user.sku_part, sku.sku_id)] == actions
    else:
        assert RemoveFromGroup("O365_License") == actions[-1]


@given(users())
def test_a_plan_applied_leaves_only_the_group_removal(user: User) -> None:
    """Planning again after a plan went through writes nothing: only the group removal."""
    actions = user.plan()
    if actions[-1] == RemoveFromGroup("O365_License"):
        assert [RemoveFromGroup("O365_License")] == user.after(actions).plan()
