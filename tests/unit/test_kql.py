"""The alert rules' and the workbook's KQL, parsed and run offline against the events of a real
lab run, and every event name they ask for checked against what the service emits.

The engine is duckdb-kql (PyPI, maintained): Microsoft's KQL grammar (ANTLR, from the
Kusto-Query-Language repository) translated to DuckDB SQL, with its correctness measured
against the Kusto emulator. Its limits are ours: it has no ``make-series`` nor
``percentiles()`` (the queries use ``summarize ... by bin()`` and ``percentile()``), ``render``
only passes rows through, and it knows nothing of Application Insights' schema; the tables
here hold the columns the queries read. It is not Azure Monitor: a query that passes here can
still meet a limit of the service (a function it lacks, a result size); the alert rules skip
the service's validation at deployment (tables are empty until the app runs), so the first
evaluation in Azure is the remaining check.

``traces`` is made from tests/fixtures/lab-events.jsonl, the ``--events`` JSON of two real
``python -m shared.cli run --once`` on the lab (tests/fixtures/capture.py), the way the Azure
Monitor exporter stores an event: ``message`` the record's line, ``customDimensions`` the event
and its fields as strings (a test below holds this mapping to the exporter's own conversion).
``requests`` is the host's table and the lab has no Functions host: its rows are made here, in
the documented columns the failure rule reads. Each alert query runs as Azure Monitor runs it:
over the rows of its rule's window, with ``now()`` at the window's end.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import duckdb_kql
import pytest
import structlog
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from shared import log, telemetry

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "infra" / "monitoring" / "alerts"
WORKBOOK = REPO / "infra" / "monitoring" / "workbook.json"
FIXTURE = REPO / "tests" / "fixtures" / "lab-events.jsonl"
SEVERITY = {"debug": 0, "info": 1, "warning": 2, "error": 3, "critical": 4}
# An event name in a query: compared with the event (`customDimensions["event"]) == "x"`,
# `event == "x"`) or listed (`... in ("x", "y")`).
EVENT_TESTS = re.compile(r'(?:customDimensions\["event"\]\)|\bevent)\s*'
                         r'(?:==\s*"([a-z_]+)"|in\s*\(([^)]*)\))')


@cache
def events() -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(line) for line in FIXTURE.read_text().splitlines())


def fields(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in ("timestamp", "level", "logger", "event")}


def at(event: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(event["timestamp"])


def trace_row(event: dict[str, Any]) -> dict[str, Any]:
    """A ``traces`` row as Application Insights keeps the event (see the module docstring)."""
    values = {k: v for k, v in fields(event).items() if v is not None}
    return {"timestamp": at(event), "message": log.line(event["event"], values),
            "severityLevel": SEVERITY[event["level"]], "operation_Id": "",
            "cloud_RoleInstance": "lab",
            "customDimensions": {**{k: str(v) for k, v in values.items()},
                                 "event": event["event"]}}


def query_text(name: str) -> str:
    return (ALERTS / f"{name}.kql").read_text()


def workbook_queries() -> dict[str, str]:
    items = json.loads(WORKBOOK.read_text())["items"]
    return {i["name"]: i["content"]["query"] for i in items if i["type"] == 3}


def run(query: str, rows: list[dict[str, Any]], *, now: dt.datetime,
        requests: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """``query`` over ``rows`` (traces) and ``requests``, with ``now()`` at ``now``."""
    con = duckdb_kql.connect()
    con.sql("CREATE TABLE traces (timestamp TIMESTAMPTZ, message VARCHAR, severityLevel INTEGER,"
            " operation_Id VARCHAR, cloud_RoleInstance VARCHAR, customDimensions JSON)")
    con.sql("CREATE TABLE requests (timestamp TIMESTAMPTZ, operation_Name VARCHAR,"
            " success BOOLEAN, resultCode VARCHAR, duration DOUBLE)")
    if rows:
        con.executemany("INSERT INTO traces VALUES (?, ?, ?, ?, ?, ?)", [
            [r["timestamp"], r["message"], r["severityLevel"], r["operation_Id"],
             r["cloud_RoleInstance"], json.dumps(r["customDimensions"])] for r in rows])
    if requests:
        con.executemany("INSERT INTO requests VALUES (?, ?, ?, ?, ?)", [
            [r["timestamp"], r["operation_Name"], r["success"], r["resultCode"], r["duration"]]
            for r in requests])
    relation = duckdb_kql.query(con, query, query_now=now)
    return [dict(zip(relation.columns, row, strict=True)) for row in relation.fetchall()]


def window(end: dt.datetime, minutes: float) -> list[dict[str, Any]]:
    """The traces rows of the ``minutes`` before ``end``: what the rule's window holds."""
    start = end - dt.timedelta(minutes=minutes)
    return [trace_row(e) for e in events() if start <= at(e) < end]


def first(name: str) -> dict[str, Any]:
    return next(e for e in events() if e["event"] == name)


def named(name: str) -> list[dict[str, Any]]:
    return [e for e in events() if e["event"] == name]


SECOND = dt.timedelta(seconds=1)


# -- the queries parse, and the names they ask for are the service's ---------------------------


def all_queries() -> dict[str, str]:
    return {**{p.stem: p.read_text() for p in sorted(ALERTS.glob("*.kql"))},
            **{f"workbook:{k}": v for k, v in workbook_queries().items()}}


@pytest.mark.parametrize("name", list(all_queries()))
def test_every_query_parses(name: str) -> None:
    """Pins that each alert and workbook query is KQL Microsoft's grammar accepts (each one
    also runs, below: the engine translates every construct it uses)."""
    assert [] == duckdb_kql.validate(all_queries()[name])


def asked(queries: dict[str, str]) -> set[str]:
    """The event names ``queries`` compare the event with."""
    names = set()
    for query in queries.values():
        for one, listed in EVENT_TESTS.findall(query):
            names |= {one} if one else set(re.findall(r'"([a-z_]+)"', listed))
    return names


def test_every_event_a_query_reads_is_catalogued_and_the_alerts_were_seen_in_the_lab() -> None:
    """Pins that the alerts and the workbook ask only for events the service emits: each name
    is in shared.telemetry.CATALOGUE (whose names the next test finds in shared/), and each
    name an alert reads was emitted by the lab run. (The workbook also reads events the run
    could not provoke: a role change applied after an approval, a safety stop at apply time,
    a stopped role cycle.)"""
    alerts = {k: v for k, v in all_queries().items() if not k.startswith("workbook:")}
    assert (set(), set()) == (asked(all_queries()) - set(telemetry.CATALOGUE),
                              asked(alerts) - {e["event"] for e in events()})
    assert len(asked(all_queries())) > 15


def test_every_catalogued_event_is_emitted_somewhere_in_shared() -> None:
    """Pins the catalogue against the code: each name appears as a string in shared/ outside
    the catalogue itself (a log call, a Transition's event, a telemetry helper)."""
    source = telemetry.__file__
    text = "\n".join(p.read_text() for p in (REPO / "shared").rglob("*.py")
                     if str(p) != source)
    own = Path(source).read_text().split("_RECORDED =", 1)[1]
    missing = [n for n in telemetry.CATALOGUE if f'"{n}"' not in text + own]
    assert [] == missing


def test_the_fixture_rows_are_what_the_azure_monitor_exporter_makes() -> None:
    """Pins the fixture's mapping: one event of each name of the lab run, logged again through
    shared.log into the distro's OpenTelemetry handler and converted by the Azure Monitor
    exporter, gives the message and customDimensions ``trace_row`` makes."""
    from azure.monitor.opentelemetry.exporter.export.logs._exporter import (
        _convert_log_to_envelope,
    )

    samples = list({e["event"]: e for e in events()}.values())
    exported = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exported))
    handler = LoggingHandler(logger_provider=provider)
    factory = logging.getLogRecordFactory()
    levels = {name: logging.getLogger(name).level for name in (log.ROOT, *log._CHATTY)}
    logging.getLogger().addHandler(handler)
    try:
        log.configure("DEBUG", console=False)
        logger = log.get_logger("shared.fixture")
        for e in samples:
            logger.info(e["event"], **fields(e))
    finally:
        logging.getLogger().removeHandler(handler)
        logging.setLogRecordFactory(factory)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        structlog.reset_defaults()
    made = []
    for caught in exported.get_finished_logs():
        envelope: Any = _convert_log_to_envelope(caught)
        data = envelope.data.base_data
        dims = {k: v for k, v in data.properties.items()
                if not k.startswith("code.") and k != "logger_name"}
        made.append((data.message, dims))
    assert [(trace_row(e)["message"], trace_row(e)["customDimensions"]) for e in samples] == made


# -- the alert rules ---------------------------------------------------------------------------


def test_poison_alert_names_the_queue_of_a_parked_message() -> None:
    """Pins ``poison-message`` (5-minute window): a window holding the lab's parked message
    gives one row with its queue and reason; the window before it, none."""
    parked = at(first("message_poisoned"))
    rows = run(query_text("poison"), window(parked + SECOND, 5), now=parked + SECOND)
    assert [("mailbox", "not base64")] == [(r["queue"], r["reason"]) for r in rows]
    assert [] == run(query_text("poison"), window(parked, 5), now=parked)


def test_no_poll_alert_fires_only_after_three_intervals_without_a_poll() -> None:
    """Pins ``no-poll`` (three 5-minute intervals): silent over a window holding a poll,
    one row (no poll) over the 15 minutes after the run's last event."""
    polled = at(first("poll_done"))
    assert [] == run(query_text("no-poll"), window(polled + SECOND, 15), now=polled + SECOND)
    later = at(events()[-1]) + dt.timedelta(minutes=16)
    rows = run(query_text("no-poll"), window(later, 15), now=later)
    assert [0] == [r["polls"] for r in rows]


def test_stuck_alert_lists_the_users_the_run_found_stuck() -> None:
    """Pins ``user-stuck``: over the whole run, one row per ``user_stuck`` event, with its step
    and account (the oracle: the events themselves)."""
    end = at(events()[-1]) + SECOND
    rows = run(query_text("stuck"), window(end, 60), now=end)
    expected = sorted((e["step"], e["account"], e["attempts"]) for e in named("user_stuck"))
    assert expected == sorted((r["step"], r["account"], r["attempts"]) for r in rows)
    assert expected  # the run had stuck users


def test_shortage_alert_counts_waiting_users_per_sku() -> None:
    """Pins ``licence-shortage`` (2-hour window): one row per SKU with the number of distinct
    users waiting for one of its units, as the run's user_waiting events say."""
    end = at(events()[-1]) + SECOND
    rows = run(query_text("shortage"), window(end, 120), now=end)
    users: dict[str, set[str]] = defaultdict(set)
    for e in named("user_waiting"):
        if e["wait"] == "shortage":
            users[e["sku"]].add(e["user"])
    assert {sku: len(u) for sku, u in users.items()} == {
        r["sku"]: r["users_waiting"] for r in rows}
    assert users


def test_held_plan_alert_names_the_plan_and_its_changes() -> None:
    """Pins ``role-plan-held``: the held plan of the run's second cycle, with its grants and
    revocations, once however many cycles held it."""
    end = at(events()[-1]) + SECOND
    rows = run(query_text("held-plan"), window(end, 30), now=end)
    expected = {(e["plan_id"], e["grants"], e["revocations"], e["guard"])
                for e in named("role_plan_held")}
    assert expected == {(r["plan_id"], r["grants"], r["revocations"], r["guard"]) for r in rows}
    assert expected


def test_relay_alert_fires_while_the_outage_lasts_and_clears_when_it_ends() -> None:
    """Pins ``relay-outage``: between the lab outage's relay_unreachable and relay_restored
    the hybrid connection is listed; once restored, nothing."""
    down, back = at(first("relay_unreachable")), at(first("relay_restored"))
    rows = run(query_text("relay-outage"), window(down + SECOND, 360), now=down + SECOND)
    assert [first("relay_unreachable")["hybrid_connection"]] == [
        r["hybrid_connection"] for r in rows]
    assert [] == run(query_text("relay-outage"), window(back + SECOND, 360),
                     now=back + SECOND)


def test_function_failure_alert_needs_both_the_rate_and_the_count() -> None:
    """Pins ``function-failures`` on made requests rows (the lab has no Functions host): 3 of
    10 license invocations failed (30 %) fires; 3 of 100 mailbox ones (3 %) and 2 of 2 roles
    ones (under 3 failures) do not."""
    now = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)

    def calls(name: str, total: int, failed: int) -> Iterator[dict[str, Any]]:
        for i in range(total):
            yield {"timestamp": now - dt.timedelta(seconds=i + 1), "operation_Name": name,
                   "success": i >= failed, "resultCode": "1" if i < failed else "0",
                   "duration": 10.0}

    requests = [*calls("license", 10, 3), *calls("mailbox", 100, 3), *calls("roles", 2, 2)]
    rows = run(query_text("function-failures"), [], now=now, requests=requests)
    assert [("license", 10, 3, 30.0)] == [
        (r["operation_Name"], r["invocations"], r["failures"], r["failure_percent"])
        for r in rows]


# -- the workbook ------------------------------------------------------------------------------


# The leavers' panels: the fixture's run predates them (its leavers group was empty); they are
# pinned below on events made as shared/flow/leavers.py logs them.
LEAVERS_PANELS = ("leavers_steps", "leavers_kept", "leavers_held", "leavers_reclaimed")


@pytest.mark.parametrize("name", [n for n in workbook_queries() if n not in LEAVERS_PANELS])
def test_every_workbook_query_shows_rows_for_the_lab_run(name: str) -> None:
    """Pins that each part of the workbook has something to show for a real run (a query
    whose event names or fields were wrong would come back empty)."""
    end = at(events()[-1]) + SECOND
    rows = run(workbook_queries()[name], [trace_row(e) for e in events()], now=end)
    assert rows != []


def test_workbook_failures_by_reason_count_the_runs_failures() -> None:
    """Pins 'Failures by reason': per step and reason kind, the failures of the run."""
    end = at(events()[-1]) + SECOND
    rows = run(workbook_queries()["failures_by_reason"], [trace_row(e) for e in events()],
               now=end)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for e in named("user_failed"):
        counts[(e["step"], e["reason_kind"])] += 1
    assert dict(counts) == {(r["step"], r["reason_kind"]): r["failures"] for r in rows}


def test_workbook_latency_measures_from_the_first_mailbox_enqueue_to_the_licence() -> None:
    """Pins 'Time from the poll ... to the licence': the users provisioned in the run whose
    mailbox work item the run queued, and the longest of their waits."""
    end = at(events()[-1]) + SECOND
    rows = run(workbook_queries()["latency"], [trace_row(e) for e in events()], now=end)
    started: dict[str, dt.datetime] = {}
    for e in named("work_enqueued"):
        if e["step"] == "mailbox":
            started.setdefault(e["correlation_id"], at(e))
    waits = [(at(e) - started[e["correlation_id"]]).total_seconds() / 60
             for e in named("user_provisioned") if e["correlation_id"] in started]
    assert (len(waits), round(max(waits), 1)) == (
        sum(r["users"] for r in rows), max(r["max_minutes"] for r in rows))


def test_workbook_stages_now_are_the_last_reconcile_counts() -> None:
    """Pins 'Users per stage now': per stage, the counts of the last users_in_stage."""
    end = at(events()[-1]) + SECOND
    rows = run(workbook_queries()["stages_now"], [trace_row(e) for e in events()], now=end)
    last = {e["stage"]: e for e in named("users_in_stage")}
    assert {s: (e["users"], e["waiting"], e["failed"], e["stuck"]) for s, e in last.items()} == {
        r["stage"]: (r["users"], r["waiting"], r["failed"], r["stuck"]) for r in rows}


# -- the workbook's leavers panels -------------------------------------------------------------

LEAVERS_START = dt.datetime(2026, 11, 30, 22, 0, tzinfo=dt.UTC)


def leaver_event(event: str, minutes: float, **values: Any) -> dict[str, Any]:
    """An event as the fixture holds one, ``minutes`` after LEAVERS_START."""
    when = LEAVERS_START + dt.timedelta(minutes=minutes)
    return {"timestamp": when.isoformat(), "level": "info", "logger": "shared.flow",
            "event": event, **values}


# Two leavers returned licences in November and December, one kept its licence, two cycles
# were held and one of them approved; the fields are those shared/flow/leavers.py logs (the
# next test holds them to its log calls).
LEAVER_EVENTS = (
    leaver_event("leaver_planned", 0, user="g1", name="jdoe", correlation_id="c1"),
    leaver_event("leaver_converted", 1, user="g1", name="jdoe", hidden=False,
                 correlation_id="c1"),
    leaver_event("leaver_unlicensed", 2, user="g1", name="jdoe",
                 skus="ENTERPRISEPACK,EXCHANGEENTERPRISE", correlation_id="c1"),
    leaver_event("leaver_left_group", 3, user="g1", name="jdoe", group="O365_Leavers",
                 correlation_id="c1"),
    leaver_event("leaver_unlicensed", 150, user="g2", name="amy", skus="ENTERPRISEPACK",
                 correlation_id="c2"),
    leaver_event("leaver_kept", 151, user="g3", name="big", skus="ENTERPRISEPACK",
                 reason="size 61.2 GB > 50 GB", correlation_id="c3"),
    leaver_event("leaver_kept", 152, user="g4", name="hold", skus="SPE_E3",
                 reason="litigation hold", correlation_id="c4"),
    leaver_event("leaver_kept", 153, user="g4", name="hold", skus="SPE_E3",
                 reason="litigation hold", correlation_id="c4"),
    leaver_event("leavers_held", 160, plan_id="p1", count=14, limit=10),
    leaver_event("leavers_held", 170, plan_id="p1", count=14, limit=10),
    leaver_event("leavers_approved", 180, plan_id="p1", count=14),
    leaver_event("leavers_held", 190, plan_id="p2", count=12, limit=10),
)
LEAVERS_END = LEAVERS_START + dt.timedelta(hours=4)


def leaver_panel(name: str) -> list[dict[str, Any]]:
    return run(workbook_queries()[name], [trace_row(e) for e in LEAVER_EVENTS], now=LEAVERS_END)


def logged_fields() -> dict[str, set[str]]:
    """Event name → the fields its log calls in shared/ pass (``log.info("name", a=...)``)."""
    found: dict[str, set[str]] = defaultdict(set)
    for path in (REPO / "shared").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("debug", "info", "warning", "error")
                    and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                found[node.args[0].value] |= {k.arg for k in node.keywords if k.arg}
    return found


def test_the_leaver_events_here_are_those_the_service_logs() -> None:
    """Pins LEAVER_EVENTS to the code: each event is logged somewhere in shared/ with at least
    the fields given here, so the panels read fields the service writes."""
    logged = logged_fields()
    missing = {e["event"]: sorted(set(fields(e)) - logged.get(e["event"], set()))
               for e in LEAVER_EVENTS}
    assert {} == {name: gone for name, gone in missing.items() if gone}
    assert set(LEAVERS_PANELS) <= set(workbook_queries())


def test_workbook_leaver_steps_count_each_event_per_day() -> None:
    """Pins 'Leaver steps per day': per UTC day and event, the events of that day."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for e in LEAVER_EVENTS:
        counts[(at(e).date().isoformat(), e["event"])] += 1
    rows = leaver_panel("leavers_steps")
    assert dict(counts) == {(r["day"].date().isoformat(), r["event"]): r["events"]
                            for r in rows}
    assert [r["day"] for r in rows] == sorted((r["day"] for r in rows), reverse=True)


def test_workbook_leavers_kept_count_distinct_leavers_per_reason() -> None:
    """Pins 'Licences kept, by reason': one leaver kept twice for the same reason counts once."""
    rows = leaver_panel("leavers_kept")
    assert [("size 61.2 GB > 50 GB", 1), ("litigation hold", 1)] == sorted(
        ((r["reason"], r["leavers"]) for r in rows), reverse=True)


def test_workbook_held_leaver_cycles_show_when_each_was_approved() -> None:
    """Pins 'Held leaver cycles': one row per plan, newest first, with its leavers, the limit,
    when it was first and last held, and when it was approved (none yet for p2)."""
    rows = leaver_panel("leavers_held")
    minutes = [(r["plan_id"], r["leavers"], r["max_per_day"],
                *(None if r[k] is None else (r[k] - LEAVERS_START).total_seconds() / 60
                  for k in ("first_held", "last_held", "approved"))) for r in rows]
    assert [("p2", 12, 10, 190, 190, None), ("p1", 14, 10, 160, 170, 180)] == minutes


def test_workbook_reclaimed_units_per_sku_and_month() -> None:
    """Pins 'Licence units returned': one unit per SKU of each leaver_unlicensed event, per
    calendar month (November's 22:02 UTC is not December's)."""
    rows = leaver_panel("leavers_reclaimed")
    assert [("2026-12", "ENTERPRISEPACK", 1, 1), ("2026-11", "ENTERPRISEPACK", 1, 1),
            ("2026-11", "EXCHANGEENTERPRISE", 1, 1)] == [
        (f"{r['month']:%Y-%m}", r["sku"], r["units"], r["leavers"]) for r in rows]
