"""Structured logging: events with fields (``user``, ``step``, ``outcome``, ``correlation_id``).

Secrets the provider hands out are registered here and masked in every event, as a last
line of defence: no code should log them in the first place. ``redact`` masks a secret as it
is and as HTML escaping writes it (``&`` → ``&amp;``), so a mail body rendered with autoescape
cannot carry one past it either.
"""

from __future__ import annotations

import html
import logging
from collections.abc import MutableMapping
from typing import Any

import structlog

_secrets: tuple[str, ...] = ()  # longest first: a secret inside another is masked whole
MASK = "***"


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


def configure(level: str = "INFO", *, json: bool = True) -> None:
    """Set up structlog once per process; JSON lines in Azure, readable lines on a terminal."""
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
