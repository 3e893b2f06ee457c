"""What Exchange's answers mean, in memory: each error record and each transport failure
mapped to transient or permanent, with the fix a helpdesk reads. The records are shaped as
pypsrp gives them (``reason``, ``category``, ``fq_error``, the message as ``str``)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import pytest
import requests
from pydantic import SecretStr
from pypsrp.exceptions import AuthenticationError, WinRMTransportError, WSManFaultError

from shared.config import ExchangeSettings
from shared.errors import PermanentError, ProvisioningError, TransientError
from shared.exchange.errors import AlreadyMailEnabled, record_error, record_reason, transport_error

RETRIES = "nothing to do; the service retries"


@dataclass
class Record:
    """An error record as pypsrp's ErrorRecord reads: message, reason, category, fq_error."""

    message: str
    reason: str | None = None
    category: int | None = None
    fq_error: str | None = None

    def __str__(self) -> str:
        return self.message


def kind(error: ProvisioningError) -> tuple[str, str, str, str]:
    return type(error).__name__, error.step, error.reason, error.fix


def test_no_record_and_no_output_is_transient() -> None:
    """A cmdlet that returned nothing and no error: try again."""
    assert ("TransientError", "mailbox",
            "Exchange's Enable-RemoteMailbox for 'anna' returned nothing and no error",
            "nothing to do; the service retries") == kind(record_error("Enable-RemoteMailbox",
                                                                       "anna", []))


@pytest.mark.parametrize(("reason", "fix"), [
    ("ManagementObjectNotFoundException", "check that the user still exists in Active Directory"),
    ("ManagementObjectAmbiguousException", "make the identity unique"),
    ("RecipientTaskException", "the user is already mail-enabled"),
    ("ProxyAddressExistsException", "another recipient already uses the address"),
    ("ADObjectAlreadyExistsException", "another recipient already uses the address"),
    ("CommandNotFoundException", "give the Exchange service account (EXCHANGE_USER) the Mail "
                                 "Recipients role"),
    ("ParseException", "this is a bug in the service: report it"),
    ("ParameterBindingException", "check the user's mailNickname and userPrincipalName"),
    ("ParameterBindingArgumentTransformationException", "check the user's alias, routing "
                                                        "domain (ROUTING_DOMAIN)"),
])
def test_records_the_caller_must_fix_are_permanent_with_their_fix(reason: str, fix: str) -> None:
    """Each of the nine reasons a person must fix is permanent, whatever its category, and
    carries its own fix; the message is Exchange's, quoted."""
    error = record_error("Enable-RemoteMailbox", "anna", [Record("no way", reason, category=21)])
    assert (True, "Exchange refused Enable-RemoteMailbox for 'anna': no way") == (
        isinstance(error, PermanentError), error.reason)
    assert error.fix.startswith(fix)


def test_already_mail_enabled_is_told_apart_for_the_caller_to_look() -> None:
    """RecipientTaskException saying "is already mail-enabled" is AlreadyMailEnabled (a
    PermanentError the mailbox step checks with Get-RemoteMailbox), and says so."""
    error = record_error("Enable-RemoteMailbox", "anna", [
        Record('The user "contoso.com/Users/anna" is already mail-enabled.',
               "RecipientTaskException")])
    other = record_error("Enable-RemoteMailbox", "anna", [
        Record("is already mail-enabled", "ManagementObjectNotFoundException")])
    assert (True, True, True, False) == (isinstance(error, AlreadyMailEnabled),
                                         isinstance(error, PermanentError),
                                         isinstance(error, AlreadyMailEnabled) and error.said_so,
                                         isinstance(other, AlreadyMailEnabled))


@pytest.mark.parametrize("reason", [
    "RecipientTaskException", "ADObjectAlreadyExistsException", "ProxyAddressExistsException",
])
def test_a_refusal_that_may_mean_a_recipient_already_is_looked_at_whatever_its_text(
        reason: str) -> None:
    """Any refusal of Enable-RemoteMailbox that may mean "a recipient already" is
    AlreadyMailEnabled whatever Exchange's wording (another release, another language), so
    the mailbox step looks before deciding; the text only tells whether Exchange said so."""
    error = record_error("Enable-RemoteMailbox", "anna", [
        Record("Der Benutzer ist bereits E-Mail-aktiviert.", reason)])
    elsewhere = record_error("Set-RemoteMailbox", "anna", [Record("whatever", reason)])
    assert (True, False, False) == (isinstance(error, AlreadyMailEnabled),
                                    isinstance(error, AlreadyMailEnabled) and error.said_so,
                                    isinstance(elsewhere, AlreadyMailEnabled))


@pytest.mark.parametrize("category", [15, 19, 21, 27, 29, 30])
def test_the_transient_categories_are_retried(category: int) -> None:
    """Timeout (15), busy (19), unavailable (21), connection (27), limits (29, 30): retried."""
    error = record_error("Get-RemoteMailbox", "anna", [Record("later", "SomeException", category)])
    assert ("TransientError", RETRIES) == (type(error).__name__, error.fix)


def test_a_reason_exchange_calls_transient_is_retried() -> None:
    """A reason with "Transient" in its name is retried whatever its category."""
    error = record_error("Get-RemoteMailbox", "anna",
                         [Record("later", "TransientException", category=6)])
    assert ("TransientError", RETRIES) == (type(error).__name__, error.fix)


@pytest.mark.parametrize("category", [5, 6, 7, 13, 17, 18, 20])
def test_argument_data_and_operation_categories_are_the_user_s(category: int) -> None:
    """Invalid argument, data, operation, not found ... of an unknown reason: permanent, and
    the helpdesk reads Exchange's message."""
    error = record_error("Enable-RemoteMailbox", "anna",
                         [Record("bad", "OtherException", category)])
    assert ("PermanentError", "read Exchange's message above and correct the user") == (
        type(error).__name__, error.fix)


@pytest.mark.parametrize("category", [None, 0, 4, 8, 14, 16, 22, 31])
def test_what_exchange_does_not_explain_is_retried_and_reported_if_it_persists(
        category: int | None) -> None:
    """Any other category (or none): transient, and reported if it persists."""
    error = record_error("Enable-RemoteMailbox", "anna", [Record("hm", "OtherException", category)])
    assert ("TransientError", "nothing to do; the service retries, and reports the user if the "
            "error persists") == (type(error).__name__, error.fix)


def test_only_the_first_record_counts() -> None:
    """Several records: the first decides."""
    error = record_error("Enable-RemoteMailbox", "anna", [
        Record("first", "OtherException", 15), Record("second", "ParseException")])
    assert ("TransientError", "Exchange refused Enable-RemoteMailbox for 'anna': first") == (
        type(error).__name__, error.reason)


@pytest.mark.parametrize(("record", "reason"), [
    (Record("x", reason="ParseException"), "ParseException"),
    (Record("x", fq_error="Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException"
            ",Microsoft.Exchange.Management.RecipientTasks.EnableRemoteMailbox"),
     "ManagementObjectNotFoundException"),
    (Record("x", fq_error="[Server=EX1,RequestId=0f3c5b2a,TimeStamp=12/6/2026 8:30:15 AM] "
            "ParseException,Enable-RemoteMailbox"), "ParseException"),
    (Record("x", fq_error="[Server=EX1,RequestId=1] [Stage=Validate] ParseException,Enable"),
     "ParseException"),
    (Record("x", fq_error="ParseException,Microsoft.Exchange.Tasks,EnableRemoteMailbox"),
     "ParseException"),
    (Record("x", fq_error="[FailureCategory=Cmdlet-ManagementObjectNotFoundException] "
            "ManagementObjectNotFoundException,Enable"),
     "ManagementObjectNotFoundException"),
    (Record("x", reason="", fq_error="  ParseException ,x"), "ParseException"),
    (Record("x"), ""),
])
def test_the_reason_is_the_record_s_or_read_from_fq_error(record: Record, reason: str) -> None:
    """ErrorCategory_Reason when set; else the fully qualified error id's first part, after
    the last bracket, trimmed, the last part of a dotted type name."""
    assert reason == record_reason(record)


# What a remote Exchange session answers Enable-RemoteMailbox for a user it cannot find.
REMOTE_FQ = ("[Server=EX1,RequestId=0f3c5b2a-8d4e-4c1b-9a7f-2e6d1c0b3a94,TimeStamp=12/6/2026 "
             "8:30:15 AM] [FailureCategory=Cmdlet-ManagementObjectNotFoundException] 8B1D6F0A,"
             "Microsoft.Exchange.Management.RecipientTasks.EnableRemoteMailbox")


def test_a_remote_session_s_fq_error_names_the_exception_in_its_failure_category() -> None:
    """Exchange's remote FullyQualifiedErrorId starts with the server's bracket (commas inside)
    and names the exception in FailureCategory: the reason is that exception (before issue 28's
    fix it was "[Server=EX1"), and the user not found is permanent with its fix."""
    error = record_error("Enable-RemoteMailbox", "anna",
                         [Record("The operation couldn't be performed because object 'anna' "
                                 "couldn't be found.", fq_error=REMOTE_FQ)])
    assert ("ManagementObjectNotFoundException", "PermanentError",
            "check that the user still exists in Active Directory and is in a scope Exchange "
            "reads") == (record_reason(Record("x", fq_error=REMOTE_FQ)),
                         type(error).__name__, error.fix)


def test_a_failure_category_of_another_kind_names_its_exception_too() -> None:
    """Whatever word comes before the dash (Cmdlet, ServerOperation ...), the exception
    after it is the reason."""
    assert "RecipientTaskException" == record_reason(Record("x", fq_error=(
        "[Server=EX2,RequestId=1,TimeStamp=x] [FailureCategory=ServerOperation-"
        "RecipientTaskException] 5D1A,Microsoft.Exchange.Management.RecipientTasks.X")))


def test_a_reason_read_from_fq_error_decides_like_one_given() -> None:
    """A record with no reason but an fq_error naming ParseException is permanent, as the
    reason itself would be."""
    error = record_error("Enable-RemoteMailbox", "anna",
                         [Record("boom", fq_error="ParseException,Enable-RemoteMailbox")])
    assert ("PermanentError", "this is a bug in the service: report it") == (
        type(error).__name__, error.fix)


SETTINGS = ExchangeSettings(_env_file=None,  # type: ignore[call-arg]
                            url="https://ex1.contoso.com/PowerShell", user="CONTOSO\\svc",
                            password=SecretStr("not-a-real-password"), auth="ntlm",
                            timeout_seconds=45.0)
WHERE = "Exchange at https://ex1.contoso.com/PowerShell"


def test_refused_credentials_are_permanent() -> None:
    """HTTP 401 (pypsrp's AuthenticationError): the account's credentials, with the auth."""
    error = transport_error(AuthenticationError("401"), "Enable-RemoteMailbox", SETTINGS)
    assert ("PermanentError", "mailbox",
            f"{WHERE} refused the credentials of CONTOSO\\svc (HTTP 401, ntlm)") == kind(error)[:3]
    assert ("check EXCHANGE_USER (CONTOSO\\svc) and its password secret in Key Vault, that the "
            "account is not locked out, and that the /PowerShell virtual directory accepts "
            "EXCHANGE_AUTH=ntlm (for basic: Set-PowerShellVirtualDirectory "
            "-BasicAuthentication $true; docs/premises.md)") == error.fix


def test_a_refusal_by_the_connect_server_names_its_listener() -> None:
    """HTTP 401 from the Connect server's constrained endpoint names CONNECT_USER and the
    WinRM listener, not Exchange's virtual directory."""
    connect = SETTINGS.model_copy(update={"configuration_name": "ADSyncTrigger"})
    error = transport_error(AuthenticationError("401"), "Get-Command", connect)
    assert ("check CONNECT_USER (CONTOSO\\svc) and its password secret in Key Vault, that the "
            "account is not locked out, and that the server's WinRM HTTPS listener accepts "
            "ntlm (docs/premises.md)") == error.fix


def test_an_untrusted_certificate_is_permanent_a_cut_handshake_transient() -> None:
    """A TLS failure over the certificate needs CA_BUNDLE; one that ended the handshake
    early is retried."""
    untrusted = requests.exceptions.SSLError(ssl.SSLCertVerificationError(1, "unknown CA"))
    cut = requests.exceptions.SSLError("EOF occurred in violation of protocol")
    a = transport_error(untrusted, "Enable-RemoteMailbox", SETTINGS)
    b = transport_error(cut, "Enable-RemoteMailbox", SETTINGS)
    assert ("PermanentError", f"the TLS certificate of {WHERE} is not trusted") == kind(a)[::2]
    assert a.fix.startswith("add the CA that issued Exchange's certificate to CA_BUNDLE")
    assert ("TransientError", f"{WHERE} closed the connection during the TLS handshake for "
            "Enable-RemoteMailbox") == kind(b)[::2]


def test_a_ws_management_fault_is_transient_and_a_full_endpoint_waits_60_seconds() -> None:
    """WS-Management faults are retried; "maximum number of connections" (Exchange's
    throttling) waits 60 s, any other fault the default."""
    full = WSManFaultError(500, "ex1", "The WS-Management service cannot process the request. "
                           "The maximum number of connections for this user is exceeded.",
                           "", "", "")
    other = WSManFaultError(500, "ex1", "The pipeline was stopped.", "", "", "")
    a = transport_error(full, "Enable-RemoteMailbox", SETTINGS)
    b = transport_error(other, "Enable-RemoteMailbox", SETTINGS)
    assert ("TransientError", 60.0) == (type(a).__name__, a.retry_after)
    assert ("TransientError", None) == (type(b).__name__, b.retry_after)
    assert f"{WHERE} failed Enable-RemoteMailbox: The pipeline was stopped." == b.reason
    assert a.fix.startswith("nothing to do; the service retries (if this repeats, check "
                            "Exchange's throttling policy")


def test_a_fault_without_a_reason_names_its_code() -> None:
    """A fault with no reason text says its code instead."""
    error = transport_error(WSManFaultError(2150858843, "ex1", "", "", "", ""), "Get-Mailbox",
                            SETTINGS)
    assert f"{WHERE} failed Get-Mailbox: 2150858843" == error.reason


@pytest.mark.parametrize(("status", "kind_"), [
    (400, "PermanentError"), (403, "PermanentError"), (404, "PermanentError"),
    (499, "PermanentError"), (399, "TransientError"), (500, "TransientError"),
    (503, "TransientError"),
])
def test_http_4xx_is_the_configuration_s_other_statuses_are_retried(status: int,
                                                                    kind_: str) -> None:
    """An HTTP status from 400 to 499 (other than the 401 of credentials) means the URL or
    the configuration name is wrong; 5xx and anything else is retried."""
    error = transport_error(WinRMTransportError("http", status, "x"), "Get-Mailbox", SETTINGS)
    fix = ("check EXCHANGE_URL (https://<server>/PowerShell) and EXCHANGE_CONFIGURATION_NAME"
           if kind_ == "PermanentError" else RETRIES)
    assert (kind_, f"{WHERE} answered HTTP {status} to Get-Mailbox", fix) == (
        type(error).__name__, error.reason, error.fix)


def test_a_timeout_names_the_configured_seconds() -> None:
    """No answer within EXCHANGE_TIMEOUT_SECONDS: retried, and the reason says how long."""
    error = transport_error(requests.exceptions.ReadTimeout(), "Get-Mailbox", SETTINGS)
    assert ("TransientError", f"{WHERE} did not answer Get-Mailbox within 45 s", RETRIES) == (
        type(error).__name__, error.reason, error.fix)


def test_any_other_failure_is_a_connection_failure_retried() -> None:
    """A refused or reset connection (or anything else): retried, naming the exception."""
    error = transport_error(requests.exceptions.ConnectionError(), "Get-Mailbox", SETTINGS)
    assert ("TransientError",
            f"the connection to {WHERE} failed during Get-Mailbox (ConnectionError)") == (
        type(error).__name__, error.reason)
    assert error.fix.startswith("nothing to do; the service retries (if this repeats, check the "
                                "hybrid connection and that Exchange is up)")
    assert isinstance(error, TransientError)


class Bare:
    """A record with no reason and no fq_error attribute at all."""

    def __str__(self) -> str:
        return "bare"


def test_a_record_without_reason_attributes_has_no_reason() -> None:
    """A record object lacking reason and fq_error reads as no reason, and is retried."""
    error = record_error("Get-Mailbox", "anna", [Bare()])
    assert ("", "TransientError") == (record_reason(Bare()), type(error).__name__)


def _every_branch() -> list[ProvisioningError]:
    untrusted = requests.exceptions.SSLError(ssl.SSLCertVerificationError(1, "unknown CA"))
    return [
        record_error("C", "anna", [Record("x is already mail-enabled", "RecipientTaskException")]),
        record_error("C", "anna", [Record("x", "ParseException")]),
        record_error("C", "anna", [Record("x", "SomeException", 15)]),
        record_error("C", "anna", [Record("x", "SomeException", 5)]),
        record_error("C", "anna", [Record("x", "SomeException", 99)]),
        record_error("C", "anna", []),
        transport_error(AuthenticationError("401"), "C", SETTINGS),
        transport_error(untrusted, "C", SETTINGS),
        transport_error(requests.exceptions.SSLError("EOF"), "C", SETTINGS),
        transport_error(WSManFaultError(500, "ex1", "r", "", "", ""), "C", SETTINGS),
        transport_error(WinRMTransportError("http", 404, ""), "C", SETTINGS),
        transport_error(WinRMTransportError("http", 0, ""), "C", SETTINGS),
        transport_error(requests.exceptions.ReadTimeout(), "C", SETTINGS),
        transport_error(requests.exceptions.ConnectionError(), "C", SETTINGS),
    ]


def test_every_error_is_the_mailbox_step_s_with_its_reason_and_whole_fix() -> None:
    """Each branch's error, as the helpdesk reads it: step, reason and the whole fix."""
    assert [
        ("mailbox", "Exchange refused C for 'anna': x is already mail-enabled",
         "the user is already mail-enabled (mailbox, mail user or remote mailbox); convert it "
         "by hand with the Exchange tools or take it out of the provisioning group"),
        ("mailbox", "Exchange refused C for 'anna': x", "this is a bug in the service: report it"),
        ("mailbox", "Exchange refused C for 'anna': x", RETRIES),
        ("mailbox", "Exchange refused C for 'anna': x",
         "read Exchange's message above and correct the user"),
        ("mailbox", "Exchange refused C for 'anna': x", "nothing to do; the service retries, "
         "and reports the user if the error persists"),
        ("mailbox", "Exchange's C for 'anna' returned nothing and no error", RETRIES),
        ("mailbox", f"{WHERE} refused the credentials of CONTOSO\\svc (HTTP 401, ntlm)",
         "check EXCHANGE_USER (CONTOSO\\svc) and its password secret in Key Vault, that the "
         "account is not locked out, and that the /PowerShell virtual directory accepts "
         "EXCHANGE_AUTH=ntlm (for basic: Set-PowerShellVirtualDirectory "
         "-BasicAuthentication $true; docs/premises.md)"),
        ("mailbox", f"the TLS certificate of {WHERE} is not trusted",
         "add the CA that issued Exchange's certificate to CA_BUNDLE, or check EXCHANGE_URL's "
         "host name"),
        ("mailbox", f"{WHERE} closed the connection during the TLS handshake for C",
         "nothing to do; the service retries (if this repeats, check that Exchange and the "
         "hybrid connection's bridge are up)"),
        ("mailbox", f"{WHERE} failed C: r", "nothing to do; the service retries (if this "
         "repeats, check Exchange's throttling policy and the hybrid connection)"),
        ("mailbox", f"{WHERE} answered HTTP 404 to C",
         "check EXCHANGE_URL (https://<server>/PowerShell) and EXCHANGE_CONFIGURATION_NAME"),
        ("mailbox", f"{WHERE} answered HTTP 0 to C", RETRIES),
        ("mailbox", f"{WHERE} did not answer C within 45 s", RETRIES),
        ("mailbox", f"the connection to {WHERE} failed during C (ConnectionError)",
         "nothing to do; the service retries (if this repeats, check the hybrid connection "
         "and that Exchange is up)"),
    ] == [(e.step, e.reason, e.fix) for e in _every_branch()]
