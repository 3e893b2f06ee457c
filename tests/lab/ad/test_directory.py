"""shared/ad/directory.py and shared/store/cursors.py against the lab's Samba DC and Azurite.

The Directory binds as the lab's least-privileged service account (AD_USER), as in production;
the ``ad_admin`` fixture plays the administrator who changes groups behind its back."""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ldap3 import MODIFY_ADD, MODIFY_DELETE, Connection

from lab import ad
from lab.core import REPO, Lab
from shared.ad.directory import Directory
from shared.config import (
    AdSettings,
    ProvisioningSettings,
    ServiceSettings,
    StorageSettings,
    load_settings,
)
from shared.errors import PermanentError, TransientError
from shared.secrets import SecretProvider, is_reference
from shared.store.cursors import CursorStore
from tests.conftest import LabUser

pytestmark = pytest.mark.lab

MakeUser = Callable[..., LabUser]


def _ad(lab: Lab, **overrides: str) -> AdSettings:
    return AdSettings(_env_file=lab.settings_file, **overrides)  # type: ignore[call-arg]


def _password(lab: Lab, ad: AdSettings) -> str:
    """The service account's password, resolved as the service does (a Key Vault reference
    on the full lab, the value itself on a lab without a vault)."""
    if not is_reference(ad.password.get_secret_value()):  # a side lab has no vault
        return ad.password.get_secret_value()
    return SecretProvider.from_settings(load_settings(lab.settings_file)).resolve(
        ad.password, setting="AD_PASSWORD"
    )


def _directory(lab: Lab, *, password: str | None = None, ca_bundle: Path | None = None,
               **overrides: str) -> Directory:
    ad = _ad(lab, **overrides)
    service = ServiceSettings(_env_file=lab.settings_file)  # type: ignore[call-arg]
    return Directory(
        ad, ProvisioningSettings(_env_file=lab.settings_file),  # type: ignore[call-arg]
        password=password if password is not None else _password(lab, ad),
        ca_bundle=ca_bundle or service.ca_bundle, collect_usage=True,
    )


@pytest.fixture
def directory(lab: Lab) -> Iterator[Directory]:
    """A Directory bound as the service account, closed after the test."""
    d = _directory(lab)
    yield d
    d.close()


def _guid(conn: Connection, dn: str) -> uuid.UUID:
    assert conn.search(dn, "(objectClass=*)", "BASE", attributes=["objectGUID"]), conn.result
    return uuid.UUID(bytes_le=conn.response[0]["raw_attributes"]["objectGUID"][0])


def _members(conn: Connection, group_dn: str) -> set[str]:
    assert conn.search(group_dn, "(objectClass=group)", "BASE", attributes=["member"])
    return {dn.lower() for dn in conn.response[0]["attributes"].get("member", [])}


def test_reads_user_by_guid_with_the_service_attributes(
    directory: Directory, make_user: MakeUser
) -> None:
    """user(guid) returns what the service needs; immutable_id as Entra Connect sets it."""
    user = make_user(cn="Zoë O'Brien", givenName="Zoë", sn="O'Brien", displayName="Zoë O'Brien",
                     extensionAttribute1="Exchange 2", c="IE", mailNickname="zobrien",
                     targetAddress="SMTP:zobrien@o365lab.mail.onmicrosoft.com",
                     msExchRemoteRecipientType=4, proxyAddresses=["SMTP:zoe@o365lab.example"],
                     mail="zoe@o365lab.example")
    found = directory.user(user.guid)
    expected = (user.guid, user.dn.lower(), user.sam, "Zoë O'Brien", "Exchange 2", "IE",
                "zobrien", "SMTP:zobrien@o365lab.mail.onmicrosoft.com", 4,
                ("SMTP:zoe@o365lab.example",), "zoe@o365lab.example",
                base64.b64encode(user.guid.bytes_le).decode())
    actual = (found.guid, found.dn.lower(), found.sam, found.display_name, found.license_name,
              found.country, found.mail_nickname, found.target_address,
              found.remote_recipient_type, found.proxy_addresses, found.mail, found.immutable_id)
    assert expected == actual
    assert found == directory.user_by_sam(user.sam)


def test_a_deleted_user_is_a_permanent_error(
    directory: Directory, make_user: MakeUser, ad_admin: Connection
) -> None:
    """Reading a user that was deleted fails permanently, naming the GUID."""
    user = make_user()
    assert ad_admin.delete(user.dn)
    with pytest.raises(PermanentError) as caught:
        directory.user(user.guid)
    assert str(user.guid) == caught.value.user


def test_membership_changes_are_idempotent(
    directory: Directory, make_user: MakeUser, ad_admin: Connection
) -> None:
    """add_member/remove_member report whether they changed anything; repeats are no-ops."""
    user = directory.user(make_user().guid)
    group_dn = directory.group_dn("O365_License")
    results = [directory.add_member("O365_License", user),
               directory.add_member("O365_License", user)]
    inside = user.dn.lower() in _members(ad_admin, group_dn)
    results += [directory.remove_member("O365_License", user),
                directory.remove_member("O365_License", user)]
    assert [True, False, True, False] == results
    assert (True, False) == (inside, user.dn.lower() in _members(ad_admin, group_dn))


def test_service_account_cannot_change_other_groups(
    directory: Directory, make_user: MakeUser
) -> None:
    """Least privilege: the service account may not change an admin-role group."""
    user = directory.user(make_user().guid)
    with pytest.raises(PermanentError) as caught:
        directory.add_member("Global Administrator", user)
    assert "insufficientAccessRights" in str(caught.value)


POLL_SCRIPT = """
import json, sys
from shared.config import AdSettings, ProvisioningSettings, ServiceSettings, StorageSettings
from shared.store.cursors import CursorStore
from shared.ad.directory import Directory
from shared.config import load_settings
from shared.secrets import SecretProvider
env, group, cursor = sys.argv[1:4]
ad = AdSettings(_env_file=env)
provider = SecretProvider.from_settings(load_settings(env))
password = provider.resolve(ad.password, setting="AD_PASSWORD")
d = Directory(ad, ProvisioningSettings(_env_file=env), password=password,
              ca_bundle=ServiceSettings(_env_file=env).ca_bundle)
store = CursorStore(StorageSettings(_env_file=env))
delta = d.poll(group, store.get(cursor))
store.put(cursor, delta.cookie)
print(json.dumps({"added": sorted(map(str, delta.added)),
                  "removed": sorted(map(str, delta.removed)), "full": delta.full}))
"""


def test_dirsync_reports_exactly_the_changes_and_the_cookie_survives_a_new_process(
    lab: Lab, directory: Directory, make_user: MakeUser, make_group: Callable[..., LabUser],
    ad_admin: Connection,
) -> None:
    """A poll returns the members added and removed since the last cookie, no more; the cookie
    kept in Table storage lets a new process continue where the last one stopped."""
    a, b, c, d = (make_user() for _ in range(4))
    group = make_group(members=[a.dn, b.dn])
    store = CursorStore(StorageSettings(_env_file=lab.settings_file))  # type: ignore[call-arg]
    cursor = f"dirsync-test-{uuid.uuid4().hex[:8]}"

    first = directory.poll(group.sam, None)
    store.put(cursor, first.cookie)
    ad_admin.modify(group.dn, {"member": [(MODIFY_ADD, [c.dn])]})
    ad_admin.modify(group.dn, {"member": [(MODIFY_DELETE, [a.dn])]})
    second = directory.poll(group.sam, store.get(cursor))
    store.put(cursor, second.cookie)
    quiet = directory.poll(group.sam, second.cookie)

    ad_admin.modify(group.dn, {"member": [(MODIFY_ADD, [d.dn]), (MODIFY_DELETE, [b.dn])]})
    run = subprocess.run(
        [sys.executable, "-c", POLL_SCRIPT, str(lab.settings_file), group.sam, cursor],
        capture_output=True, text=True, cwd=REPO, check=True, timeout=60,
    )
    third = json.loads(run.stdout.strip().splitlines()[-1])  # after any log lines

    assert (True, {a.guid, b.guid}, []) == (first.full, set(first.added), first.removed)
    assert (False, [c.guid], [a.guid]) == (second.full, second.added, second.removed)
    assert ([], []) == (quiet.added, quiet.removed)
    assert {"added": [str(d.guid)], "removed": [str(b.guid)], "full": False} == third
    store.delete(cursor)


def test_a_cookie_the_dc_rejects_starts_a_full_read(
    directory: Directory, make_user: MakeUser, make_group: Callable[..., LabUser]
) -> None:
    """A cookie the DC does not accept (another DC's, a restored DC's) gives a full read."""
    a = make_user()
    group = make_group(members=[a.dn])
    delta = directory.poll(group.sam, b"MSDS" + b"\x00" * 60)
    assert (True, [a.guid]) == (delta.full, delta.added)


def test_nested_members_are_expanded_once_despite_a_cycle(
    directory: Directory, make_user: MakeUser, make_group: Callable[..., LabUser],
    ad_admin: Connection,
) -> None:
    """group_members(nested=True) returns the users of nested groups, and ends on a cycle."""
    a, b, c = make_user(), make_user(), make_user()
    inner = make_group(members=[c.dn])
    middle = make_group(members=[b.dn, inner.dn])
    outer = make_group(members=[a.dn, middle.dn])
    ad_admin.modify(inner.dn, {"member": [(MODIFY_ADD, [outer.dn])]})  # the cycle
    nested = directory.group_members(outer.sam, nested=True)
    direct = directory.group_members(outer.sam)
    assert ({a.guid, b.guid, c.guid}, 3) == (set(nested), len(nested))
    assert {a.guid, middle.guid} == set(direct)


@pytest.mark.parametrize("name", ["*)(objectClass=*", ',+"\\<>;'])
def test_names_with_filter_and_dn_syntax_reach_that_user_only(
    directory: Directory, make_user: MakeUser, ad_admin: Connection, name: str
) -> None:
    """A user named with LDAP filter or DN metacharacters is found, and changed, as that user
    and no other: filters are RFC 4515-escaped and DNs RFC 4514-escaped."""
    decoys = [make_user(cn=f"decoy {i}") for i in range(3)]
    target = make_user(cn=f"Weird {name}", displayName=name)
    group_dn = directory.group_dn("O365_Provision")
    before = _members(ad_admin, group_dn)
    user = directory.user(target.guid)
    changed = directory.add_member("O365_Provision", user)
    after = _members(ad_admin, group_dn)
    directory.remove_member("O365_Provision", user)
    assert (True, target.guid, name) == (changed, user.guid, user.display_name)
    assert {user.dn.lower()} == after - before
    assert all(decoy.dn.lower() not in after for decoy in decoys)


@pytest.mark.parametrize("name", ["*)(objectClass=*", "a*)(|(cn=*"])
def test_sam_and_group_lookups_escape_the_filter(
    directory: Directory, make_user: MakeUser, make_group: Callable[..., LabUser],
    ad_admin: Connection, name: str,
) -> None:
    """user_by_sam and group_dn find exactly the named object when the name is filter syntax."""
    make_user()
    sam = f"x{uuid.uuid4().hex[:6]}"
    target = make_user(cn=f"{sam} {name}", sam=sam)
    group = make_group(name=f"Team {name}")
    make_group(name="Team other")
    assert target.guid == directory.user_by_sam(sam).guid
    assert group.guid == _guid(ad_admin, directory.group_dn(f"Team {name}"))
    with pytest.raises(PermanentError):
        directory.user_by_sam(name)


def _foreign_ca(tmp_path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some Other CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=9))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "other-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_an_untrusted_certificate_is_refused_with_a_clear_error(
    lab: Lab, tmp_path: Path
) -> None:
    """LDAPS to a DC whose certificate no CA in CA_BUNDLE issued fails, naming the URL and the
    fix, before any password is sent."""
    directory = _directory(lab, ca_bundle=_foreign_ca(tmp_path))
    with pytest.raises(PermanentError) as caught:
        directory.user_by_sam("Administrator")
    url = lab.settings["AD_URL"]
    assert f"the certificate of {url} is not trusted" in str(caught.value)
    assert "CA_BUNDLE" in caught.value.fix


def test_a_wrong_password_names_the_account_and_nothing_else(lab: Lab) -> None:
    """A bad password fails permanently with one line naming the account, not the password."""
    wrong = "Not-The-Password-42!"
    directory = _directory(lab, password=wrong)
    with pytest.raises(PermanentError) as caught:
        directory.user_by_sam("Administrator")
    account = lab.settings["AD_USER"]
    expected = (f"bind as {account} failed: invalid credentials. "
                "Fix: check AD_USER/AD_PASSWORD (Key Vault secret)")
    assert expected == str(caught.value)
    assert wrong not in repr(caught.value.__dict__)


def test_an_unreachable_dc_is_transient(lab: Lab) -> None:
    """No DC answering is a transient failure: the work is retried later."""
    # Direct: through the relay a URL's host only names the certificate to expect.
    directory = _directory(lab, url="ldaps://127.0.0.1:1", timeout_seconds="2",
                           transport="direct")
    with pytest.raises(TransientError) as caught:
        directory.user_by_sam("Administrator")
    assert "ldaps://127.0.0.1:1" in caught.value.reason


def test_a_broken_connection_is_reopened(directory: Directory, make_user: MakeUser) -> None:
    """The connection is reused, and re-opened once when it broke between calls."""
    user = make_user()
    directory.user(user.guid)
    directory.connection.socket.close()  # as a DC restart or an idle timeout would
    assert user.guid == directory.user(user.guid).guid


# -- a large group ------------------------------------------------------------------------

FIXTURE_OU = "OU=Fixtures"
BIG_GROUP = "Range5000"
BIG = 5000


def _build_big_group(conn: Connection) -> None:
    ou = f"{FIXTURE_OU},{ad.BASE_DN}"
    group_dn = f"CN={BIG_GROUP},{ou}"
    assert conn.add(ou, "organizationalUnit"), conn.result
    assert conn.add(group_dn, ["top", "group"], {"sAMAccountName": BIG_GROUP}), conn.result
    contacts = [f"CN=contact{i:05d},{ou}" for i in range(BIG)]
    for dn in contacts:
        assert conn.add(dn, ["top", "person", "organizationalPerson", "contact"]), conn.result
    for start in range(0, BIG, 500):
        batch = contacts[start:start + 500]
        assert conn.modify(group_dn, {"member": [(MODIFY_ADD, batch)]}), conn.result


@pytest.fixture(scope="session")
def big_group(lab: Lab) -> Iterator[tuple[Lab, set[uuid.UUID]]]:
    """A DC beside the session's, holding a group of 5,000 contacts: built once (adds on one
    connection, 500 members per modify), then restored from its snapshot in seconds."""
    side = ad.side_lab(lab, "range5000")
    try:
        ad.cached_state(side, "range5000", _build_big_group)
        conn = ad.admin_connection(side)
        entries = conn.extend.standard.paged_search(
            f"{FIXTURE_OU},{ad.BASE_DN}", "(objectClass=contact)", attributes=["objectGUID"],
            paged_size=1000, generator=False)
        conn.unbind()
        yield side, {uuid.UUID(bytes_le=e["raw_attributes"]["objectGUID"][0]) for e in entries}
    finally:
        side.stop_all()


@pytest.mark.slow
def test_a_group_of_5000_enumerates_completely_in_ranges_of_1500(
    big_group: tuple[Lab, set[uuid.UUID]],
) -> None:
    """group_members reads member;range=0-1499, 1500-2999, 3000-4499, 4500-* and returns every
    member once (Windows AD forces ranges; Samba answers them when asked)."""
    side, expected = big_group
    directory = _directory(side)
    directory.group_dn(BIG_GROUP)
    before = directory.connection.usage.search_operations
    members = directory.group_members(BIG_GROUP)
    searches = directory.connection.usage.search_operations - before
    directory.close()
    assert (BIG, expected, 4) == (len(members), set(members), searches)
