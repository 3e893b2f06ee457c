"""Structured logging: events with fields (``user``, ``step``, ``outcome``, ``correlation_id``).

Every event goes through the standard ``logging`` module, so whatever handler the process has
sees it with its fields::

    log.info("step_failed", user=..., step=...)
      structlog: context variables, exception rendered, secrets masked (``_redact_event``)
      ──▶ logging.LogRecord  msg  = "step_failed user=... step=..." (one readable line)
                             extra = {"event": "step_failed", "user": ..., "step": ...}
      ──▶ the Functions worker's handler: the line, to the host, with the invocation id
      ──▶ the Azure Monitor distro's handler (PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY):
          a ``traces`` row whose customDimensions are the fields and whose operation_Id is
          the invocation's (the worker attaches the invocation's trace context)
      ──▶ on a terminal and in the CLI (``console=True``): one readable line on stderr

Secrets the provider hands out are registered here and masked in every event, as a last
line of defence: no code should log them in the first place. ``redact`` masks a secret as it
is and as HTML escaping writes it (``&`` → ``&amp;``), so a mail body rendered with autoescape
cannot carry one past it either. The masking happens in structlog, before any handler sees a
value; an exception is rendered to text there too (never handed to a handler as ``exc_info``,
whose traceback no one would mask), and records of other libraries are masked when they are
made, their tracebacks included (``_redacting_factory``).
"""

from __future__ import annotations

import html
import json as jsonlib
import logging
import sys
import traceback
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import structlog

_secrets: tuple[str, ...] = ()  # longest first: a secret inside another is masked whole
MASK = "***"
ROOT = "shared"  # every logger of the service is named below it
# LogRecord's own attributes: a field with one of these names is renamed, not lost.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message",
                                                                              "asctime"}
# Libraries that log every request at INFO: kept to warnings, or they drown the service.
_CHATTY = ("azure", "httpx", "urllib3", "msal")


def register_secret(value: str) -> None:
    """Mask ``value`` wherever it would appear in a log event or a mail from now on."""
    global _secrets  # replaced whole: a thread that is redacting keeps a consistent tuple
    if len(value) >= 4:
        # markupsafe (jinja2's autoescape) writes ' and " as &#39; and &#34;; html.escape
        # as &#x27; and &quot;.
        escaped = html.escape(value, quote=False)
        forms = {value, escaped, html.escape(value),
                 escaped.replace('"', "&#34;").replace("'", "&#39;")}
        _secrets = tuple(sorted(set(_secrets) | forms, key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every registered secret masked, longest first."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
        elif not isinstance(value, (int, float, bool, type(None))):
            event[key] = redact(str(value))
    return event


def line(event: str, fields: MutableMapping[str, Any]) -> str:
    """One readable line: the event, then ``key=value`` for each field (quoted when needed)."""
    parts = [event]
    for key, value in fields.items():
        if key == "exception":  # a traceback reads best as itself, after the line
            continue
        text = str(value)
        if not text or any(c.isspace() or c in "\"=" for c in text):
            text = jsonlib.dumps(text, ensure_ascii=False)
        parts.append(f"{key}={text}")
    trace = fields.get("exception")
    return " ".join(parts) + (f"\n{trace}" if trace else "")


def _to_record(_: Any, __: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``logging.Logger.<level>``: the line as the message, the
    fields as ``extra`` (None dropped: OpenTelemetry refuses it as an attribute value)."""
    name = str(event.pop("event", ""))
    fields = {k: v for k, v in event.items() if v is not None}
    extra = {(f"{k}_" if k in _RESERVED else k): v for k, v in fields.items()}
    extra["event"] = name
    return {"msg": line(name, fields), "extra": extra}


class _Fields(logging.Formatter):
    """A record as one JSON object: time, level, logger, event and fields (``--events``)."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "timestamp": self.formatTime(record), "level": record.levelname.lower(),
            "logger": record.name,
        }
        body.update(fields_of(record) or {"event": record.getMessage()})
        return jsonlib.dumps(body, ensure_ascii=False, default=str)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        from datetime import UTC, datetime

        return datetime.fromtimestamp(record.created, UTC).isoformat()


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The event and fields a record of ours carries (empty for another library's record)."""
    if not isinstance(getattr(record, "event", None), str):
        return {}
    return {k: v for k, v in vars(record).items() if k not in _RESERVED}


def _redacting_factory(base: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        if _secrets:
            try:
                text = record.getMessage()
            except (TypeError, ValueError):  # a library's own formatting bug: keep its text
                text = str(record.msg)
            if record.exc_info:  # its traceback, masked here: no handler formats it again
                text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
                record.exc_info = None
            record.msg, record.args = redact(text), ()
        return record

    make.redacting = True  # type: ignore[attr-defined]
    return make


_handlers: list[logging.Handler] = []  # ours, replaced on every configure()


def configure(level: str = "INFO", *, json: bool = True, console: bool = True,
              events: Path | None = None, console_level: str | None = None) -> None:
    """Set up structlog once per process, routed through ``logging``.

    ``console``: also write each event to stderr, as a readable line (``json=False``, a
    terminal and the CLI) or as a JSON object (``json=True``). In the Functions worker pass
    ``console=False``: the worker's handler and the Azure Monitor distro's are already on the
    root logger, and a stream of our own would reach the host a second time as console text.
    ``events``: also append every event, as a JSON object per line, to this file.
    ``console_level``: a higher level for the console than for the file (the CLI shows
    errors while ``--events`` keeps everything).
    """
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.format_exc_info,
            _redact_event,
            _to_record,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.stdlib.LoggerFactory(),
        # Not cached: a module-level logger made before configure() (or before a test captures
        # events) follows the configuration of the moment; a bind costs microseconds.
        cache_logger_on_first_use=False,
    )
    if not getattr(logging.getLogRecordFactory(), "redacting", False):
        logging.setLogRecordFactory(_redacting_factory(logging.getLogRecordFactory()))
    logging.getLogger(ROOT).setLevel(level)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    root = logging.getLogger()
    for old in _handlers:
        root.removeHandler(old)
        old.close()
    _handlers.clear()
    if console:
        stream = logging.StreamHandler(sys.stderr)
        stream.setLevel(console_level or logging.NOTSET)
        stream.setFormatter(_Fields() if json else logging.Formatter(
            "%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
        _handlers.append(stream)
    if events is not None:
        events.parent.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(events, encoding="utf-8")
        file.setFormatter(_Fields())
        _handlers.append(file)
    for handler in _handlers:
        root.addHandler(handler)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
