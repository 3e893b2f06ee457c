"""How mails are rendered, at the edges (issue 28): undefined names, a moment that is not
one, and a text table's empty column."""

from __future__ import annotations

import datetime as dt

import jinja2
import pytest

from shared.mail.rendering import environment, text_table, when


@pytest.mark.parametrize("kind", ["html", "txt"])
def test_an_undefined_name_in_a_template_is_an_error_not_an_empty_string(kind: str) -> None:
    """Both parts use StrictUndefined: a template naming a value the caller did not pass
    fails instead of mailing a blank."""
    with pytest.raises(jinja2.UndefinedError):
        environment(kind).from_string("user {{ missing }}").render()  # type: ignore[arg-type]


def test_the_default_environment_is_the_html_one() -> None:
    """environment() is the HTML part's: autoescaped."""
    assert "&lt;b&gt;" == environment().from_string("{{ v }}").render(v="<b>")


@pytest.mark.parametrize(("moment", "shown"), [
    (None, ""),
    ("", ""),
    ("soon", "soon"),  # not a time: shown as it is
    ("2026-03-02T07:00:00", "2026-03-02 07:00 UTC"),
    ("2026-03-02T08:00:00+01:00", "2026-03-02 07:00 UTC"),
    (dt.datetime(2026, 3, 2, 7, 0, tzinfo=dt.UTC), "2026-03-02 07:00 UTC"),
])
def test_when_shows_utc_minutes_and_text_that_is_no_time_as_it_is(
        moment: dt.datetime | str | None, shown: str) -> None:
    """None and "" are empty, a text that is no time is shown unchanged, a time is shown in
    UTC to the minute (a naive one is UTC already)."""
    assert shown == when(moment)


def test_an_empty_column_keeps_a_one_dash_rule() -> None:
    """A column with no title and no cells is one character wide: its dash keeps the columns
    after it under their own rules."""
    assert "A     C\n-  -  -\nx     z" == text_table(("A", "", "C"), [("x", "", "z")])


def test_a_plain_text_value_is_cut_at_2000_characters() -> None:
    """A value of 2000 characters is kept whole in the plain-text part; one of 2001 is cut to
    1999 and an ellipsis."""
    txt = environment("txt").from_string("{{ v }}")
    assert (2000, "x" * 1999 + "…") == (len(txt.render(v="y" * 2000)), txt.render(v="x" * 2001))
