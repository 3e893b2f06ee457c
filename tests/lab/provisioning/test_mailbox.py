"""The mailbox step end to end: lab AD (Samba), the lab Exchange endpoint, and the service's
directory adapter and Exchange client, with passwords resolved from the lab Key Vault."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from ldap3 import BASE, MODIFY_ADD, MODIFY_REPLACE, Connection
from structlog.testing import capture_logs

from lab import exchange as lab_exchange
from lab.core import Lab
from shared.ad.directory import Directory
from shared.config import Settings
from shared.errors import PermanentError, TransientError
from shared.exchange.client import ExchangeClient
from shared.provisioning.mailbox import LICENCE_COUNTRY_FIX, Change, MailboxStep
from shared.results import Stale
from shared.secrets import SecretProvider

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def provider(settings: Settings) -> Iterator[SecretProvider]:
    """The service's secret provider, reading the lab Key Vault."""
    secrets_ = SecretProvider.from_settings(settings)
    yield secrets_
    secrets_.close()


@pytest.fixture(scope="module")
def directory(settings: Settings, provider: SecretProvider) -> Iterator[Directory]:
    """The service's directory adapter, as the service account."""
    ad = Directory(settings.ad, settings.provisioning,
                   password=provider.resolve(settings.ad.password, setting="AD_PASSWORD"),
                   ca_bundle=settings.service.ca_bundle)
    yield ad
    ad.close()


def _client(settings: Settings, password: str) -> ExchangeClient:
    return ExchangeClient(settings.exchange, password=password,
                          ca_bundle=settings.service.ca_bundle)


@pytest.fixture(scope="module")
def exchange(settings: Settings, provider: SecretProvider) -> Iterator[ExchangeClient]:
    """The worker's Exchange client: one pool for the whole module."""
    client = _client(settings, provider.resolve(settings.exchange.password,
                                                setting="EXCHANGE_PASSWORD"))
    yield client
    client.close()


@pytest.fixture
def step(settings: Settings, directory: Directory, exchange: ExchangeClient) -> MailboxStep:
    return MailboxStep(settings, directory, exchange)


@pytest.fixture
def knobs(lab: Lab) -> Iterator[Callable[..., dict[str, Any]]]:
    """Change the Exchange endpoint's knobs for one test; reset afterwards."""
    lab_exchange.configure(lab, reset=True)
    yield lambda **changes: lab_exchange.configure(lab, **changes)
    lab_exchange.configure(lab, reset=True)


@pytest.fixture
def new_user(make_user, ad_admin: Connection, lab: Lab) -> Callable[..., Any]:
    """A user as the helpdesk creates it: licence E3, country NZ, in O365_Provision."""

    def make(**attributes: Any) -> Any:
        values = {"extensionAttribute1": "E3", "c": "NZ", "displayName": "Zoë O'Brien",
                  **attributes}
        user = make_user(**{k: v for k, v in values.items() if v is not None})
        group = f"CN=O365_Provision,{lab.settings['LAB_AD_GROUPS_OU']}"
        assert ad_admin.modify(group, {"member": [(MODIFY_ADD, [user.dn])]}), ad_admin.result
        return user

    return make


def _state(ad: Connection, dn: str) -> dict[str, Any]:
    attrs = ["mail", "mailNickname", "proxyAddresses", "targetAddress", "memberOf",
             "msExchRemoteRecipientType", "msExchRecipientTypeDetails",
             "msExchRecipientDisplayType", "uSNChanged"]
    assert ad.search(dn, "(objectClass=*)", BASE, attributes=attrs), ad.result
    entry = ad.entries[0]
    return {name: sorted(str(v) for v in entry[name].values) for name in attrs}


def _groups(state: dict[str, Any]) -> list[str]:
    return sorted(dn.split(",")[0][3:] for dn in state["memberOf"])


def test_user_becomes_remote_mailbox_and_moves_groups(step, new_user, ad_admin, settings):
    """A valid user gets every attribute Exchange writes for a remote mailbox, and moves from
    O365_Provision to O365_License; the outcome lists the changes for the audit log."""
    user = new_user()
    routing = f"{user.sam}@{settings.provisioning.routing_domain}"

    with capture_logs() as events:
        outcome = step.run(user.guid, correlation_id="c-1")

    state = _state(ad_admin, user.dn)
    expected = {
        "mail": [f"{user.sam}@o365lab.example"],
        "mailNickname": [user.sam],
        "proxyAddresses": sorted([f"SMTP:{user.sam}@o365lab.example", f"smtp:{routing}"]),
        "targetAddress": [f"SMTP:{routing}"],
        "msExchRemoteRecipientType": ["1"],
        "msExchRecipientTypeDetails": ["2147483648"],
        "msExchRecipientDisplayType": ["-2147483642"],
        "groups": ["O365_License"],
    }
    actual = {k: v for k, v in state.items() if k not in ("memberOf", "uSNChanged")}
    actual["groups"] = _groups(state)
    assert expected == actual
    assert ("done", routing) == (outcome.outcome, outcome.routing_address)
    assert Change("remote mailbox", None, routing) == outcome.changes[0]
    assert [Change("member of O365_License", "no", "yes"),
            Change("member of O365_Provision", "yes", "no")] == list(outcome.changes[-2:])
    done = [e for e in events if e["event"] == "mailbox_done"]
    assert [(user.sam, "mailbox", "c-1")] == [(e["user"], e["step"], e["correlation_id"])
                                             for e in done]


def test_second_run_changes_nothing(step, new_user, ad_admin, lab):
    """Running the step again for a provisioned user writes nothing (the user's uSNChanged
    stays the same): moved on to O365_License already, it is done with nothing to change (the
    licence step follows); put back in, Exchange is left alone and only the group move is done
    again."""
    user = new_user()
    step.run(user.guid, correlation_id="c-1")
    before = _state(ad_admin, user.dn)

    moved = step.run(user.guid, correlation_id="c-2")
    unchanged = _state(ad_admin, user.dn)
    group = f"CN=O365_Provision,{lab.settings['LAB_AD_GROUPS_OU']}"
    assert ad_admin.modify(group, {"member": [(MODIFY_ADD, [user.dn])]}), ad_admin.result
    again = step.run(user.guid, correlation_id="c-3")

    assert ("already-done", ()) == (moved.outcome, moved.changes)
    assert before == unchanged
    assert ("done", [("member of O365_Provision", "yes", "no")]) == (
        again.outcome, [(c.what, c.before, c.after) for c in again.changes])


def test_a_new_user_costs_one_cmdlet_and_a_provisioned_one_two(step, new_user, ad_admin, lab):
    """Enable-RemoteMailbox goes first: a new user costs one cmdlet. A user who is a remote
    mailbox already gets Exchange's "already mail-enabled" answer, and only then is
    Get-RemoteMailbox asked: two cmdlets, and the mailbox counts as done."""
    user = new_user()
    start = lab_exchange.status(lab)["stats"]["cmdlets_run"]
    step.run(user.guid, correlation_id="c-1")
    first = lab_exchange.status(lab)["stats"]["cmdlets_run"] - start
    group = f"CN=O365_Provision,{lab.settings['LAB_AD_GROUPS_OU']}"
    assert ad_admin.modify(group, {"member": [(MODIFY_ADD, [user.dn])]}), ad_admin.result
    again = step.run(user.guid, correlation_id="c-2")
    second = lab_exchange.status(lab)["stats"]["cmdlets_run"] - start - first
    assert (1, 2, "done") == (first, second, again.outcome)


def test_a_refusal_in_other_words_is_looked_at_before_deciding(step, new_user, ad_admin, lab,
                                                               knobs):
    """Exchange refusing a re-run's Enable-RemoteMailbox with the same RecipientTaskException in
    other words (another release or language) still makes the step look with Get-RemoteMailbox:
    a user whose remote mailbox is right is done, never failed; a user who is a mail user
    instead gets Exchange's own refusal, permanent, with its text."""
    user = new_user()
    step.run(user.guid, correlation_id="c-1")
    group = f"CN=O365_Provision,{lab.settings['LAB_AD_GROUPS_OU']}"
    assert ad_admin.modify(group, {"member": [(MODIFY_ADD, [user.dn])]}), ad_admin.result
    other_words = "Der Benutzer ist bereits E-Mail-aktiviert."
    knobs(already_enabled_text=other_words)
    start = lab_exchange.status(lab)["stats"]["cmdlets_run"]

    with capture_logs() as events:
        again = step.run(user.guid, correlation_id="c-2")
    cmdlets = lab_exchange.status(lab)["stats"]["cmdlets_run"] - start

    mail_user = new_user()
    assert ad_admin.modify(mail_user.dn, {
        "msExchRecipientTypeDetails": [(MODIFY_REPLACE, ["128"])]}), ad_admin.result
    with pytest.raises(PermanentError) as refused:
        step.run(mail_user.guid, correlation_id="c-3")

    looked = [e for e in events if e["event"] == "mailbox_refusal_was_already_done"]
    assert ("done", 2, [False]) == (again.outcome, cmdlets, [e["said_so"] for e in looked])
    assert (other_words in refused.value.reason, mail_user.sam) == (True, refused.value.user)


@pytest.mark.parametrize(("attributes", "reason"), [
    ({"extensionAttribute1": None}, "the licence attribute extensionAttribute1 is empty"),
    ({"c": None}, "the country (c) is not set"),
    ({"extensionAttribute1": "E9"}, "the licence 'E9' in extensionAttribute1 is not one of"),
    ({"c": "XX"}, "the country 'XX' in c is not an ISO 3166-1 alpha-2 country code"),
])
def test_invalid_user_is_reported_and_left_in_place(step, new_user, ad_admin, lab, attributes,
                                                    reason):
    """A user without a mapped licence or a real country gets the old script's advice as a
    PermanentError, stays in O365_Provision, and Exchange is never asked (XX used to pass this
    step and fail only at the licence step, after the remote mailbox was made)."""
    user = new_user(**attributes)
    cmdlets = lab_exchange.status(lab)["stats"]["cmdlets_run"]

    with pytest.raises(PermanentError) as caught:
        step.run(user.guid, correlation_id="c-1")

    error = caught.value
    assert (user.sam, "mailbox") == (error.user, error.step)
    assert error.fix.endswith(f"({LICENCE_COUNTRY_FIX})")
    assert reason in error.reason
    state = _state(ad_admin, user.dn)
    assert (["O365_Provision"], []) == (_groups(state), state["msExchRecipientTypeDetails"])
    assert cmdlets == lab_exchange.status(lab)["stats"]["cmdlets_run"]


@pytest.mark.parametrize(("fault", "enabled_by_retry"), [
    # Enable-RemoteMailbox is the first cmdlet (the look comes only after "already enabled").
    ({"kind": "http500", "action": "Command", "skip": 0}, True),
    ({"kind": "drop", "action": "Command", "skip": 0}, True),
    # Enable-RemoteMailbox runs, then its answer is lost: the retry must find it done.
    ({"kind": "drop", "action": "Receive", "skip": 0, "when": "after"}, False),
])
def test_fault_is_transient_and_next_attempt_succeeds(step, new_user, ad_admin, knobs, fault,
                                                      enabled_by_retry):
    """A 500 or a dropped connection is a TransientError for this user, who stays in
    O365_Provision; the next attempt finishes the job."""
    user = new_user()
    knobs(faults=[{**fault, "count": 1}])

    with pytest.raises(TransientError) as caught:
        step.run(user.guid, correlation_id="c-1")
    in_between = _groups(_state(ad_admin, user.dn))
    outcome = step.run(user.guid, correlation_id="c-2")

    assert (user.sam, "mailbox") == (caught.value.user, caught.value.step)
    assert ["O365_Provision"] == in_between
    assert "done" == outcome.outcome
    assert enabled_by_retry == any(c.what == "remote mailbox" for c in outcome.changes)
    assert ["O365_License"] == _groups(_state(ad_admin, user.dn))


def test_wrong_password_is_permanent_without_password(settings, directory, new_user, ad_admin):
    """A wrong Exchange password is a PermanentError naming the account, not the password;
    the user stays in O365_Provision."""
    user = new_user()
    wrong = f"Wrong-{secrets.token_hex(8)}"
    with (_client(settings, wrong) as bad, capture_logs() as events,
          pytest.raises(PermanentError) as caught):
        MailboxStep(settings, directory, bad).run(user.guid, correlation_id="c-1")

    error = caught.value
    assert (user.sam, "mailbox") == (error.user, error.step)
    assert "refused the credentials of O365LAB\\svc-exchange" in error.reason
    assert all(wrong not in text for text in (str(error), error.fix, repr(error.args)))
    assert [] == [e for e in events if wrong in repr(e)]
    assert ["mailbox_failed"] == [e["event"] for e in events if e.get("user") == user.sam]
    assert ["O365_Provision"] == _groups(_state(ad_admin, user.dn))


def test_remote_mailbox_with_other_routing_is_permanent(step, exchange, new_user, ad_admin):
    """A user that already is a remote mailbox routed elsewhere is not touched: PermanentError,
    and the user stays in O365_Provision."""
    user = new_user()
    exchange.enable_remote_mailbox(str(user.guid), f"{user.sam}@elsewhere.mail.onmicrosoft.com")

    with pytest.raises(PermanentError) as caught:
        step.run(user.guid, correlation_id="c-1")

    assert "routed to" in caught.value.reason
    assert ["O365_Provision"] == _groups(_state(ad_admin, user.dn))


def test_deleted_user_is_permanent(step):
    """A message for a user that no longer exists is a PermanentError, not a crash."""
    with pytest.raises(PermanentError):
        step.run(uuid.uuid4(), correlation_id="c-1")


def test_a_user_outside_o365_provision_is_stale_and_untouched(step, make_user, ad_admin, lab):
    """A message naming a user who is not in O365_Provision changes nothing, whoever wrote it:
    the step says the message is stale, and Exchange is never asked."""
    user = make_user(extensionAttribute1="E3", c="NZ")
    cmdlets = lab_exchange.status(lab)["stats"]["cmdlets_run"]
    outcome = step.run(user.guid, correlation_id="c-1")
    assert Stale(f"{user.sam} is not a member of O365_Provision", user=user.sam) == outcome
    assert cmdlets == lab_exchange.status(lab)["stats"]["cmdlets_run"]
    assert [] == _state(ad_admin, user.dn)["msExchRecipientTypeDetails"]


def test_the_alias_is_derived_from_the_upn_as_exchange_would(step, new_user, ad_admin,
                                                            settings):
    """A UPN with letters Exchange writes as best-fit ASCII: the step passes the alias it
    derived (Zoë.Müller → Zoe.Mueller) and routes to it, and the audit says it was derived."""
    suffix = uuid.uuid4().hex[:6]
    user = new_user(userPrincipalName=f"Zoë.Müller{suffix}@o365lab.example")
    outcome = step.run(user.guid, correlation_id="c-1")
    alias = f"Zoe.Mueller{suffix}"
    routing = f"{alias}@{settings.provisioning.routing_domain}".lower()
    state = _state(ad_admin, user.dn)
    assert ("done", routing) == (outcome.outcome, outcome.routing_address)
    assert [alias] == state["mailNickname"]
    assert Change("alias (derived)", None, alias) in outcome.changes


def test_a_routing_address_someone_else_holds_is_the_user_s_error(step, new_user, make_user,
                                                                 ad_admin, settings, lab):
    """The address the user would get is already another object's: a PermanentError naming
    that object and the fix, before Exchange is asked to enable anything."""
    user = new_user()
    routing = f"{user.sam}@{settings.provisioning.routing_domain}"
    holder = make_user(proxyAddresses=[f"smtp:{routing}"])
    cmdlets = lab_exchange.status(lab)["stats"]["cmdlets_run"]
    with pytest.raises(PermanentError) as caught:
        step.run(user.guid, correlation_id="c-1")
    assert f"the routing address {routing} is already used by {holder.dn}" == \
        caught.value.reason
    assert "give the user a free alias in mailNickname" in caught.value.fix
    assert 0 == lab_exchange.status(lab)["stats"]["cmdlets_run"] - cmdlets  # Exchange not asked
    assert ["O365_Provision"] == _groups(_state(ad_admin, user.dn))
