"""The Exchange cmdlets the lab endpoint runs, against the lab AD over LDAP.

``Get-RemoteMailbox`` and ``Enable-RemoteMailbox`` resolve ``-Identity`` as Exchange's
``UserIdParameter`` does (objectGUID, distinguished name, ``DOMAIN\\sam``, UPN or SMTP
address, then name / sAMAccountName / alias), write the attributes Exchange writes for a
remote user mailbox, and fail with Exchange's error texts and exception types. Every
identity goes into LDAP filters escaped (RFC 4515): a value is only ever a value.

The endpoint writes as the domain admin, as Exchange's Trusted Subsystem does
(``directory``); the error texts are in ``errors``.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ldap3
from ldap3.utils.conv import escape_filter_chars

from . import mailbox_type
from .directory import Entry, LdapDirectory
from .errors import (
    CmdletError,
    address_in_use,
    ambiguous,
    command_not_found,
    not_found,
)

# The values Exchange writes on Enable-RemoteMailbox for a user mailbox in the cloud
# (Exchange's RecipientTypeDetails.RemoteUserMailbox, RemoteRecipientType.ProvisionMailbox,
# RecipientDisplayType.SyncedMailboxUser | ACLableMailboxUser).
REMOTE_USER_MAILBOX = 2147483648
PROVISION_MAILBOX = 1
SYNCED_MAILBOX_USER_DISPLAY = -2147483642
# RemoteUserMailbox, RemoteRoomMailbox, RemoteEquipmentMailbox, RemoteSharedMailbox.
REMOTE_TYPES = (2147483648, 8589934592, 17179869184, 34359738368)

_REMOTE_RECIPIENT_FLAGS = (
    (1, "ProvisionMailbox"),
    (2, "ProvisionArchive"),
    (4, "Migrated"),
    (8, "DeprovisionMailbox"),
    (16, "DeprovisionArchive"),
    (32, "RoomMailbox"),
    (64, "EquipmentMailbox"),
    (96, "SharedMailbox"),
)


# Exchange's alias: RFC 5322 dot-atom characters, no leading, trailing or double dot.
_ALIAS = re.compile(r"^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*$")
_SMTP = re.compile(r"^[^@\s\"<>(),;:\\\[\]]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


@dataclass
class Invocation:
    """One cmdlet call as it arrived: its name and its (name or None, value) pairs."""

    name: str
    parameters: Sequence[tuple[str | None, Any]]


@dataclass
class CmdletSpec:
    name: str
    parameters: tuple[str, ...]  # first one is positional 0
    mandatory: tuple[str, ...]
    run: Callable[[Exchange, dict[str, Any]], list[dict[str, Any]]]


COMMON_PARAMETERS = ("ErrorAction", "WarningAction", "Confirm", "WhatIf", "DomainController")


class Exchange:
    """The cmdlets of the restricted endpoint. Each call returns output objects as dicts
    (properties of a RemoteMailbox) or raises ``CmdletError``."""

    def __init__(
        self,
        directory: LdapDirectory,
        *,
        accepted_domain: str,
        routing_domain: str | None,
        server_name: str = "EX01",
    ) -> None:
        self.directory = directory
        self.accepted_domain = accepted_domain.lower()
        self.routing_domain = routing_domain.lower() if routing_domain else None
        self.server_name = server_name
        # The lab knob already_enabled_text: another wording of the same refusal.
        self.already_enabled_text: str | None = None
        # The lab knob denied_cmdlets: cmdlets outside the account's management role.
        self.denied: set[str] = set()
        # Exchange serialises writes to one object; so do we, across sessions.
        self.write_lock = threading.Lock()
        self.cmdlets = {
            spec.name.lower(): spec
            for spec in (
                CmdletSpec("Get-RemoteMailbox", ("Identity", "ResultSize"), (), Exchange._get),
                CmdletSpec(
                    "Enable-RemoteMailbox",
                    ("Identity", "RemoteRoutingAddress", "PrimarySmtpAddress", "Alias",
                     "DisplayName"),
                    ("Identity",),
                    Exchange._enable,
                ),
                CmdletSpec("Set-RemoteMailbox", mailbox_type.PARAMETERS, ("Identity",),
                           mailbox_type.set_remote_mailbox),
            )
        }

    # -- binding ------------------------------------------------------------------------
    def invoke(self, call: Invocation) -> list[dict[str, Any]]:
        """Bind parameters as PowerShell does (case-insensitive, unique prefixes) and run."""
        spec = self.cmdlets.get(call.name.lower())
        if spec is None or call.name.lower() in self.denied:
            raise command_not_found(call.name)
        bound: dict[str, Any] = {}
        known = spec.parameters + COMMON_PARAMETERS
        position = 0
        for name, value in call.parameters:
            if name is None:
                if position > 0:
                    raise CmdletError(
                        f"A positional parameter cannot be found that accepts argument "
                        f"'{value}'.",
                        "System.Management.Automation.ParameterBindingException",
                        "InvalidArgument",
                        f"PositionalParameterNotFound,{spec.name}",
                    )
                bound[spec.parameters[0]] = value
                position += 1
                continue
            wanted = name.lstrip("-").lower()
            matches = [p for p in known if p.lower() == wanted] or [
                p for p in known if p.lower().startswith(wanted)
            ]
            if len(matches) != 1:
                raise CmdletError(
                    f"A parameter cannot be found that matches parameter name '{name}'.",
                    "System.Management.Automation.ParameterBindingException",
                    "InvalidArgument",
                    f"NamedParameterNotFound,{spec.name}",
                )
            bound[matches[0]] = value
        missing = [p for p in spec.mandatory if bound.get(p) in (None, "")]
        if missing:
            raise CmdletError(
                "Cannot process command because of one or more missing mandatory parameters: "
                f"{' '.join(missing)}.",
                "System.Management.Automation.ParameterBindingException",
                "InvalidArgument",
                f"MissingMandatoryParameter,{spec.name}",
            )
        return spec.run(self, bound)

    # -- identity -----------------------------------------------------------------------
    def _identity_filter(self, identity: str) -> str:
        text = identity.strip()
        try:
            guid = uuid.UUID(text)
        except ValueError:
            pass
        else:
            return "(objectGUID=" + "".join(f"\\{b:02x}" for b in guid.bytes_le) + ")"
        value = escape_filter_chars(text)
        if "=" in text and "," in text:
            return f"(distinguishedName={value})"
        if "\\" in text:
            domain, _, sam = text.partition("\\")
            if domain.upper() != self.directory.netbios:
                return "(objectGUID=\\00)"  # another domain: nothing here matches
            return f"(sAMAccountName={escape_filter_chars(sam)})"
        if "@" in text:
            return (f"(|(userPrincipalName={value})(mail={value})"
                    f"(proxyAddresses=smtp:{value}))")
        return f"(|(cn={value})(sAMAccountName={value})(mailNickname={value}))"

    def resolve(self, identity: str, type_filter: str) -> Entry:
        try:
            guid = uuid.UUID(identity.strip())
        except ValueError:
            ldap_filter = f"(&{type_filter}{self._identity_filter(identity)})"
            found = self.directory.search(ldap_filter, limit=2)
        else:
            # Bound to the object by GUID, as AD's <GUID=...> DN form allows: Samba's
            # (objectGUID=\xx...) filter misses some GUIDs (one whose bytes hold 29 5c, seen
            # in a 2,000-user run), so a filter on objectGUID is not used for a GUID identity.
            found = self.directory.search(f"(&{type_filter})", base=f"<GUID={guid}>", limit=2)
        if not found:
            raise not_found(identity, self.directory.dc_name)
        if len(found) > 1:
            raise ambiguous(identity)
        return found[0]

    # -- cmdlets ------------------------------------------------------------------------
    def remote_filter(self) -> str:
        types = "".join(f"(msExchRecipientTypeDetails={t})" for t in REMOTE_TYPES)
        return f"(objectCategory=person)(objectClass=user)(|{types})"

    def _get(self, bound: dict[str, Any]) -> list[dict[str, Any]]:
        identity = bound.get("Identity")
        if identity is None:
            found = self.directory.search(f"(&{self.remote_filter()})", limit=1000)
            return [self.remote_mailbox(e) for e in found]
        try:
            entry = self.resolve(str(identity), self.remote_filter())
        except CmdletError as exc:
            # Get-* cmdlets report a missing object as a non-terminating error.
            exc.terminating = False
            raise
        return [self.remote_mailbox(entry)]

    def _enable(self, bound: dict[str, Any]) -> list[dict[str, Any]]:
        identity = str(bound["Identity"])
        with self.write_lock:
            user = self.resolve(identity, "(objectCategory=person)(objectClass=user)")
            if user.first("msExchRecipientTypeDetails") not in (None, "", 0, "0"):
                raise CmdletError(
                    self.already_enabled_text
                    or f"The user \"{_canonical(user.dn)}\" is already mail-enabled.",
                    "Microsoft.Exchange.Management.Tasks.RecipientTaskException",
                    "InvalidArgument",
                    "RecipientTaskException",
                    identity,
                )
            alias = str(bound.get("Alias") or user.first("mailNickname") or
                        user.first("sAMAccountName"))
            if not _ALIAS.match(alias):
                raise CmdletError(
                    f"Cannot bind parameter 'Alias' to the target. Exception setting \"Alias\": "
                    f"\"The alias \"{alias}\" contains invalid characters.\"",
                    "System.Management.Automation.ParameterBindingException",
                    "WriteError",
                    "ParameterBindingFailed,Enable-RemoteMailbox",
                )
            routing = bound.get("RemoteRoutingAddress")
            if routing is None:
                if not self.routing_domain:
                    raise CmdletError(
                        "The remote routing address couldn't be determined because no email "
                        "address policy has a remote routing domain. Specify "
                        "-RemoteRoutingAddress.",
                        "Microsoft.Exchange.Management.Tasks.RecipientTaskException",
                        "InvalidOperation",
                        "RecipientTaskException",
                        identity,
                    )
                routing = f"{alias}@{self.routing_domain}"
            routing = _smtp(str(routing), "RemoteRoutingAddress")
            explicit_primary = bound.get("PrimarySmtpAddress") is not None
            primary = (_smtp(str(bound["PrimarySmtpAddress"]), "PrimarySmtpAddress")
                       if explicit_primary else f"{alias}@{self.accepted_domain}")
            primary = self._unique(primary, user, explicit=explicit_primary)
            self._check_unused(routing, user)
            kept = [p for p in user.all("proxyAddresses")
                    if not str(p).lower().startswith("smtp:")]
            values: dict[str, list[Any]] = {
                "mailNickname": [alias],
                "mail": [primary],
                "proxyAddresses": [f"SMTP:{primary}", f"smtp:{routing}", *kept],
                "targetAddress": [f"SMTP:{routing}"],
                "msExchRemoteRecipientType": [PROVISION_MAILBOX],
                "msExchRecipientTypeDetails": [REMOTE_USER_MAILBOX],
                "msExchRecipientDisplayType": [SYNCED_MAILBOX_USER_DISPLAY],
            }
            if bound.get("DisplayName"):
                values["displayName"] = [str(bound["DisplayName"])]
            self.directory.replace(user.dn, values)
            fresh = self.directory.search(self._identity_filter(str(user.guid)), limit=1)
        return [self.remote_mailbox(fresh[0] if fresh else user)]

    def _taken(self, address: str, user: Entry) -> bool:
        value = escape_filter_chars(address)
        others = self.directory.search(f"(|(proxyAddresses=smtp:{value})(mail={value}))", limit=2)
        return any(o.guid != user.guid for o in others)

    def _unique(self, primary: str, user: Entry, *, explicit: bool) -> str:
        """An explicit address must be free; a policy-made one gets a number, as Exchange's
        email address policy does (alias2@domain, alias3@domain, ...)."""
        if not self._taken(primary, user):
            return primary
        if explicit:
            raise address_in_use(primary)
        local, _, domain = primary.partition("@")
        for n in range(2, 100):
            candidate = f"{local}{n}@{domain}"
            if not self._taken(candidate, user):
                return candidate
        raise address_in_use(primary)

    def _check_unused(self, address: str, user: Entry) -> None:
        if self._taken(address, user):
            raise address_in_use(address)

    def remote_mailbox(self, entry: Entry) -> dict[str, Any]:
        """The properties of Exchange's RemoteMailbox object for ``entry``."""
        proxies = [str(p) for p in entry.all("proxyAddresses")]
        primary = next((p[5:] for p in proxies if p.startswith("SMTP:")), entry.first("mail"))
        target = entry.first("targetAddress")
        rrt = int(entry.first("msExchRemoteRecipientType") or 0)
        details = int(entry.first("msExchRecipientTypeDetails") or 0)
        return {
            "Name": entry.first("cn"),
            "Alias": entry.first("mailNickname"),
            "DisplayName": entry.first("displayName"),
            "SamAccountName": entry.first("sAMAccountName"),
            "UserPrincipalName": entry.first("userPrincipalName"),
            "DistinguishedName": entry.dn,
            "Identity": _canonical(entry.dn),
            "Guid": str(entry.guid),
            "PrimarySmtpAddress": primary,
            "RemoteRoutingAddress": str(target) if target else None,
            "EmailAddresses": proxies,
            "RecipientTypeDetails": {
                2147483648: "RemoteUserMailbox",
                8589934592: "RemoteRoomMailbox",
                17179869184: "RemoteEquipmentMailbox",
                34359738368: "RemoteSharedMailbox",
            }.get(details, str(details)),
            "RemoteRecipientType": _remote_recipient_type(rrt),
            "HiddenFromAddressListsEnabled":
                str(entry.first("msExchHideFromAddressLists")).upper() == "TRUE",
            # Written back from Exchange Online by Entra Connect (Exchange hybrid writeback):
            # msExchArchiveStatus 1 = an archive in the cloud; msExchUserHoldPolicies = holds.
            "ArchiveStatus": "Active" if int(entry.first("msExchArchiveStatus") or 0) & 1
                             else "None",
            "InPlaceHolds": [str(h) for h in entry.all("msExchUserHoldPolicies")],
            "OriginatingServer": self.directory.dc_name,
        }


def _remote_recipient_type(rrt: int) -> str:
    """``RemoteRecipientType`` as Exchange prints the flags: SharedMailbox (0x60) is one name,
    not RoomMailbox and EquipmentMailbox."""
    names = [n for bit, n in _REMOTE_RECIPIENT_FLAGS[:5] if rrt & bit]
    kind = {0x20: "RoomMailbox", 0x40: "EquipmentMailbox", 0x60: "SharedMailbox"}.get(rrt & 0x60)
    return ", ".join([*names, kind] if kind else names) or "None"


def _smtp(value: str, parameter: str) -> str:
    address = value[5:] if value.lower().startswith("smtp:") else value
    if not _SMTP.match(address):
        raise CmdletError(
            f"Cannot process argument transformation on parameter '{parameter}'. "
            f"The address '{address}' is invalid: \"{address}\" isn't a valid SMTP address.",
            "System.Management.Automation.ParameterBindingArgumentTransformationException",
            "InvalidData",
            f"ParameterArgumentTransformationError,{parameter}",
        )
    return address


def _canonical(dn: str) -> str:
    """``CN=Ann,OU=Staff,DC=lab,DC=example`` as Exchange shows it: ``lab.example/Staff/Ann``."""
    parts = ldap3.utils.dn.parse_dn(dn)
    domain = ".".join(v for k, v, _ in parts if k.lower() == "dc")
    path = [v for k, v, _ in parts if k.lower() != "dc"]
    return "/".join([domain, *reversed(path)])
