"""How the service's mails are rendered: jinja2 templates in ``shared/mail/templates``, one
``.html`` part (autoescaped) and one ``.txt`` part, with every value redacted as it goes in and,
in the plain-text part, kept on one line. ``shared.mail.reports`` says what each mail holds."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from shared.log import redact
from shared.mail.sender import Attachment, Mail, one_line

TEMPLATES = Path(__file__).resolve().parent / "templates"


# A line of a plain-text mail holds one value: nothing a value says can start a line of its own
# (a display name with a line break could forge a "How to fix it" line).
LINE_LIMIT = 2000


class Block(str):
    """Pre-formatted plain text of several lines (a text table the service built from
    one-line cells): kept as it is in the plain-text part."""


def _html_value(value: object) -> object:
    return redact(value) if isinstance(value, str) else value


def _text_value(value: object) -> object:
    if isinstance(value, Block):
        return redact(value)
    if isinstance(value, str):
        return one_line(redact(value), LINE_LIMIT)
    return value


_FINALIZE = {"html": _html_value, "txt": _text_value}


@lru_cache(maxsize=2)
def environment(kind: Literal["html", "txt"] = "html") -> Environment:
    """The template environment of one part. Every value is redacted as it is put in, before
    HTML escaping (a secret holding ``&`` or ``<`` is still found); in the plain-text part
    every value is also one line. HTML is autoescaped; undefined names are errors."""
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        # Plain text is not markup: escaping it would show "&lt;" to the reader.
        autoescape=select_autoescape(enabled_extensions=("html",), disabled_extensions=("txt",),
                                     default=True),
        finalize=_FINALIZE[kind],
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(
    name: str, subject: str, attachments: Sequence[Attachment] = (), **context: Any
) -> Mail:
    """The mail of template ``name`` (``<name>.html`` and ``<name>.txt``) with ``context``."""
    html = environment("html").get_template(f"{name}.html").render(subject=subject, **context)
    text = environment("txt").get_template(f"{name}.txt").render(subject=subject, **context)
    return Mail(
        subject=redact(one_line(subject)),
        html=redact(html),
        text=redact(text),
        attachments=list(attachments),
    )


def when(moment: dt.datetime | str | None) -> str:
    """A moment as the mails show it: ``2026-03-02 07:00 UTC``; empty for none."""
    if not moment:
        return ""
    if isinstance(moment, str):
        try:
            parsed = dt.datetime.fromisoformat(moment)
        except ValueError:
            return moment
        # The ledger's timestamps are UTC even when they do not say so.
        moment = parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def text_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with aligned columns (for the text alternative); every column at
    least one character wide."""
    cells = [[one_line(str(c), 80) for c in row] for row in rows]
    header = [str(c) for c in columns]
    width = max([len(header)] + [len(r) for r in cells]) if (header or cells) else 0
    widths = [1] * width  # a column with no title and no cells still has its dash
    for row in ([header] if header else []) + cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(row: Sequence[str]) -> str:
        return "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()

    out = []
    if header:
        out.append(line(header))
        out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in cells)
    return "\n".join(out)


