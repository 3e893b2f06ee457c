"""The logging path: structlog events reach ``logging`` as records whose extra fields are the
event's fields, masked before any handler sees them; the Azure Monitor distro's handler turns
them into a ``traces`` row with the fields as customDimensions and the invocation's trace as
operation_Id; a terminal gets readable lines, ``--events`` JSON objects. In memory, no peer.

The OpenTelemetry side runs the ``LoggingHandler`` that ``configure_azure_monitor`` puts on
the root logger into an in-memory exporter, and the Azure Monitor exporter's envelope
conversion on what it caught: what Application Insights would store, short of the network.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from opentelemetry import context
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared import log

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Records(logging.Handler):
    """Every record the root logger handles, as it arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[Records]:
    """The root logger's records while the test runs; logging and structlog as they were
    afterwards (the handlers configure() added removed, the record factory restored)."""
    factory = logging.getLogRecordFactory()
    levels = {name: logging.getLogger(name).level for name in (log.ROOT, *log._CHATTY)}
    handler = Records()
    logging.getLogger().addHandler(handler)
    yield handler
    log.configure("INFO", console=False)  # drops any stream or file handler a test added
    logging.getLogger().removeHandler(handler)
    logging.setLogRecordFactory(factory)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    structlog.reset_defaults()


def _logger() -> Any:
    return log.get_logger(f"{log.ROOT}.test.{uuid.uuid4().hex[:6]}")


def test_an_event_is_a_record_whose_extra_fields_are_its_fields(records: Records) -> None:
    """Pins the stdlib route: the record's fields are the event's (plus ``event``), None is
    left out, a field named like a LogRecord attribute is renamed rather than lost, and the
    message is one readable line that starts with the event."""
    log.configure("INFO", console=False)
    _logger().info("step_failed", user="u1", step="license", attempts=3, name="jdoe",
                   reason=None)
    record = records.records[-1]
    expected = {"event": "step_failed", "user": "u1", "step": "license", "attempts": 3,
                "name_": "jdoe"}
    assert expected == log.fields_of(record)
    assert "step_failed user=u1 step=license attempts=3 name=jdoe" == record.getMessage()
    assert ("INFO", None) == (record.levelname, record.exc_info)


def test_secrets_are_masked_before_any_handler_sees_them(records: Records) -> None:
    """Pins redaction in the path: a registered secret is masked in the fields, the message,
    an exception's traceback (rendered to text, never handed over as exc_info) and another
    library's record, its traceback included."""
    secret = f"S3cr3t-{uuid.uuid4().hex[:8]}"
    log.register_secret(secret)
    log.configure("INFO", console=False)
    try:
        raise ValueError(f"refused {secret}")
    except ValueError:
        _logger().exception("handler_crashed", queue="mailbox", reason=f"pw {secret}")
    logging.getLogger("azure.core").warning("connection string %s", secret)
    try:
        raise OSError(f"bad key {secret}")
    except OSError:
        logging.getLogger("urllib3").exception("request failed")
    ours, theirs, traced = records.records[-3:]
    fields = log.fields_of(ours)
    assert ("pw ***", None) == (fields["reason"], ours.exc_info)
    assert fields["exception"].endswith("ValueError: refused ***")
    assert [] == [r for r in (ours.getMessage(), theirs.getMessage(), json.dumps(fields))
                  if secret in r]
    assert "connection string ***" == theirs.getMessage()
    assert (None, "OSError: bad key ***") == (traced.exc_info,
                                             traced.getMessage().splitlines()[-1])


def test_the_level_filters_events_and_chatty_libraries_keep_to_warnings(
        records: Records) -> None:
    """Pins LOG_LEVEL: an info event is dropped at WARNING, a warning passes; the Azure SDK's
    per-request INFO lines do not reach the handlers."""
    log.configure("WARNING", console=False)
    logger = _logger()
    logger.info("poll_done", added=1)
    logger.warning("relay_unreachable", relay="ns")
    logging.getLogger("azure.core.pipeline").info("Request URL: ...")
    assert ["relay_unreachable"] == [log.fields_of(r).get("event") for r in records.records]


def test_the_azure_monitor_handler_makes_custom_dimensions_and_the_invocations_operation_id(
        records: Records) -> None:
    """Pins what Application Insights stores for an event: the OpenTelemetry handler (the one
    the worker's configure_azure_monitor adds) gets the fields as attributes and, inside an
    invocation's trace context (attached by the worker from the invocation's traceparent),
    its trace id; the Azure Monitor exporter turns that into customDimensions (strings) and
    operation_Id."""
    from azure.monitor.opentelemetry.exporter.export.logs._exporter import (
        _convert_log_to_envelope,
    )

    exported = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exported))
    otel = LoggingHandler(logger_provider=provider)
    logging.getLogger().addHandler(otel)
    try:
        log.configure("INFO", console=False)
        token = context.attach(TraceContextTextMapPropagator().extract(
            {"traceparent": TRACEPARENT}))
        try:
            _logger().info("poll_done", group="O365_Provision", added=2)
        finally:
            context.detach(token)
    finally:
        logging.getLogger().removeHandler(otel)
    (caught,) = exported.get_finished_logs()
    envelope: Any = _convert_log_to_envelope(caught)
    data = envelope.data.base_data
    dimensions = {k: v for k, v in data.properties.items()
                  if not k.startswith("code.") and k != "logger_name"}
    expected = {"event": "poll_done", "group": "O365_Provision", "added": "2"}
    assert expected == dimensions
    assert ("0af7651916cd43dd8448eb211c80319c", "poll_done group=O365_Provision added=2") == (
        envelope.tags["ai.operation.id"], data.message)


def test_a_terminal_gets_readable_lines_and_json_when_asked(records: Records,
                                                            monkeypatch: Any) -> None:
    """Pins the console: json=False writes '<time> <LEVEL> <event> key=value' lines (no JSON),
    json=True one JSON object per event with its fields."""
    for json_ in (False, True):
        stream = io.StringIO()
        monkeypatch.setattr("sys.stderr", stream)
        log.configure("INFO", json=json_)
        _logger().info("report_sent", users=3, waiting=1)
        text = stream.getvalue().strip()
        if json_:
            body = json.loads(text)
            expected = {"event": "report_sent", "users": 3, "waiting": 1, "level": "info"}
            assert expected == {k: body[k] for k in expected}
        else:
            assert ("INFO", "report_sent users=3 waiting=1") == (
                text.split()[1], text.split(maxsplit=2)[2])
    assert 1 == sum(isinstance(h, logging.StreamHandler) and h.stream is stream
                    for h in logging.getLogger().handlers)


def test_events_file_keeps_one_json_object_per_event(records: Records, tmp_path: Path) -> None:
    """Pins ``--events FILE``: every event, as a JSON object per line with its time, level,
    logger and fields; another library's warning is kept with its message as the event."""
    path = tmp_path / "events.jsonl"
    log.configure("INFO", console=False, events=path)
    _logger().info("user_provisioned", user="u1", sku="ENTERPRISEPACK")
    logging.getLogger("ldap3").warning("odd answer")
    log.configure("INFO", console=False)  # closes the file
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [("user_provisioned", "u1", "info"), ("odd answer", None, "warning")] == [
        (r["event"], r.get("user"), r["level"]) for r in rows]
