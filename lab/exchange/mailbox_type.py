"""``Set-RemoteMailbox -Type`` and ``-HiddenFromAddressListsEnabled``: what Exchange writes
into AD when a remote (cloud) mailbox changes type on-premises, the hybrid way.

The values, as Exchange's ``Set-RemoteMailbox -Type Regular|Room|Equipment|Shared`` writes
them on the user (Exchange's RemoteRecipientType, RecipientTypeDetails and
RecipientDisplayType, in AD msExchRemoteRecipientType, msExchRecipientTypeDetails,
msExchRecipientDisplayType):

- msExchRemoteRecipientType is a bit set (RemoteRecipientType enum, Microsoft.Exchange.Data.
  Directory.Recipient: ProvisionMailbox 0x1, ProvisionArchive 0x2, Migrated 0x4, RoomMailbox
  0x20, EquipmentMailbox 0x40, SharedMailbox 0x60). A type change keeps the provisioning and
  migration bits and replaces the type bits: a provisioned user mailbox (1) becomes 97
  (0x60 + 0x1), a migrated one (4) becomes 100 ("How msExchRecipientDisplayType and
  msExchangeRecipientTypeDetails relate to your on-premises", the Exchange support engineer's
  note that explains 97 as SharedMailbox + ProvisionMailbox; the value list of
  learn.microsoft.com/archive/blogs/undocumentedfeatures "Updating Remote Recipient Types
  on-Premises").
- msExchRecipientTypeDetails: RemoteUserMailbox 2147483648, RemoteRoomMailbox 8589934592,
  RemoteEquipmentMailbox 17179869184, RemoteSharedMailbox 34359738368.
- msExchRecipientDisplayType: SyncedMailboxUser -2147483642 for user and shared mailboxes,
  SyncedConferenceRoomMailbox -2147481850, SyncedEquipmentMailbox -2147481594.

Why on-premises: for a synced user the on-premises msExchRemoteRecipientType decides the cloud
mailbox's type; a mailbox converted in Exchange Online alone is turned back into a user
mailbox by the next directory synchronisation ("Shared mailboxes are unexpectedly converted to
user mailboxes after directory synchronization runs in an Exchange hybrid deployment",
learn.microsoft.com/exchange/troubleshoot/user-and-shared-mailboxes/shared-mailboxes-
unexpectedly-converted-to-user-mailboxes, KB 2710029). The lab's sync engine carries the type
to the cloud mailbox accordingly (``lab.graph.mailboxes.cloud_purpose``).

Errors, as Exchange's: a user without a remote mailbox is "couldn't be found" (terminating,
ManagementObjectNotFoundException); a ``-Type`` outside the enum and a non-Boolean
``-HiddenFromAddressListsEnabled`` are parameter-binding errors. Setting the type a mailbox
already has changes nothing (Exchange warns "no settings ... have been modified" and succeeds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import CmdletError

if TYPE_CHECKING:
    from .cmdlets import Exchange

PROVISION_MAILBOX = 0x1
TYPE_BITS = 0x60  # RoomMailbox 0x20 | EquipmentMailbox 0x40; SharedMailbox is both
SYNCED_MAILBOX_USER = -2147483642

# -Type value: (msExchRemoteRecipientType type bits, msExchRecipientTypeDetails,
# msExchRecipientDisplayType)
TYPES: dict[str, tuple[int, int, int]] = {
    "Regular": (0x0, 2147483648, SYNCED_MAILBOX_USER),
    "Room": (0x20, 8589934592, -2147481850),
    "Equipment": (0x40, 17179869184, -2147481594),
    "Shared": (0x60, 34359738368, SYNCED_MAILBOX_USER),
}
PARAMETERS = ("Identity", "Type", "HiddenFromAddressListsEnabled")


def _type(value: Any) -> str:
    text = str(value)
    found = next((name for name in TYPES if name.lower() == text.strip().lower()), None)
    if found is None:
        raise CmdletError(
            f"Cannot bind parameter 'Type'. Cannot convert value \"{text}\" to type "
            "\"Microsoft.Exchange.Management.RecipientTasks.ConvertibleRemoteMailboxSubType\". "
            f"Error: \"Unable to match the identifier name {text} to a valid enumerator name. "
            "Specify one of the following enumerator names and try again: "
            f"{', '.join(TYPES)}\"",
            "System.Management.Automation.ParameterBindingException",
            "InvalidArgument",
            "CannotConvertArgumentNoMessage,Set-RemoteMailbox",
        )
    return found


def _boolean(value: Any, name: str) -> bool:
    # PowerShell binds only Booleans and numbers to a [bool] parameter: a string "False" would
    # otherwise turn the mailbox hidden, so PowerShell refuses it, and so does the lab.
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    raise CmdletError(
        f"Cannot process argument transformation on parameter '{name}'. Cannot convert value "
        "\"System.String\" to type \"System.Boolean\". Boolean parameters accept only Boolean "
        "values and numbers, such as $True, $False, 1 or 0.",
        "System.Management.Automation.ParameterBindingArgumentTransformationException",
        "InvalidData",
        "ParameterArgumentTransformationError,Set-RemoteMailbox",
    )


def set_remote_mailbox(exchange: Exchange, bound: dict[str, Any]) -> list[dict[str, Any]]:
    """Set-RemoteMailbox -Identity X [-Type T] [-HiddenFromAddressListsEnabled B]: write the
    AD attributes Exchange writes; no output, as Exchange's Set-* cmdlets."""
    identity = str(bound["Identity"])
    wanted = _type(bound["Type"]) if bound.get("Type") is not None else None
    hide = (_boolean(bound["HiddenFromAddressListsEnabled"], "HiddenFromAddressListsEnabled")
            if "HiddenFromAddressListsEnabled" in bound else None)
    with exchange.write_lock:
        entry = exchange.resolve(identity, exchange.remote_filter())
        values: dict[str, list[Any]] = {}
        if wanted is not None:
            bits, details, display = TYPES[wanted]
            current = int(entry.first("msExchRemoteRecipientType") or PROVISION_MAILBOX)
            values["msExchRemoteRecipientType"] = [(current & ~TYPE_BITS) | bits]
            values["msExchRecipientTypeDetails"] = [details]
            values["msExchRecipientDisplayType"] = [display]
        if hide is not None:
            values["msExchHideFromAddressLists"] = ["TRUE" if hide else "FALSE"]
        changed = {name: vals for name, vals in values.items()
                   if [str(v).upper() for v in entry.all(name)] != [str(v).upper() for v in vals]}
        if changed:
            exchange.directory.replace(entry.dn, changed)
    return []
