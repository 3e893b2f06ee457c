"""What the digest says about leavers, from the outcomes the leaver steps record (pure).

- ``section``: since the last digest, the mailboxes converted to shared, the licences returned
  (with their SKUs), the licences kept and why, the cycles held for approval; and this calendar
  month's (UTC) reclaimed units per SKU, with their monthly cost when ``LICENSE_PRICES`` is set.
  None when there is nothing to say.
- ``month_start``: the lower bound to read the month's ``leaver_unlicensed`` outcomes with
  (``Outcomes.since(kind, after)``; their RowKey starts with the UTC time they were recorded).
- ``parse_prices``: ``LICENSE_PRICES`` (it lives in ``shared.config.prices`` so that the
  settings can parse it as they load).

The records are dicts as ``shared.store.records.Outcomes.since`` returns them: ``RowKey`` the
time and a suffix, the fields the step wrote (``user``, ``name``, ``upn``, ``skus``, ``units``,
``hidden``, ``reason``; ``plan_id``, ``count``, ``limit`` for a held cycle). A table entity
holds no list, so ``skus`` is read as a list, a JSON list or a comma-separated string.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from shared.config.prices import Prices, parse_prices
from shared.mail.reports import LeaverRow, LeaversSection, ReclaimedRow

__all__ = ["LEAVER_KINDS", "Prices", "month_start", "parse_prices", "reclaimed", "section"]

CONVERTED, UNLICENSED, KEPT, HELD = (
    "leaver_converted", "leaver_unlicensed", "leaver_kept", "leaver_held")
# The outcome kinds the digest reports; a new one of any makes a digest worth sending.
LEAVER_KINDS = (CONVERTED, UNLICENSED, KEPT, HELD)

# Month names in English whatever the host's locale (strftime's %B follows LC_TIME).
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")


def month_start(until: dt.datetime) -> str:
    """The ``Outcomes.since`` bound that reads from the first day of ``until``'s calendar
    month in UTC (a naive ``until`` is UTC, as the ledger's times are)."""
    return f"{_utc(until):%Y-%m}-01"


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo is None else moment.astimezone(dt.UTC)


def skus_of(record: Mapping[str, Any]) -> list[str]:
    """The SKU part numbers of a record, however the table kept them."""
    value = record.get("skus") or []
    if isinstance(value, str):  # "A,B" or a JSON list of part numbers (which hold no quote)
        value = value.strip().strip("[]").replace('"', "").split(",")
    return [str(sku).strip() for sku in value if str(sku).strip()]


def _int(value: object, default: int = 0) -> int:
    try:
        return int(str(value))
    except ValueError:
        return default


def _row(record: Mapping[str, Any], detail: str) -> LeaverRow:
    return LeaverRow(username=str(record.get("name") or record.get("user") or ""),
                     upn=str(record.get("upn") or ""), skus=", ".join(skus_of(record)),
                     detail=detail)


def _rows(records: Sequence[Mapping[str, Any]], detail: Any) -> list[LeaverRow]:
    return sorted((_row(r, detail(r)) for r in records), key=lambda r: r.username.lower())


def _hidden(record: Mapping[str, Any]) -> str:
    # written as 1/0 (an int column); True or "true" read the same
    hidden = str(record.get("hidden")).lower() in ("1", "true")
    return "hidden from the address lists" if hidden else ""


def reclaimed(month: Sequence[Mapping[str, Any]], prices: Prices, *, until: dt.datetime
              ) -> tuple[list[ReclaimedRow], str, list[str]]:
    """The units per SKU given back in ``until``'s calendar month (UTC): one unit of each SKU a
    ``leaver_unlicensed`` record names, counted once per record. Returns the rows (most units
    first), the total monthly cost of the priced SKUs ("" without prices) and the SKUs that
    have no price although prices are set."""
    prefix = f"{_utc(until):%Y-%m}"
    units: Counter[str] = Counter()
    for record in month:
        if str(record.get("RowKey")).startswith(prefix):
            units.update(list(dict.fromkeys(skus_of(record))))
    rows, total, unpriced = [], Decimal(0), []
    for sku, count in sorted(units.items(), key=lambda item: (-item[1], item[0])):
        price = prices.of(sku)
        if price is None:
            rows.append(ReclaimedRow(sku, count))
            if prices:
                unpriced.append(sku)
            continue
        rows.append(ReclaimedRow(sku, count, prices.show(price * count)))
        total += price * count
    return rows, (prices.show(total) if prices and len(unpriced) < len(rows) else ""), unpriced


def section(new: Mapping[str, Sequence[Mapping[str, Any]]],
            month: Sequence[Mapping[str, Any]], prices: Prices,
            *, until: dt.datetime) -> LeaversSection | None:
    """The digest's leavers section: ``new`` holds the outcomes since the last digest by kind
    (``LEAVER_KINDS``; others are ignored), ``month`` the ``leaver_unlicensed`` outcomes read
    from ``month_start(until)``. None when no leaver did anything since the last digest and
    nothing was reclaimed this month."""
    rows, total, unpriced = reclaimed(month, prices, until=until)
    if not rows and not any(new.get(kind) for kind in LEAVER_KINDS):
        return None
    held = [(str(r.get("plan_id") or ""), _int(r.get("count")), _int(r.get("limit")))
            for r in new.get(HELD, ())]
    return LeaversSection(
        converted=_rows(new.get(CONVERTED, ()), _hidden),
        returned=_rows(new.get(UNLICENSED, ()), lambda r: ""),
        kept=_rows(new.get(KEPT, ()), lambda r: str(r.get("reason") or "no reason recorded")),
        held=held,
        month=f"{MONTHS[_utc(until).month - 1]} {_utc(until).year}",
        reclaimed=rows,
        total_cost=total,
        unpriced=unpriced,
    )
