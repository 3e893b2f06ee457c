"""Graph's one error classifier (``shared.graph.classify``) in memory: which answers are
transient and how long they wait, which are refusals, and the fix each refusal carries."""

from __future__ import annotations

import pytest

from shared.errors import TransientError
from shared.graph.client import GraphRefusal, classify


@pytest.mark.parametrize("status", [429, 503, 504, 500, 502, 599])
def test_throttling_and_server_errors_are_transient_after_retry_after(status: int) -> None:
    """429, 503, 504 and every 5xx: transient, waiting as Retry-After says."""
    error = classify(status, "Busy", "Try later.", {"Retry-After": "7"}, action="assignLicense",
                     user="anna@contoso.com")
    assert (TransientError, f"Graph answered {status} Busy to assignLicense: Try later", 7.0,
            "anna@contoso.com", "graph", "none needed; retried later") == (
        type(error), error.reason, error.retry_after, error.user, error.step, error.fix)


def test_without_retry_after_a_transient_answer_waits_the_last_back_off() -> None:
    """No Retry-After: the back-off of the last attempt (the sixth), 60 s."""
    assert 60.0 == classify(503, "x", "y", None, action="a").retry_after


@pytest.mark.parametrize("status", [400, 404, 409, 412, 499])
def test_other_answers_are_refusals_with_status_and_code(status: int) -> None:
    """Any other status is a GraphRefusal with Graph's status and code, and a general fix."""
    error = classify(status, "Request_BadRequest", "Something odd.", None, action="PATCH user",
                     user="anna@contoso.com")
    assert (GraphRefusal, status, "Request_BadRequest",
            "Graph answered " f"{status} Request_BadRequest to PATCH user: Something odd",
            "correct what Graph names, on the user in AD or in the tenant, then retry") == (
        type(error), error.status, error.code, error.reason, error.fix)


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_point_at_the_credential_and_permissions(status: int) -> None:
    """Unauthenticated or forbidden: the fix names AZURE_CREDENTIAL and docs/permissions.md,
    even when the message matches a user-data fix."""
    error = classify(status, "Authorization_RequestDenied", "Invalid usage location.", None,
                     action="a")
    assert ("check AZURE_CREDENTIAL and that the app holds the Graph permissions "
            "docs/permissions.md lists for the enabled features") == error.fix


@pytest.mark.parametrize(("message", "fix"), [
    ("License assignment cannot be done for user with INVALID USAGE LOCATION.",
     "set the user's country attribute to a country where the licence is sold; the service "
     "sets usageLocation from it"),
    ("Invalid value specified for property 'usageLocation' of resource 'User'.",
     "set the user's country attribute to an ISO 3166 country code"),
    ("License assignment failed because service plans a, b are mutually exclusive.",
     "the user holds another licence whose plans conflict with this one: remove it in the "
     "Microsoft 365 admin centre (or from the group that assigns it)"),
    ("Service plan x depends on the service plan y.",
     "a plan of the licence needs another the user lacks: assign the prerequisite licence "
     "first"),
    ("User license is inherited from a group membership and it cannot be removed.",
     "the user's licence comes from group-based licensing: take the user out of that group, "
     "or licence the user by that group instead"),
    ("Unable to update the specified properties for on-premises mastered Directory Sync "
     "objects.", "change the value in Active Directory; Entra Connect syncs it"),
    ("License x does not correspond to a valid company License.",
     "the tenant has no such SKU: map the licence name in LICENSE_MAP to a SKU the tenant holds"),
    ("Resource 'x' does not exist or one of its queried reference-property objects are not "
     "present.", "the cloud user is gone: check Entra Connect (deleted, or moved out of the "
     "sync scope)"),
])
def test_refusals_about_a_user_s_data_carry_the_helpdesk_s_fix(message: str, fix: str) -> None:
    """Each of the eight messages about a user's data, matched in any case, maps to its fix."""
    assert fix == classify(400, "Request_BadRequest", message, None, action="a").fix


def test_the_reason_drops_only_the_final_period() -> None:
    """Graph's message ends the reason without its trailing period(s)."""
    assert "Graph answered 400 c to a: v1.0 says no" == classify(
        400, "c", "v1.0 says no..", None, action="a").reason
