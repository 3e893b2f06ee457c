"""The digest's leavers section and the month's reclaimed units, from outcome records, and
``LICENSE_PRICES`` (pure functions; no peer needed)."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.config.prices import Prices, parse_prices
from shared.leavers import report
from shared.leavers.report import LEAVER_KINDS, month_start, reclaimed, section, skus_of
from shared.mail.reports import LeaverRow, ReclaimedRow

UNTIL = dt.datetime(2026, 12, 6, 7, 0, tzinfo=dt.UTC)
PRICES = parse_prices("ENTERPRISEPACK=23.00,EXCHANGEENTERPRISE=8.00 EUR")


def rec(when: str, **fields: Any) -> dict[str, Any]:
    """An outcome as ``Outcomes.since`` returns it: RowKey the time and a suffix."""
    return {"PartitionKey": "x", "RowKey": f"{when}+00:00-1a2b3c4d", **fields}


def unlicensed(when: str, skus: Any, name: str = "jdoe") -> dict[str, Any]:
    return rec(when, user="g", name=name, upn=f"{name}@contoso.com", skus=skus, units=1)


# -- LICENSE_PRICES ---------------------------------------------------------------------------


def test_prices_read_the_documented_example() -> None:
    """The example of the docs: two SKUs, exact decimals, the currency."""
    prices = parse_prices("ENTERPRISEPACK=23.00,EXCHANGEENTERPRISE=8.00 EUR")
    assert ({"ENTERPRISEPACK": Decimal("23.00"), "EXCHANGEENTERPRISE": Decimal("8.00")},
            "EUR") == (dict(prices.amounts), prices.currency)
    assert prices


@pytest.mark.parametrize("text", ["", "   ", None])
def test_no_prices_is_empty_and_falsy(text: str | None) -> None:
    """Not set: no SKU has a price, no currency, and the value is falsy (units only)."""
    prices = parse_prices(text)
    assert ({}, "", False) == (dict(prices.amounts), prices.currency, bool(prices))
    assert not Prices()


def test_prices_allow_spaces_lower_case_and_no_currency() -> None:
    """Spaces around the separators, a lower-case currency, part numbers in any case, no
    currency at all: all read; part numbers and the currency are kept upper-case."""
    prices = parse_prices(" enterprisepack = 23 ,  SPE_E3=36.5  eur ")
    assert ({"ENTERPRISEPACK": Decimal("23"), "SPE_E3": Decimal("36.5")}, "EUR") == (
        dict(prices.amounts), prices.currency)
    assert ({"A.B-C": Decimal("1.25")}, "") == (
        dict(parse_prices("A.B-C=1.25").amounts), parse_prices("A.B-C=1.25").currency)
    assert Decimal("23") == prices.of("EnterprisePack")
    assert prices.of("EXCHANGESTANDARD") is None


def test_a_line_break_in_the_value_is_a_space() -> None:
    """A value pasted over two lines reads as one, and its error stays on one line."""
    assert "EUR" == parse_prices("A=1\nEUR").currency
    with pytest.raises(ValueError, match="'EURO'") as caught:
        parse_prices("A=1\n\tEURO")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("text", "part"), [
    ("ENTERPRISEPACK=abc", "the amount 'abc' of ENTERPRISEPACK is not a number"),
    ("ENTERPRISEPACK=-1", "the amount '-1' of ENTERPRISEPACK"),
    ("ENTERPRISEPACK=1e3", "the amount '1e3'"),
    ("ENTERPRISEPACK=23,00", "'00' is not SKU=amount"),
    ("ENTERPRISEPACK=", "the amount '' of ENTERPRISEPACK"),
    ("ENTERPRISEPACK", "'ENTERPRISEPACK' is not SKU=amount"),
    ("=23", "'=23' names no SKU"),
    ("E P=23", "'E P' in 'E P=23' is not a SKU part number"),
    ("-E=23", "'-E' in '-E=23' is not a SKU part number"),
    ("A=1,,B=2", "an entry is empty (a comma too many);"),
    ("A=1,", "an entry is empty (a comma too many);"),
    ("ENTERPRISEPACK= abc", "the amount 'abc' of ENTERPRISEPACK"),
    ("A=1=2", "the amount '1=2' of A"),
    ("A=1,a=2", "A has two prices"),
    ("A=1 EURO", "'EURO' is not a three-letter currency code"),
    ("A=1 EU", "'EU' is not a three-letter currency code"),
    ("A=1 E3", "the amount '1 E3' of A"),
])
def test_a_bad_price_names_the_setting_and_the_part(text: str, part: str) -> None:
    """Each bad value raises the settings' model-level error: the setting, the part that does
    not read, and the format to write, on one line."""
    with pytest.raises(ValueError) as caught:
        parse_prices(text)
    message = str(caught.value)
    assert message.startswith(f"LICENSE_PRICES: {part}")
    assert message.endswith("; write SKU=amount[,SKU=amount...] [CURRENCY], e.g. "
                            "ENTERPRISEPACK=23.00,EXCHANGEENTERPRISE=8.00 EUR")


def test_a_field_validator_gets_the_problem_without_the_setting() -> None:
    """``prefix=False``: the settings' field errors name the setting themselves."""
    with pytest.raises(ValueError) as caught:
        parse_prices("A=x", prefix=False)
    assert str(caught.value).startswith("the amount 'x' of A is not a number such as 23.00;")


def test_a_space_before_the_amount_is_not_a_currency() -> None:
    """``SKU = amount``: the last word is the amount, not a currency."""
    assert ({"A": Decimal("7")}, "") == (dict(parse_prices("A = 7").amounts),
                                         parse_prices("A = 7").currency)


@pytest.mark.parametrize(("amount", "shown"), [
    ("23", "23.00 EUR"), ("8.5", "8.50 EUR"), ("23.00", "23.00 EUR"), ("0.125", "0.125 EUR"),
    ("0", "0.00 EUR")])
def test_amounts_show_two_decimals_at_least(amount: str, shown: str) -> None:
    """Costs show cents, and never drop a digit a price had."""
    assert shown == Prices({}, "EUR").show(Decimal(amount))
    assert shown.removesuffix(" EUR") == Prices().show(Decimal(amount))


_SKUS = st.from_regex(r"[A-Z][A-Z0-9_]{0,15}", fullmatch=True)
_AMOUNTS = st.decimals(min_value=0, max_value=10_000, places=2, allow_nan=False,
                       allow_infinity=False)


@given(st.dictionaries(_SKUS, _AMOUNTS, min_size=1, max_size=6),
       st.sampled_from(["", "EUR", "usd", "GBP"]), st.sampled_from([",", " , ", ", "]))
def test_prices_written_as_the_format_says_read_back(
        amounts: dict[str, Decimal], currency: str, comma: str) -> None:
    """Any prices written in the documented format read back as written."""
    text = comma.join(f"{sku}={amount}" for sku, amount in amounts.items())
    prices = parse_prices(f"{text} {currency}")
    assert (amounts, currency.upper()) == (dict(prices.amounts), prices.currency)


# -- the records ------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "skus"), [
    (["ENTERPRISEPACK", " SPE_E3 "], ["ENTERPRISEPACK", "SPE_E3"]),
    ('["ENTERPRISEPACK", "SPE_E3"]', ["ENTERPRISEPACK", "SPE_E3"]),
    ("ENTERPRISEPACK, SPE_E3,", ["ENTERPRISEPACK", "SPE_E3"]),
    ('["ENTERPRISEPACK", SPE_E3', ["ENTERPRISEPACK", "SPE_E3"]),
    ("XSKU,SKU_X", ["XSKU", "SKU_X"]), ('["SKU_X"]', ["SKU_X"]),
    ("", []), (None, [])])
def test_skus_are_read_however_the_table_kept_them(value: Any, skus: list[str]) -> None:
    """A list, a JSON list, a comma-separated string, a broken JSON list, nothing."""
    assert skus == skus_of({"skus": value})
    assert [] == skus_of({})


@pytest.mark.parametrize(("until", "start"), [
    (dt.datetime(2026, 12, 6, 7, 0, tzinfo=dt.UTC), "2026-12-01"),
    (dt.datetime(2027, 1, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=1))), "2026-12-01"),
    (dt.datetime(2026, 11, 30, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-1))),
     "2026-12-01"),
    (dt.datetime(2026, 2, 28, 23, 59), "2026-02-01"),
    (dt.datetime(2027, 1, 1, 5, 0), "2027-01-01"),
    (dt.datetime(2026, 12, 31, 20, 0, tzinfo=dt.UTC), "2026-12-01")])
def test_the_month_starts_on_the_first_in_utc(
        until: dt.datetime, start: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The month is the UTC calendar month of ``until`` (naive is UTC), whatever the host's
    time zone (here Tokyo, where 20:00 UTC on 31 December is already January), and its bound
    sorts before every RowKey recorded in it."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert start == month_start(until)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert f"{start}T00:00:00+00:00-0" > start


def test_reclaimed_counts_units_per_sku_of_the_month_with_their_cost() -> None:
    """One unit per SKU of each record of the month; the rows most units first; a record of
    another month (the bound is inclusive of earlier keys a caller may pass) is not counted."""
    month = [unlicensed("2026-12-01T00:00:01", "ENTERPRISEPACK,EXCHANGEENTERPRISE"),
             unlicensed("2026-12-05T10:00:00", "ENTERPRISEPACK"),
             unlicensed("2026-12-05T10:00:00", "ENTERPRISEPACK,ENTERPRISEPACK"),
             unlicensed("2026-11-30T23:59:59", "ENTERPRISEPACK"),
             unlicensed("2027-12-02T00:00:00", "ENTERPRISEPACK")]
    rows, total, unpriced = reclaimed(month, PRICES, until=UNTIL)
    assert [ReclaimedRow("ENTERPRISEPACK", 3, "69.00 EUR"),
            ReclaimedRow("EXCHANGEENTERPRISE", 1, "8.00 EUR")] == rows
    assert ("77.00 EUR", []) == (total, unpriced)


def test_reclaimed_without_prices_counts_units_only() -> None:
    """No LICENSE_PRICES: units, no cost, no total, nothing called unpriced."""
    rows, total, unpriced = reclaimed(
        [unlicensed("2026-12-02T00:00:00", ["SPE_E3"]),
         unlicensed("2026-12-02T00:00:00", ["ENTERPRISEPACK"]), {"skus": "SPE_E3"}], Prices(),
        until=UNTIL)
    assert ([ReclaimedRow("ENTERPRISEPACK", 1), ReclaimedRow("SPE_E3", 1)], "", []) == (
        rows, total, unpriced)


def test_a_sku_without_a_price_is_named_and_left_out_of_the_total() -> None:
    """Prices set but not for SPE_E3: its units show with no cost, the total is of the priced
    SKUs, and SPE_E3 is named so the operator can add its price; with no priced SKU at all
    there is no total."""
    month = [unlicensed("2026-12-02T00:00:00", "SPE_E3,ENTERPRISEPACK"),
             unlicensed("2026-12-03T00:00:00", "SPE_E3")]
    rows, total, unpriced = reclaimed(month, PRICES, until=UNTIL)
    assert ([ReclaimedRow("SPE_E3", 2), ReclaimedRow("ENTERPRISEPACK", 1, "23.00 EUR")],
            "23.00 EUR", ["SPE_E3"]) == (rows, total, unpriced)
    assert ("", ["SPE_E3"]) == reclaimed(month[1:], PRICES, until=UNTIL)[1:]


@given(st.lists(st.tuples(st.integers(1, 28), st.lists(
    st.sampled_from(["ENTERPRISEPACK", "EXCHANGEENTERPRISE", "SPE_E3"]), max_size=3)),
    max_size=20))
def test_reclaimed_units_add_up_to_the_skus_of_the_records(
        records: list[tuple[int, list[str]]]) -> None:
    """Whatever the month's records, the units per SKU are the records naming it, and the
    total cost is the priced units times their price."""
    month = [unlicensed(f"2026-12-{day:02d}T08:00:00", skus) for day, skus in records]
    rows, total, unpriced = reclaimed(month, PRICES, until=UNTIL)
    expected = {sku: sum(sku in skus for _, skus in records)
                for sku in {s for _, skus in records for s in skus}}
    assert expected == {r.sku: r.units for r in rows}
    cost = sum((PRICES.of(r.sku) or Decimal(0)) * r.units for r in rows)
    priced = [r for r in rows if PRICES.of(r.sku) is not None]
    assert (PRICES.show(cost) if priced else "") == total
    assert ["SPE_E3"] * bool(expected.get("SPE_E3")) == unpriced
    assert [r.units for r in rows] == sorted((r.units for r in rows), reverse=True)


# -- the section ------------------------------------------------------------------------------


def test_no_leaver_activity_and_nothing_reclaimed_is_no_section() -> None:
    """The digest of a day with no leaver has no leavers section; other kinds do not count."""
    assert section({}, [], PRICES, until=UNTIL) is None
    assert section({kind: [] for kind in LEAVER_KINDS} | {"provisioned": [rec("2026-12-05")]},
                   [], PRICES, until=UNTIL) is None


@pytest.mark.parametrize("kind", LEAVER_KINDS)
def test_any_leaver_outcome_alone_makes_a_section(kind: str) -> None:
    """One new outcome of any of the four kinds is leaver activity: the digest has a section."""
    assert ("leaver_converted", "leaver_unlicensed", "leaver_kept", "leaver_held") == LEAVER_KINDS
    assert section({kind: [rec("2026-12-05T10:00:00", name="x")]}, [], Prices(),
                   until=UNTIL) is not None


def test_the_section_lists_each_outcome_with_its_detail() -> None:
    """Converted (hidden or not), licence returned with its SKUs, kept with the reason, a held
    cycle with its plan, count and limit; users sorted by name whatever the case."""
    new = {
        "leaver_converted": [
            rec("2026-12-05T10:00:00", user="g1", name="zed", upn="zed@contoso.com",
                hidden=True),
            rec("2026-12-05T10:00:01", user="g2", name="Amy", upn="amy@contoso.com",
                hidden=False),
            rec("2026-12-05T10:00:02", user="g3", name="bob", upn="bob@contoso.com",
                hidden="true"),
            rec("2026-12-05T10:00:03", name="a_x", hidden="false"),
            rec("2026-12-05T10:00:04", name="AB", hidden=0),
            rec("2026-12-05T10:00:04", name="c1", hidden=1),
            rec("2026-12-05T10:00:05"),
        ],
        "leaver_unlicensed": [unlicensed("2026-12-05T11:00:00", "ENTERPRISEPACK,SPE_E3")],
        "leaver_kept": [
            rec("2026-12-05T11:00:01", user="g4", name="big", upn="big@contoso.com",
                skus="ENTERPRISEPACK", reason="size 61.2 GB > 50 GB"),
            rec("2026-12-05T11:00:02", user="g5", upn="", skus="", reason=""),
        ],
        "leaver_held": [rec("2026-12-05T12:00:00", plan_id="p-1", count=14, limit="10"),
                        rec("2026-12-05T12:00:01", count="", limit=None)],
    }
    got = section(new, [], PRICES, until=UNTIL)
    assert got is not None
    assert [LeaverRow("", ""), LeaverRow("a_x", ""), LeaverRow("AB", ""),
            LeaverRow("Amy", "amy@contoso.com"),
            LeaverRow("bob", "bob@contoso.com", detail="hidden from the address lists"),
            LeaverRow("c1", "", detail="hidden from the address lists"),
            LeaverRow("zed", "zed@contoso.com", detail="hidden from the address lists")
            ] == list(got.converted)
    assert [LeaverRow("jdoe", "jdoe@contoso.com", "ENTERPRISEPACK, SPE_E3")] == list(
        got.returned)
    assert [LeaverRow("big", "big@contoso.com", "ENTERPRISEPACK", "size 61.2 GB > 50 GB"),
            LeaverRow("g5", "", "", "no reason recorded")] == list(got.kept)
    assert [("p-1", 14, 10), ("", 0, 0)] == list(got.held)
    assert ("December 2026", [], "", []) == (got.month, list(got.reclaimed), got.total_cost,
                                             list(got.unpriced))


def test_the_month_alone_makes_a_section() -> None:
    """Nothing new since the last digest but units reclaimed this month: the section shows
    the month's figure, in English whatever the locale, with the total."""
    got = section({}, [unlicensed("2026-12-02T00:00:00", "EXCHANGEENTERPRISE")], PRICES,
                  until=dt.datetime(2026, 12, 31, 23, 30, tzinfo=dt.UTC))
    assert got is not None
    assert ("December 2026", [ReclaimedRow("EXCHANGEENTERPRISE", 1, "8.00 EUR")],
            "8.00 EUR", [], [], []) == (got.month, list(got.reclaimed), got.total_cost,
                                        list(got.unpriced), list(got.converted),
                                        list(got.held))


@pytest.mark.parametrize(("month", "name"), list(enumerate(
    ["January", "February", "March", "April", "May", "June", "July", "August", "September",
     "October", "November", "December"], start=1)))
def test_the_month_is_named(month: int, name: str) -> None:
    """The month's name, from its number."""
    got = section({"leaver_converted": [rec("x", name="a")]}, [], Prices(),
                  until=dt.datetime(2027, month, 3, tzinfo=dt.UTC))
    assert got is not None
    assert f"{name} 2027" == got.month


def test_the_package_re_exports_the_price_parser() -> None:
    """``shared.leavers.report`` offers LICENSE_PRICES' parser beside the section."""
    assert (report.parse_prices, report.Prices) == (parse_prices, Prices)


def test_the_section_names_the_skus_without_a_price() -> None:
    """The month's SKUs without a price reach the section, for the digest to name them."""
    got = section({}, [unlicensed("2026-12-02T00:00:00", "SPE_E3,ENTERPRISEPACK")], PRICES,
                  until=UNTIL)
    assert got is not None
    assert (["SPE_E3"], "23.00 EUR") == (list(got.unpriced), got.total_cost)
