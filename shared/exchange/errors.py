"""How Exchange's answers map to the service's errors (``step="mailbox"``; the caller adds
the user)::

    ProvisioningError
     ├── TransientError   connection refused, reset or timed out; HTTP 5xx; WS-Management
     │                    faults; throttled sessions (Exchange's MaxConcurrency); error
     │                    records Exchange marks as transient or does not explain
     └── PermanentError   HTTP 401 (credentials) and other 4xx (URL or configuration);
                          TLS certificate not trusted; error records for an unknown or
                          ambiguous identity, an already mail-enabled user, an address in
                          use, a cmdlet the account may not run, a refused parameter

Every fix is one a helpdesk or an Exchange administrator can carry out; "a bug in the service"
is said only of what only a bug can cause (a parse error: the service never sends a script).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import requests
from pypsrp.exceptions import AuthenticationError, WinRMTransportError, WSManFaultError

from shared.config import ExchangeSettings
from shared.errors import PermanentError, ProvisioningError, TransientError, certificate_refused
from shared.log import redact

STEP = "mailbox"

# Error records whose cause the caller must fix; keyed by the exception's short type name
# (ErrorCategory_Reason), with the fix an operator reads.
_PERMANENT_REASONS = {
    "ManagementObjectNotFoundException": (
        "check that the user still exists in Active Directory and is in a scope Exchange reads"
    ),
    "ManagementObjectAmbiguousException": (
        "make the identity unique (Exchange matched several objects)"
    ),
    "RecipientTaskException": (
        "the user is already mail-enabled (mailbox, mail user or remote mailbox); convert it by "
        "hand with the Exchange tools or take it out of the provisioning group"
    ),
    "ProxyAddressExistsException": (
        "another recipient already uses the address; free it or give the user another alias"
    ),
    "ADObjectAlreadyExistsException": (
        "another recipient already uses the address; free it or give the user another alias"
    ),
    "CommandNotFoundException": (
        "give the Exchange service account (EXCHANGE_USER) the Mail Recipients role, e.g. "
        "through the Recipient Management role group"
    ),
    "ParseException": "this is a bug in the service: report it",
    # Exchange refused a value, and the values come from the user's attributes (the alias and
    # addresses derive from mailNickname and the UPN): the helpdesk can fix those.
    "ParameterBindingException": (
        "check the user's mailNickname and userPrincipalName in AD for characters Exchange "
        "does not accept in an alias or e-mail address, and correct them"
    ),
    "ParameterBindingArgumentTransformationException": (
        "check the user's alias, routing domain (ROUTING_DOMAIN) and addresses"
    ),
}
# ErrorCategory values that mean "come back later".
_TRANSIENT_CATEGORIES = {15, 19, 21, 27, 29, 30}  # timeout, busy, unavailable, connection, limits
_THROTTLE_RETRY_SECONDS = 60.0
# Exchange's answer to Enable-RemoteMailbox for a user that is a recipient already (mailbox,
# mail user or remote mailbox): "The user "<canonical name>" is already mail-enabled." The text
# is the lab's reading of public material and varies with the release and the language, so it
# only says which fix to give when the look finds no remote mailbox; the decision to look rests
# on the reason alone (_MAYBE_RECIPIENT_ALREADY).
_ALREADY_MAIL_ENABLED = "is already mail-enabled"
# Reasons a refused Enable-RemoteMailbox may mean "this user is a recipient already" (a re-run
# after a crash): RecipientTaskException is the family Exchange's recipient tasks throw, the two
# others what a second write of the same addresses runs into. Whatever the text, the caller looks
# with Get-RemoteMailbox before deciding.
_MAYBE_RECIPIENT_ALREADY = frozenset({
    "RecipientTaskException", "ADObjectAlreadyExistsException", "ProxyAddressExistsException",
})


class AlreadyMailEnabled(PermanentError):
    """Exchange refused Enable-RemoteMailbox with an answer that may mean the user is a
    recipient already (``_MAYBE_RECIPIENT_ALREADY``, whatever the text): the caller looks
    (``Get-RemoteMailbox``) before it decides whether that is done or wrong. ``said_so`` is
    true when Exchange's text says "already mail-enabled" in so many words."""

    def __init__(self, reason: str, *, step: str, fix: str, said_so: bool) -> None:
        super().__init__(reason, step=step, fix=fix)
        self.said_so = said_so


def record_error(cmdlet: str, identity: str, errors: Sequence[Any]) -> ProvisioningError:
    """The error an Exchange error record (the first of ``errors``) means."""
    if not errors:
        return TransientError(
            f"Exchange's {cmdlet} for '{identity}' returned nothing and no error",
            step=STEP, fix="nothing to do; the service retries",
        )
    record = errors[0]
    reason = record_reason(record)
    message = redact(str(record))
    text = f"Exchange refused {cmdlet} for '{identity}': {message}"
    if cmdlet == "Enable-RemoteMailbox" and reason in _MAYBE_RECIPIENT_ALREADY:
        return AlreadyMailEnabled(text, step=STEP, fix=_PERMANENT_REASONS[reason],
                                  said_so=_ALREADY_MAIL_ENABLED in message)
    if reason in _PERMANENT_REASONS:
        return PermanentError(text, step=STEP, fix=_PERMANENT_REASONS[reason])
    category = getattr(record, "category", None)
    if "Transient" in reason or category in _TRANSIENT_CATEGORIES:
        return TransientError(text, step=STEP, fix="nothing to do; the service retries")
    if category in (5, 6, 7, 13, 17, 18, 20):  # argument, data, operation, not found ...
        return PermanentError(text, step=STEP,
                              fix="read Exchange's message above and correct the user")
    return TransientError(text, step=STEP,
                          fix="nothing to do; the service retries, and reports the user "
                              "if the error persists")



def record_reason(record: Any) -> str:
    """The exception's short type name, which Exchange puts in ErrorCategory_Reason. Without
    it, read from the FullyQualifiedErrorId, which a remote session writes as
    ``[Server=EX1,RequestId=…,TimeStamp=…] [FailureCategory=Cmdlet-<exception>] <hash>,<cmdlet
    class>``: the exception named by FailureCategory, else the text before the first comma
    after the last bracket; a dotted type name gives its last part."""
    reason = getattr(record, "reason", None) or ""
    if not reason:
        fq = getattr(record, "fq_error", "") or ""
        named = _FAILURE_CATEGORY.search(fq)
        first = named.group(1) if named else fq.rpartition("]")[2].partition(",")[0]
        reason = first.strip().rpartition(".")[2]
    return str(reason)


def authentication_fix(settings: ExchangeSettings) -> str:
    """What to check after an HTTP 401: the account, its password, and that the endpoint
    accepts the authentication the service sends (docs/premises.md)."""
    exchange = settings.configuration_name == "Microsoft.Exchange"
    setting = "EXCHANGE_USER" if exchange else "CONNECT_USER"
    if exchange:
        # Exchange's /PowerShell virtual directory in IIS: Basic and Windows authentication
        # are its two switches (Set-PowerShellVirtualDirectory -BasicAuthentication /
        # -WindowsAuthentication); Windows authentication needs Kerberos, which an app
        # through the relay cannot get, so the service uses basic over HTTPS.
        endpoint = (f"that the /PowerShell virtual directory accepts EXCHANGE_AUTH="
                    f"{settings.auth} (for basic: Set-PowerShellVirtualDirectory "
                    f"-BasicAuthentication $true; docs/premises.md)")
    else:
        endpoint = (f"that the server's WinRM HTTPS listener accepts {settings.auth} "
                    f"(docs/premises.md)")
    return (f"check {setting} ({settings.user}) and its password secret in Key Vault, that "
            f"the account is not locked out, and {endpoint}")


# "[FailureCategory=Cmdlet-ManagementObjectNotFoundException]": the exception after the kind
_FAILURE_CATEGORY = re.compile(r"\[FailureCategory=[^\]\-]*-([^\]]+)\]")


def transport_error(exc: Exception, cmdlet: str, settings: ExchangeSettings) -> (
        ProvisioningError):
    """The error a failure of the transport (HTTP, TLS, WS-Management) means."""
    where = f"Exchange at {settings.url}"
    if isinstance(exc, AuthenticationError):
        return PermanentError(
            f"{where} refused the credentials of {settings.user} (HTTP 401, {settings.auth})",
            step=STEP,
            fix=authentication_fix(settings),
        )
    if isinstance(exc, requests.exceptions.SSLError) and certificate_refused(exc):
        return PermanentError(
            f"the TLS certificate of {where} is not trusted",
            step=STEP,
            fix="add the CA that issued Exchange's certificate to CA_BUNDLE, or check "
                "EXCHANGE_URL's host name",
        )
    if isinstance(exc, requests.exceptions.SSLError):
        # The connection closed during the handshake (a restarting server, a bridge that
        # could not reach it): nothing about the certificate.
        return TransientError(
            f"{where} closed the connection during the TLS handshake for {cmdlet}",
            step=STEP,
            fix="nothing to do; the service retries (if this repeats, check that Exchange "
                "and the hybrid connection's bridge are up)",
        )
    if isinstance(exc, WSManFaultError):
        reason = redact(str(exc.reason or exc.code))
        retry_after = (_THROTTLE_RETRY_SECONDS
                       if "maximum number of connections" in reason else None)
        return TransientError(
            f"{where} failed {cmdlet}: {reason}",
            step=STEP,
            fix="nothing to do; the service retries (if this repeats, check Exchange's "
                "throttling policy and the hybrid connection)",
            retry_after=retry_after,
        )
    if isinstance(exc, WinRMTransportError):
        status = int(exc.code or 0)
        if 400 <= status < 500:
            return PermanentError(
                f"{where} answered HTTP {status} to {cmdlet}",
                step=STEP,
                fix="check EXCHANGE_URL (https://<server>/PowerShell) and "
                    "EXCHANGE_CONFIGURATION_NAME",
            )
        return TransientError(
            f"{where} answered HTTP {status} to {cmdlet}",
            step=STEP, fix="nothing to do; the service retries",
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return TransientError(
            f"{where} did not answer {cmdlet} within {settings.timeout_seconds:g} s",
            step=STEP, fix="nothing to do; the service retries",
        )
    return TransientError(
        f"the connection to {where} failed during {cmdlet} ({type(exc).__name__})",
        step=STEP,
        fix="nothing to do; the service retries (if this repeats, check the hybrid "
            "connection and that Exchange is up)",
    )
