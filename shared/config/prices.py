"""``LICENSE_PRICES``: what one unit of a SKU costs a month, for the digest's reclaimed-licence
figure (pure; stdlib only, so a settings section can parse it as it loads).

The setting reads ``SKU=amount[,SKU=amount...] [CURRENCY]``, for example
``ENTERPRISEPACK=23.00,EXCHANGEENTERPRISE=8.00 EUR``: SKU part numbers as Graph's
``subscribedSkus`` names them (``skuPartNumber``), amounts as plain decimals (kept exact:
``Decimal``), and an optional ISO 4217 currency code. Empty: no prices, the digest shows units
only. A value that does not read so raises ``ValueError("LICENSE_PRICES: <problem>")``, the
model-level form the settings sections use (``shared.config.base.setting_name`` splits it), or
without the prefix for a field validator (``prefix=False``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType

SETTING = "LICENSE_PRICES"
FORMAT = ("SKU=amount[,SKU=amount...] [CURRENCY], "
          "e.g. ENTERPRISEPACK=23.00,EXCHANGEENTERPRISE=8.00 EUR")
# Part numbers are letters, digits and underscores (ENTERPRISEPACK, SPE_E3, Microsoft_365_E5);
# a few carry a dot or a hyphen.
_SKU = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_AMOUNT = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_CURRENCY = re.compile(r"[A-Za-z]{3}")


@dataclass(frozen=True)
class Prices:
    """The price of one unit per SKU part number, and the currency (may be empty). Falsy when
    no SKU has a price (the setting is not set)."""

    amounts: Mapping[str, Decimal] = field(default_factory=lambda: MappingProxyType({}))
    currency: str = ""

    def __bool__(self) -> bool:
        return bool(self.amounts)

    def of(self, sku: str) -> Decimal | None:
        """The price of one unit of ``sku`` (part numbers compare case-insensitively);
        None when it has none."""
        return self.amounts.get(sku.upper())

    def show(self, amount: Decimal) -> str:
        """``amount`` as the digest writes it: two decimals at least, then the currency."""
        cents = amount.quantize(Decimal("0.01"))
        return f"{cents if cents == amount else amount} {self.currency}".strip()


def parse_prices(text: str | None, *, prefix: bool = True) -> Prices:
    """``LICENSE_PRICES`` as ``Prices``; raises ``ValueError("LICENSE_PRICES: ...")`` naming the
    part that does not read (without the setting's name when ``prefix`` is false: a field
    validator's error already carries it)."""

    def _problem(problem: str) -> ValueError:
        return ValueError(f"{SETTING + ': ' if prefix else ''}{problem}; write {FORMAT}")

    text = " ".join((text or "").split())  # a line break in the value is a space: one-line errors
    if not text:
        return Prices()
    currency = ""
    head, _, last = text.rpartition(" ")
    # The last word is the currency when it is a word of letters after a whole pair.
    if head and last.isalpha() and not head.endswith("="):
        if not _CURRENCY.fullmatch(last):
            raise _problem(f"'{last}' is not a three-letter currency code")
        currency, text = last.upper(), head.strip()
    amounts: dict[str, Decimal] = {}
    for part in text.split(","):
        sku, equals, amount = (p.strip() for p in part.partition("="))
        if not part.strip():
            raise _problem("an entry is empty (a comma too many)")
        if not equals:
            raise _problem(f"'{part.strip()}' is not SKU=amount")
        if not sku:
            raise _problem(f"'{part.strip()}' names no SKU")
        if not _SKU.fullmatch(sku):
            raise _problem(f"'{sku}' in '{part.strip()}' is not a SKU part number")
        if not _AMOUNT.fullmatch(amount):
            raise _problem(f"the amount '{amount}' of {sku} is not a number such as 23.00")
        if sku.upper() in amounts:
            raise _problem(f"{sku.upper()} has two prices")
        amounts[sku.upper()] = Decimal(amount)
    return Prices(MappingProxyType(amounts), currency)
