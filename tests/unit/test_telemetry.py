"""The operator's events (``shared.telemetry``), in memory: what each transition, timer count
and peer report emits, asserted as structured events (structlog's capture), not as text.
The queries that read them are tested in tests/unit/test_kql.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from structlog.testing import capture_logs

from shared import telemetry
from shared.errors import PermanentError
from shared.flow.transitions import advance
from shared.results import Done, NotYet, Shortage, Wait
from shared.store.ledger import State
from shared.store.messages import Step
from tests.unit.flow.test_transitions import NOW, POLICY, USER, item, row


def _events(captured: Sequence[Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(e["event"], {k: v for k, v in e.items() if k not in ("event", "log_level")})
            for e in captured]


def test_reason_kind_takes_the_values_out_of_a_reason() -> None:
    """Pins counting failures by kind: two reasons that differ only in quoted values, a GUID,
    an address or a number are one kind."""
    one = "extensionAttribute1 'E5' names no entry of LICENSE_MAP for 6f1b3c1e-1a2b-4c3d-" \
          "8e9f-0123456789ab after 24 h"
    two = "extensionAttribute1 'P1' names no entry of LICENSE_MAP for 00000000-1a2b-4c3d-" \
          "8e9f-0123456789ab after 48 h"
    expected = "extensionAttribute1 … names no entry of LICENSE_MAP for … after … h"
    assert (expected, expected) == (telemetry.reason_kind(one), telemetry.reason_kind(two))
    assert "address … is in use by …" == telemetry.reason_kind(
        "address jdoe@contoso.com is in use by \"Jane Doe\"")


def test_a_licensed_user_is_one_user_provisioned_event() -> None:
    """Pins ``user_provisioned``: the licence step's Done (with its digest row) gives one
    event with the user, the licence and the correlation id, and no other telemetry event."""
    report = {"name": "jdoe", "display_name": "Jane", "mail": "jdoe@contoso.com",
              "licence": "E3", "sku": "ENTERPRISEPACK", "status": "licensed", "alias": "jdoe"}
    t = advance(row(), item(), Done("jdoe", report=report), NOW, POLICY)
    with capture_logs() as captured:
        telemetry.transition(item(), t, 1)
    expected = [("user_provisioned", {"user": str(USER), "account": "jdoe", "licence": "E3",
                                      "sku": "ENTERPRISEPACK", "correlation_id": "cid-00000001"})]
    assert expected == _events(captured)


def test_a_permanent_failure_is_counted_by_kind() -> None:
    """Pins ``user_failed``: the reason and its kind (values taken out), at warning level."""
    error = PermanentError("country 'XX' is not an ISO 3166-1 code", user="jdoe", fix="set c")
    t = advance(row(), item(), error, NOW, POLICY)
    with capture_logs() as captured:
        telemetry.transition(item(), t, 1)
    ((name, fields),) = _events(captured)
    assert ("user_failed", "country … is not an ISO …-… code", "warning") == (
        name, fields["reason_kind"], captured[0]["log_level"])


def test_a_wait_for_a_unit_names_the_sku_and_the_stuck_user_is_told_once() -> None:
    """Pins ``user_waiting`` (with the SKU of a shortage, at every attempt), ``sku_shortage``
    (the first of the day, with its units) and ``user_stuck`` (exactly at STUCK_AFTER
    attempts of a wait other than a shortage)."""
    short = NotYet(Wait.SHORTAGE, "no free unit of ENTERPRISEPACK", user="jdoe",
                   shortage=Shortage("ENTERPRISEPACK", 25, 25, first_today=True))
    sync = NotYet(Wait.SYNC, "not synced yet", user="jdoe")
    with capture_logs() as captured:
        telemetry.transition(item(), advance(row(2), item(), short, NOW, POLICY), 2)
        stuck_row = row(POLICY.stuck_after)
        telemetry.transition(item(), advance(stuck_row, item(), sync, NOW, POLICY),
                             POLICY.stuck_after)
    assert [
        ("sku_shortage", {"sku": "ENTERPRISEPACK", "consumed": 25, "total": 25}),
        ("user_waiting", {"user": str(USER), "step": "license", "wait": "shortage",
                          "attempts": 2, "sku": "ENTERPRISEPACK",
                          "correlation_id": "cid-00000001"}),
        ("user_stuck", {"user": str(USER), "account": "jdoe", "step": "license",
                        "reason": "not synced yet", "attempts": POLICY.stuck_after}),
        ("user_waiting", {"user": str(USER), "step": "license", "wait": "sync",
                          "attempts": POLICY.stuck_after, "sku": None,
                          "correlation_id": "cid-00000001"}),
    ] == _events(captured)


def test_users_in_stage_counts_waiting_failed_and_stuck_members() -> None:
    """Pins ``users_in_stage``: members (a member with no ledger row counts), those waiting,
    failed, and waiting at STUCK_AFTER attempts or more."""
    rows = [None, row(1, state=State.WAITING), row(9, state=State.WAITING),
            row(9, state=State.FAILED), row(1, state=State.DONE)]
    with capture_logs() as captured:
        telemetry.stages(Step.LICENSE.value, "O365_License", rows, 6)
    expected = [("users_in_stage", {"stage": "license", "group": "O365_License", "users": 5,
                                    "waiting": 2, "failed": 1, "stuck": 1})]
    assert expected == _events(captured)


def test_every_catalogued_event_names_its_emitter_and_the_helpers_emit_catalogued_names() -> None:
    """Pins the catalogue as the one list: each entry says who emits it, with which fields;
    and every helper of shared.telemetry emits a name that is in it."""
    sku = dataclasses.make_dataclass("Sku", ["part_number", "prepaid", "consumed"])
    with capture_logs() as captured:
        telemetry.enqueued(item(Step.MAILBOX), 0.0)
        telemetry.held_plan("0123456789abcdef", 0, 12, "12 revocations over the limit")
        telemetry.sku_capacity([sku("ENTERPRISEPACK", 25, 20)])
        telemetry.graph_usage(10, 4, 1, 150.0, 3000, 150.0)
        telemetry.exchange_session_error("Enable-RemoteMailbox", "ConnectionError", True)
    names = [e["event"] for e in captured]
    assert [] == [n for n in names if n not in telemetry.CATALOGUE]
    assert [] == [n for n, (who, fields, what) in telemetry.CATALOGUE.items()
                  if not (who and fields and what)]
    assert {"plan_id": "0123456789abcdef", "guard": "revocation-threshold", "grants": 0,
            "revocations": 12, "reason": "12 revocations over the limit"} == _events(captured)[1][1]
