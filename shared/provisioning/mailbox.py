"""The mailbox step: a new user in ``O365_Provision`` becomes a remote mailbox on the
on-premises Exchange server, as ``Enable-RemoteMailbox <objectGUID> -Alias <alias>
-RemoteRoutingAddress <alias>@<ROUTING_DOMAIN>`` makes it (the alias: mailNickname, else the
UPN's prefix; not the sAMAccountName), then moves from ``O365_Provision`` to ``O365_License``.

The order of things, each safe to repeat:

1. read the user again from AD (the queue message only names its objectGUID), with its
   groups: a user who is not (or no longer) in ``O365_Provision`` is not this step's to touch,
   whatever a message says (``Stale``), except one that an earlier attempt already moved on
   (a remote mailbox in ``O365_License``): nothing is changed, and the licence step follows;
2. the input rules (``shared.provisioning.rules.check``, the same the licence step applies):
   licence name, country, and the alias Exchange would derive; otherwise a PermanentError with
   the wording the old script mailed, and the user stays where it is;
3. the routing address must be free (nobody else in AD holds it), then ``Enable-RemoteMailbox
   -Alias <alias> -RemoteRoutingAddress <alias>@<ROUTING_DOMAIN>``: one cmdlet for a new user.
   Any refusal that may mean "a recipient already" (``RecipientTaskException`` and its kin,
   whatever Exchange's text) means look: ``Get-RemoteMailbox`` showing a remote mailbox
   routed into the routing domain is done already; routed elsewhere, or no remote mailbox at
   all (a mailbox or mail user, or Exchange's refusal was about something else), is a
   PermanentError. The audit's
   attribute changes come from what the cmdlet returned, not from a second read of AD;
4. add the user to ``O365_License``, then remove it from ``O365_Provision`` -- in that order,
   so a crash between the two leaves the user in a group the reconcile timer reads.

Failures are the Exchange client's and the directory's ``TransientError`` /
``PermanentError``, with ``user`` (sAMAccountName) and ``step="mailbox"`` filled in.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Literal

from shared.ad.directory import Directory, DirectoryUser
from shared.config import Settings
from shared.errors import PermanentError, ProvisioningError
from shared.exchange.client import ExchangeClient, RemoteMailbox, strip_smtp
from shared.exchange.errors import AlreadyMailEnabled
from shared.log import get_logger
from shared.provisioning import rules
from shared.results import Stale
from shared.store.ledger import Change

log = get_logger(__name__)

STEP = "mailbox"
# What the old script's error mail asked of the helpdesk, kept so they recognise it.
LICENCE_COUNTRY_FIX = (
    "check that the required license type has been entered and that the Country/region "
    "has been set"
)


@dataclass(frozen=True)
class MailboxOutcome:
    """What ``MailboxStep.run`` did for one user."""

    guid: uuid.UUID
    user: str
    outcome: Literal["done", "already-done"]
    routing_address: str
    changes: tuple[Change, ...]
    dn: str = ""


def _as_user(user: DirectoryUser, mailbox: RemoteMailbox) -> DirectoryUser:
    """The user's Exchange attributes as ``Enable-RemoteMailbox`` returned them: what the
    cmdlet wrote, without reading AD again."""
    provisioned = "ProvisionMailbox" in (mailbox.remote_recipient_type or "")
    routing = mailbox.remote_routing_address
    return replace(user, mail_nickname=mailbox.alias, mail=mailbox.primary_smtp_address,
                   target_address=f"SMTP:{routing}" if routing else user.target_address,
                   proxy_addresses=mailbox.email_addresses or user.proxy_addresses,
                   remote_recipient_type=1 if provisioned else user.remote_recipient_type)


def _diff(before: DirectoryUser, after: DirectoryUser) -> list[Change]:
    fields = (
        ("mailNickname", before.mail_nickname, after.mail_nickname),
        ("mail", before.mail, after.mail),
        ("targetAddress", before.target_address, after.target_address),
        ("proxyAddresses", "; ".join(sorted(before.proxy_addresses)) or None,
         "; ".join(sorted(after.proxy_addresses)) or None),
        ("msExchRemoteRecipientType",
         None if before.remote_recipient_type is None else str(before.remote_recipient_type),
         None if after.remote_recipient_type is None else str(after.remote_recipient_type)),
    )
    return [Change(what, old, new) for what, old, new in fields if old != new]


class MailboxStep:
    """Makes one user a remote mailbox and moves it on; see the module docstring."""

    def __init__(self, settings: Settings, directory: Directory, exchange: ExchangeClient) -> None:
        self._provisioning = settings.provisioning
        self._directory = directory
        self._exchange = exchange

    def close(self) -> None:
        """Close the step's Exchange session and LDAP connection."""
        self._exchange.close()
        self._directory.close()

    def run(self, guid: uuid.UUID, *, correlation_id: str) -> MailboxOutcome | Stale:
        """Provision the user with this objectGUID. Raises TransientError (retry later) or
        PermanentError (report; the user stays in the provisioning group)."""
        user = self._directory.user(guid)
        fields = {"user": user.sam, "step": STEP, "correlation_id": correlation_id}
        group = self._provisioning.provision_group
        inputs = rules.check(user, self._provisioning)
        if not self._directory.is_member(user, group):
            if (isinstance(inputs, rules.Valid) and user.remote_recipient_type is not None
                    and self._directory.is_member(user, self._provisioning.license_group)):
                # An earlier attempt moved the user and stopped before it sent the licence
                # step's message (a crash, a dropped connection): nothing to change here, and
                # the licence step follows now instead of after reconcile's grace.
                return MailboxOutcome(guid, user.sam, "already-done", inputs.routing_address,
                                      (), user.dn)
            return Stale(f"{user.sam} is not a member of {group}", user=user.sam)
        if isinstance(inputs, rules.Invalid):
            log.warning("mailbox_user_invalid", reason=inputs.reason, **fields)
            fix = f"{inputs.fix} ({LICENCE_COUNTRY_FIX})"
            raise PermanentError(inputs.reason, user=user.sam, step=STEP, fix=fix)
        try:
            changes = self._ensure_mailbox(user, inputs)
        except ProvisioningError as exc:
            exc.at(user=user.sam, step=STEP)
            log.warning("mailbox_failed", reason=exc.reason,
                        kind=type(exc).__name__, **fields)
            raise
        changes += self._move_groups(user)
        outcome: Literal["done", "already-done"] = "done" if changes else "already-done"
        log.info("mailbox_" + outcome.replace("-", "_"), routing_address=inputs.routing_address,
                 alias=inputs.alias, alias_derived=inputs.alias_derived, changes=len(changes),
                 **fields)
        return MailboxOutcome(guid, user.sam, outcome, inputs.routing_address, tuple(changes),
                              user.dn)

    def _ensure_mailbox(self, user: DirectoryUser, inputs: rules.Valid) -> list[Change]:
        identity = str(user.guid)  # the objectGUID: unambiguous, and never code
        routing = inputs.routing_address
        owners = [dn for dn in self._directory.address_owners(routing)
                  if dn.lower() != user.dn.lower()]
        if owners:
            raise PermanentError(
                f"the routing address {routing} is already used by {owners[0]}",
                user=user.sam, step=STEP,
                fix=f"give the user a free alias in mailNickname (now '{inputs.alias}'), or free "
                "the address on the other object",
            )
        # Enable first: one cmdlet for a new user, the common case. Any refusal that may mean
        # "a recipient already" (RecipientTaskException and its kin, whatever the text) makes
        # us look before deciding, so a re-run after a crash never fails a user whose mailbox
        # is already right.
        try:
            mailbox = self._exchange.enable_remote_mailbox(identity, routing, alias=inputs.alias)
        except AlreadyMailEnabled as refused:
            self._check_existing(user, identity, routing, refused)
            log.info("mailbox_refusal_was_already_done", user=user.sam, step=STEP,
                     said_so=refused.said_so)
            return []
        derived = [Change("alias (derived)", None, inputs.alias)] if inputs.alias_derived else []
        return [Change("remote mailbox", None, routing), *derived, *_diff(user, _as_user(user,
                                                                                    mailbox))]

    def _check_existing(self, user: DirectoryUser, identity: str, routing: str,
                        refused: AlreadyMailEnabled) -> None:
        """Exchange refused Enable-RemoteMailbox in a way that may mean the user is a recipient
        already: done when it is a remote mailbox of this tenant; otherwise Exchange's own
        refusal when its text did not say "already mail-enabled", or a PermanentError saying
        what the user is (a mailbox, a mail user, or routed elsewhere)."""
        existing = self._exchange.get_remote_mailbox(identity)
        domain = self._provisioning.routing_domain
        if existing is None and not refused.said_so:
            raise refused.at(user=user.sam, step=STEP)
        if existing is None:
            raise PermanentError(
                "the user is already mail-enabled, but not as a remote mailbox",
                user=user.sam, step=STEP,
                fix="the user is already a mailbox or mail user; convert it by hand with the "
                    "Exchange tools or take it out of "
                    f"{self._provisioning.provision_group}",
            )
        # Any address in the routing domain is a remote mailbox of this tenant (the old
        # script, or Exchange's own derivation, may have made it with another alias).
        current = strip_smtp(existing.remote_routing_address) or ""
        if not current.lower().endswith(f"@{domain}"):
            raise PermanentError(
                f"the user already is a remote mailbox, routed to '{current}' instead of "
                f"an address in {domain}",
                user=user.sam, step=STEP,
                fix=f"set the routing address with Set-RemoteMailbox -RemoteRoutingAddress "
                    f"{routing} if it is wrong, or take the user out of "
                    f"{self._provisioning.provision_group}",
            )

    def _move_groups(self, user: DirectoryUser) -> list[Change]:
        # Add first, then remove: a crash in between leaves the user in a group we read.
        changes = []
        license_group = self._provisioning.license_group
        provision_group = self._provisioning.provision_group
        if self._directory.add_member(license_group, user):
            changes.append(Change(f"member of {license_group}", "no", "yes"))
        if self._directory.remove_member(provision_group, user):
            changes.append(Change(f"member of {provision_group}", "yes", "no"))
        return changes
