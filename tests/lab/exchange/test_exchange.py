"""The lab's Exchange endpoint and the service's PSRP client, against each other and the lab AD.

Every test talks to the real endpoint over HTTPS with NTLM (or Basic), and reads the result
back from Samba over LDAPS as the domain admin.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from ldap3 import BASE, Connection
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import WSMan

from lab import exchange as lab_exchange
from lab.core import Lab
from shared.config import Settings
from shared.errors import PermanentError, TransientError
from shared.exchange.client import ExchangeClient

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[3]

INJECTIONS = ('x"; Remove-Mailbox -Identity *; "', "$(Get-Process)", "*", "'; Get-Process; '")


@pytest.fixture
def ad(ad_admin: Connection) -> Connection:
    """The lab's domain admin connection (conftest's ``ad_admin``)."""
    return ad_admin


def read(ad: Connection, dn: str) -> dict[str, Any]:
    """The Exchange attributes of ``dn`` as AD holds them."""
    attrs = ["mail", "mailNickname", "proxyAddresses", "targetAddress",
             "msExchRemoteRecipientType", "msExchRecipientTypeDetails",
             "msExchRecipientDisplayType"]
    ad.search(dn, "(objectClass=*)", BASE, attributes=attrs)
    entry = ad.entries[0]
    return {name: entry[name].values for name in attrs}


@pytest.fixture
def knobs(lab: Lab) -> Iterator[Callable[..., dict[str, Any]]]:
    """Change the endpoint's knobs for one test; they are reset afterwards."""
    lab_exchange.configure(lab, reset=True)
    yield lambda **changes: lab_exchange.configure(lab, **changes)
    lab_exchange.configure(lab, reset=True)


@pytest.fixture
def client(settings: Settings, lab: Lab) -> Iterator[ExchangeClient]:
    """The service's client, as a worker builds it (password already resolved)."""
    exchange = ExchangeClient(settings.exchange, password=lab.settings["LAB_EXCHANGE_PASSWORD"],
                              ca_bundle=settings.service.ca_bundle)
    yield exchange
    exchange.close()


def test_enable_writes_what_exchange_writes(client, make_user, ad, settings):
    """Enable-RemoteMailbox sets alias, primary SMTP, both proxy addresses, targetAddress and
    the three msExch* values Exchange writes for a remote user mailbox."""
    user = make_user()
    guid, sam, dn = user.guid, user.sam, user.dn
    routing = f"{sam}@{settings.provisioning.routing_domain}"

    mailbox = client.enable_remote_mailbox(str(guid), routing)

    expected = {
        "mail": [f"{sam}@o365lab.example"],
        "mailNickname": [sam],
        "proxyAddresses": sorted([f"SMTP:{sam}@o365lab.example", f"smtp:{routing}"]),
        "targetAddress": [f"SMTP:{routing}"],
        "msExchRemoteRecipientType": [1],
        "msExchRecipientTypeDetails": [2147483648],
        "msExchRecipientDisplayType": [-2147483642],
    }
    actual = read(ad, dn)
    actual["proxyAddresses"] = sorted(actual["proxyAddresses"])
    actual = {k: [int(v) if k.startswith("msExch") else v for v in vals]
              for k, vals in actual.items()}
    assert expected == actual
    assert (routing, "RemoteUserMailbox") == (mailbox.remote_routing_address,
                                              mailbox.recipient_type_details)
    found = client.get_remote_mailbox(str(guid))
    assert found is not None
    assert (routing, sam) == (found.remote_routing_address, found.alias)


def test_get_unknown_is_none_and_pool_is_reused(client, lab):
    """Get-RemoteMailbox for nobody answers None, and repeated calls share one runspace pool
    (one open session on the server)."""
    lab_exchange.configure(lab, close_sessions=True)  # none left by an earlier module's test
    for _ in range(4):
        assert client.get_remote_mailbox(str(uuid.uuid4())) is None
    status = lab_exchange.status(lab)
    assert 1 == client.pools_opened
    assert 1 == status["sessions"].get(lab.settings["EXCHANGE_USER"].lower())


def test_finished_pipelines_are_released(client):
    """Each cmdlet's pipeline is closed once its output is read, so a pool reused for
    thousands of users holds none of them (pypsrp keeps every pipeline until it is closed)."""
    for _ in range(5):
        client.get_remote_mailbox(str(uuid.uuid4()))
    assert 0 == len(client._pool.pipelines)
    assert 1 == client.pools_opened


@pytest.mark.parametrize("identity", INJECTIONS)
def test_injection_looking_identity_is_a_literal_value(client, lab, identity):
    """An identity that looks like PowerShell reaches the cmdlet as one literal value: Exchange
    reports exactly that string as not found, and no other cmdlet runs."""
    before = lab_exchange.status(lab)["stats"]["cmdlets_run"]

    assert client.get_remote_mailbox(identity) is None
    with pytest.raises(PermanentError) as caught:
        client.enable_remote_mailbox(identity, "x@o365lab.mail.onmicrosoft.com")

    assert f"object '{identity}' couldn't be found on 'dc1.o365lab.example'" in caught.value.reason
    assert 2 == lab_exchange.status(lab)["stats"]["cmdlets_run"] - before


def test_user_named_like_code_is_matched_by_name_only(client, make_user, ad, settings):
    """A user whose name is ``$(Get-Process)`` is found by that exact name, and only that user
    becomes a mailbox."""
    named = make_user(cn="$(Get-Process)")
    guid, sam, dn = named.guid, named.sam, named.dn
    other_dn = make_user().dn

    mailbox = client.enable_remote_mailbox("$(Get-Process)",
                                           f"{sam}@{settings.provisioning.routing_domain}")

    assert str(guid) == mailbox.guid
    assert [2147483648] == [int(v) for v in read(ad, dn)["msExchRecipientTypeDetails"]]
    assert [] == read(ad, other_dn)["msExchRecipientTypeDetails"]


def _pool(lab: Lab, **kw: Any) -> RunspacePool:
    url = urlparse(lab.settings["LAB_EXCHANGE_URL"])  # the endpoint itself, never the relay
    wsman = WSMan(url.hostname, port=url.port, path="PowerShell", ssl=True,
                  username=lab.settings["EXCHANGE_USER"],
                  password=kw.pop("password", lab.settings["LAB_EXCHANGE_PASSWORD"]),
                  auth=kw.pop("auth", "ntlm"), cert_validation=lab.settings["CA_BUNDLE"])
    return RunspacePool(wsman, configuration_name="Microsoft.Exchange")


def test_scripts_and_unknown_cmdlets_are_refused(lab):
    """Like Exchange's restricted endpoint: a script fails with the no-language error, a cmdlet
    the endpoint does not have fails with CommandNotFoundException; both end the pipeline
    Failed."""
    with _pool(lab) as pool:
        script = PowerShell(pool)
        script.add_script("Get-RemoteMailbox | Remove-Mailbox")
        script.invoke()
        unknown = PowerShell(pool)
        unknown.add_cmdlet("Remove-Mailbox").add_parameter("Identity", "*")
        unknown.invoke()

    assert (True, "ScriptsNotAllowed") == (script.had_errors, script.streams.error[0].fq_error)
    assert (True, "CommandNotFoundException") == (unknown.had_errors,
                                                  unknown.streams.error[0].reason)


def test_ambiguous_and_already_enabled_are_permanent(client, make_user, lab, settings):
    """An identity matching two users (name of one, sAMAccountName of another), and a user
    that already is mail-enabled, are permanent errors with Exchange's wording."""
    name = f"twin{secrets.token_hex(3)}"
    make_user(cn=name)  # one user has it as its name ...
    make_user(cn=f"Other {name}", sam=name)  # ... another as its sAMAccountName
    with pytest.raises(PermanentError) as twin:
        client.enable_remote_mailbox(name, "twin@o365lab.mail.onmicrosoft.com")
    other = make_user()
    guid, sam = other.guid, other.sam
    routing = f"{sam}@{settings.provisioning.routing_domain}"
    client.enable_remote_mailbox(str(guid), routing)
    with pytest.raises(PermanentError) as again:
        client.enable_remote_mailbox(str(guid), routing)

    assert f"'{name}' matches multiple entries" in twin.value.reason
    assert "is already mail-enabled" in again.value.reason


def test_an_alias_exchange_refuses_is_a_fix_for_the_helpdesk(client, make_user, settings):
    """Exchange refuses an alias with a space as a parameter binding error: a PermanentError
    whose fix points at the user's attributes, never "a bug in the service"."""
    user = make_user()
    routing = f"{user.sam}@{settings.provisioning.routing_domain}"
    with pytest.raises(PermanentError) as caught:
        client.enable_remote_mailbox(str(user.guid), routing, alias="ann smith")
    assert "contains invalid characters" in caught.value.reason
    assert "bug" not in caught.value.fix
    assert "mailNickname and userPrincipalName" in caught.value.fix


@pytest.mark.parametrize("auth", ["ntlm", "basic"])
def test_wrong_password_is_permanent_and_never_shown(settings, lab, auth):
    """A wrong password yields a PermanentError naming the account, without the password."""
    wrong = f"Wrong-{secrets.token_hex(8)}"
    exchange_settings = settings.exchange.model_copy(update={"auth": auth})
    before = lab_exchange.status(lab)["stats"]["auth_failures"]
    with ExchangeClient(exchange_settings, password=wrong,
                        ca_bundle=settings.service.ca_bundle) as bad, \
            pytest.raises(PermanentError) as caught:
        bad.get_remote_mailbox("anyone")

    error = caught.value
    assert "refused the credentials of" in error.reason
    assert all(wrong not in text for text in (str(error), error.reason, error.fix, repr(error)))
    assert lab_exchange.status(lab)["stats"]["auth_failures"] > before


@pytest.mark.parametrize(("kind", "action"), [("http500", "Command"), ("drop", "Receive"),
                                              ("http500", "Create")])
def test_fault_is_transient_and_next_call_succeeds(client, knobs, kind, action):
    """An HTTP 500 or a dropped connection is a TransientError; the next call opens a new pool
    and succeeds."""
    assert client.get_remote_mailbox("warm-up") is None
    if action == "Create":
        client.close()
    knobs(faults=[{"kind": kind, "action": action, "count": 1}])

    with pytest.raises(TransientError):
        client.get_remote_mailbox("anyone")
    assert client.get_remote_mailbox("anyone") is None
    assert client.pools_opened >= 2


def test_session_limit_is_transient_with_delay(settings, lab, knobs, client):
    """Past Exchange's per-user session limit a new pool is refused; that is transient and
    says when to retry."""
    knobs(max_sessions_per_user=1, close_sessions=True)
    assert client.get_remote_mailbox("first") is None
    with ExchangeClient(settings.exchange, password=lab.settings["LAB_EXCHANGE_PASSWORD"],
                        ca_bundle=settings.service.ca_bundle) as second:
        with pytest.raises(TransientError) as caught:
            second.get_remote_mailbox("second")
        client.close()
        assert second.get_remote_mailbox("second") is None

    assert "maximum number of connections allowed : 1" in caught.value.reason
    assert 60.0 == caught.value.retry_after


_WORKER_THAT_DIES = """
import sys, time
from shared.config import load_settings
from shared.exchange.client import ExchangeClient
settings = load_settings(sys.argv[1])
client = ExchangeClient(settings.exchange, password=sys.argv[2],
                        ca_bundle=settings.service.ca_bundle, shell_idle_timeout=2)
client.get_remote_mailbox("dies with its pool open")
print("open", flush=True)
time.sleep(120)
"""


def test_a_killed_workers_pool_is_dropped_after_the_idle_timeout_it_asked_for(
        settings, lab, knobs):
    """A worker SIGKILLed with its pool open cannot delete its shell; the pool asked Exchange
    for a short idle timeout, so it stops counting against the per-user limit then, and the
    next worker gets a pool without anyone's hand."""
    knobs(max_sessions_per_user=1, close_sessions=True)
    password = lab.settings["LAB_EXCHANGE_PASSWORD"]
    dying = subprocess.Popen([sys.executable, "-c", _WORKER_THAT_DIES, str(lab.settings_file),
                              password], stdout=subprocess.PIPE, cwd=REPO)
    try:
        assert dying.stdout is not None
        assert b"open\n" in iter(dying.stdout.readline, b"")  # after the worker's log lines
    finally:
        dying.kill()
        dying.wait()
    assert list(lab_exchange.status(lab)["sessions"].values()) == [1]  # the dead one's
    with ExchangeClient(settings.exchange, password=password,
                        ca_bundle=settings.service.ca_bundle, shell_idle_timeout=2) as next_one:
        with pytest.raises(TransientError) as refused:
            next_one.get_remote_mailbox("refused while the dead pool counts")
        time.sleep(2.5)
        assert next_one.get_remote_mailbox("after the idle timeout") is None
    assert "maximum number of connections allowed : 1" in refused.value.reason


def _quick_client(settings: Settings, lab: Lab, timeout: float) -> ExchangeClient:
    quick = settings.exchange.model_copy(update={"timeout_seconds": timeout})
    return ExchangeClient(quick, password=lab.settings["LAB_EXCHANGE_PASSWORD"],
                          ca_bundle=settings.service.ca_bundle)


def test_one_slow_receive_is_absorbed_by_the_resend(settings, lab, knobs):
    """A Receive that times out once is sent again with the same MessageID and gets the
    same answer, so the call still succeeds on the same pool."""
    with _quick_client(settings, lab, 1.0) as exchange:
        assert exchange.get_remote_mailbox("warm-up") is None
        knobs(faults=[{"kind": "slow", "action": "Receive", "seconds": 1.3, "count": 1}])
        assert exchange.get_remote_mailbox("slow once") is None
        assert 1 == exchange.pools_opened


@pytest.mark.slow
def test_slow_receive_times_out_as_transient(settings, lab, knobs):
    """A Receive slower than EXCHANGE_TIMEOUT_SECONDS, twice, is a TransientError; the next
    call opens a new pool and succeeds."""
    with _quick_client(settings, lab, 1.0) as exchange:
        assert exchange.get_remote_mailbox("warm-up") is None
        knobs(faults=[{"kind": "slow", "action": "Receive", "seconds": 2.5, "count": 2}])
        with pytest.raises(TransientError) as caught:
            exchange.get_remote_mailbox("slow")
        assert exchange.get_remote_mailbox("after") is None

    assert "did not answer Get-RemoteMailbox within 1 s" in caught.value.reason
    assert 2 == exchange.pools_opened
