"""The premises: Active Directory (bind, the two groups, what the account may write on them,
reading users under AD_BASE_DN), Exchange (a session, ``Get-RemoteMailbox`` and, for leavers,
``Set-RemoteMailbox`` allowed: both asked about a name no recipient has, so nothing changes)
and, with ``SYNC_TRIGGER=connect``, the Entra Connect server's endpoint. AD rights are read,
never tried:
``allowedAttributesEffective`` is AD's constructed attribute listing what the bound account may
write on an object (MS-ADTS 3.1.1.4.5.4)."""

from __future__ import annotations

import uuid

from ldap3 import BASE, SUBTREE

from shared.ad.directory import Directory
from shared.config import Settings
from shared.errors import PermanentError
from shared.exchange.client import ExchangeClient
from shared.exchange.errors import record_reason
from shared.secrets import SecretProvider

from . import relay as relay_check
from . import vault as vault_check
from .probe import Failed, Probe, in_thread


def _needs(settings: Settings, peer: str, setting: str) -> tuple[str, ...]:
    """The checks a peer's own needs first: its password's secret, its hybrid connections."""
    secret = ((vault_check.check_name(setting),)
              if setting in vault_check.referenced(settings) else ())
    hops = relay_check.hops(settings).get(peer, [])
    return secret + tuple(relay_check.check_name(h.path) for h in hops)


def active_directory(settings: Settings, secrets: SecretProvider) -> str:
    """Bind, find both groups, read what the account may write on them and read one user."""
    ad, p = settings.ad, settings.provisioning
    password = secrets.resolve(ad.password, setting="AD_PASSWORD")
    directory = Directory(ad, p, password=password, ca_bundle=settings.service.ca_bundle)
    try:
        conn = directory.connection  # opens and binds, or raises what to do
        cannot = []
        for name in (p.provision_group, p.license_group):
            dn = directory.group_dn(name)
            conn.search(dn, "(objectClass=group)", BASE,
                        attributes=["allowedAttributesEffective"])
            entries = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
            allowed = {str(v).lower() for e in entries
                       for v in e["attributes"].get("allowedAttributesEffective") or []}
            if "member" not in allowed:
                cannot.append(dn)
        if cannot:
            raise Failed(f"{ad.user} may not write 'member' on {'; '.join(cannot)}",
                         "grant the account Write Members on each group, this object only "
                         "(docs/permissions.md: dsacls ... /G \"<account>:WP;member\")")
        attributes = ["objectGUID", "sAMAccountName", "userPrincipalName", "proxyAddresses",
                      p.license_attribute, p.country_attribute]
        conn.search(ad.base_dn, "(&(objectCategory=person)(objectClass=user))", SUBTREE,
                    attributes=attributes, size_limit=1)
        users = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
        if not users or not users[0]["raw_attributes"].get("objectGUID"):
            raise Failed(f"{ad.user} read no user (with objectGUID) under {ad.base_dn}",
                         "give the account Read all properties on user objects in the users' "
                         "OUs, and check AD_BASE_DN")
    finally:
        directory.close()
    return (f"bound as {ad.user}; {p.provision_group} and {p.license_group} found, 'member' "
            f"writable on both; users under {ad.base_dn} readable")


def exchange(settings: Settings, secrets: SecretProvider) -> str:
    """A session, and ``Get-RemoteMailbox`` and ``Set-RemoteMailbox`` (no change asked) of a
    name no recipient has: "not found" means the role lets the account run the cmdlet."""
    s = settings.exchange
    password = secrets.resolve(s.password, setting="EXCHANGE_PASSWORD")
    nobody = f"o365-check-{uuid.uuid4().hex[:12]}"
    with ExchangeClient(s, password=password, ca_bundle=settings.service.ca_bundle) as client:
        try:
            found = client.get_remote_mailbox(nobody)
        except PermanentError as exc:
            if "HTTP 401" in exc.reason:
                raise Failed(f"authentication refused: {exc.reason}", exc.fix) from None
            raise
        # Leavers: Set-RemoteMailbox -Identity <nobody>, nothing to set. A cmdlet outside the
        # account's role is Exchange's CommandNotFoundException (RBAC hides it).
        refused = client.invoke("Set-RemoteMailbox", [("Identity", nobody)]).errors
    if any(record_reason(e) == "CommandNotFoundException" for e in refused):
        raise Failed(f"{s.user} may not run Set-RemoteMailbox (leavers make mailboxes shared "
                     "with it)", "add Set-RemoteMailbox to the account's management role: "
                     "docs/permissions.md, Exchange Server")
    if found is not None:
        raise Failed(f"a remote mailbox '{nobody}' was found, a name no recipient should have",
                     "check EXCHANGE_URL points at Exchange")
    return f"session as {s.user} at {s.url}; Get-RemoteMailbox and Set-RemoteMailbox allowed"


def connect(settings: Settings, secrets: SecretProvider) -> str:
    """A session on the Connect server's constrained endpoint; nothing is run on it."""
    s = settings.connect
    password = secrets.resolve(s.password, setting="CONNECT_PASSWORD")
    with ExchangeClient(s.as_psrp(), password=password,
                        ca_bundle=settings.service.ca_bundle) as client:
        # Get-Command is visible in every constrained endpoint; its answer is not needed.
        client.invoke("Get-Command", [("Name", "Start-ADSyncSyncCycle")])
    return f"session as {s.user} at {s.url} ({s.configuration_name})"


def probes(settings: Settings) -> list[Probe]:
    """AD, Exchange, and Connect when it is the sync trigger."""
    secrets = SecretProvider.from_settings(settings)

    async def run_ad() -> str:
        return await in_thread(lambda: active_directory(settings, secrets))

    async def run_exchange() -> str:
        return await in_thread(lambda: exchange(settings, secrets))

    async def run_connect() -> str:
        return await in_thread(lambda: connect(settings, secrets))

    found = [Probe("active directory", run_ad, _needs(settings, "ad", "AD_PASSWORD")),
             Probe("exchange", run_exchange, _needs(settings, "exchange", "EXCHANGE_PASSWORD"))]
    if settings.sync.trigger == "connect":
        found.append(Probe("entra connect", run_connect,
                           _needs(settings, "connect", "CONNECT_PASSWORD")))
    return found
