"""Money in Python: exact `Decimal` amounts with two decimals, never floats."""

from __future__ import annotations

from decimal import Context, Decimal, Inexact, InvalidOperation

CENT = Decimal("0.01")
AMOUNT_LIMIT = Decimal(10) ** 18  # |amount| must stay below this: DECIMAL(20, 2)
# Sums of many amounts need more than the default 28 digits; never round silently.
MONEY_CONTEXT = Context(prec=40, traps=[InvalidOperation, Inexact])


# Wide enough for any stored value: a window's sum is DECIMAL(30, 2).
_FORMAT_CONTEXT = Context(prec=40)


def format_amount(amount: Decimal) -> str:
    """`amount` with exactly two decimals, e.g. `-44690489068.00`."""
    cents = amount.quantize(CENT, context=_FORMAT_CONTEXT)
    return f"{cents.copy_abs() if cents.is_zero() else cents:.2f}"  # never -0.00


def format_money(amount: Decimal) -> str:
    """`amount` for people: thousands separators and two decimals, e.g. `-1,234,567.89`."""
    return f"{Decimal(format_amount(amount)):,.2f}"
