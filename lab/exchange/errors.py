"""The errors the lab Exchange's cmdlets raise, worded and typed as Exchange's are.

``CmdletError`` is one error record to send back: message, .NET exception type, PowerShell
error category, error id, target, and whether it ends the pipeline. ``lab.exchange.psrp``
turns it into the ErrorRecord pypsrp reads.
"""

from __future__ import annotations

from dataclasses import dataclass

TASKS_NS = "Microsoft.Exchange.Configuration.Tasks"
RECIPIENT_TASKS = "Microsoft.Exchange.Management.RecipientTasks"


@dataclass
class CmdletError(Exception):
    """An error record the endpoint sends back, shaped like Exchange's."""

    message: str
    exception_type: str
    category: str  # a System.Management.Automation.ErrorCategory name
    error_id: str
    target: str | None = None
    terminating: bool = True

    def __str__(self) -> str:
        return self.message


def not_found(identity: str, dc: str) -> CmdletError:
    return CmdletError(
        f"The operation couldn't be performed because object '{identity}' couldn't be found "
        f"on '{dc}'.",
        f"{TASKS_NS}.ManagementObjectNotFoundException",
        "NotSpecified",
        "ManagementObjectNotFoundException",
        identity,
    )


def ambiguous(identity: str) -> CmdletError:
    return CmdletError(
        f"The operation couldn't be performed because '{identity}' matches multiple entries.",
        f"{TASKS_NS}.ManagementObjectAmbiguousException",
        "NotSpecified",
        "ManagementObjectAmbiguousException",
        identity,
    )


def command_not_found(name: str) -> CmdletError:
    return CmdletError(
        f"The term '{name}' is not recognized as the name of a cmdlet, function, script file, "
        "or operable program. Check the spelling of the name, or if a path was included, "
        "verify that the path is correct and try again.",
        "System.Management.Automation.CommandNotFoundException",
        "ObjectNotFound",
        "CommandNotFoundException",
        name,
    )


def scripts_not_allowed() -> CmdletError:
    return CmdletError(
        "The syntax is not supported by this runspace. This can occur if the runspace is in "
        "no-language mode.",
        "System.Management.Automation.ParseException",
        "ParserError",
        "ScriptsNotAllowed",
    )


def address_in_use(address: str) -> CmdletError:
    return CmdletError(
        f"The proxy address \"SMTP:{address}\" is already being used by the proxy addresses "
        "or LegacyExchangeDN. Please choose another proxy address.",
        "Microsoft.Exchange.Data.Directory.ADObjectAlreadyExistsException",
        "NotSpecified",
        "ProxyAddressExistsException",
        address,
    )
