"""The wire format: one UTF-8 line per message, `user_id,amount,timestamp[,txn_id]`.

E.g. the seed's `1,-44690489068,1570358269.4836092`. The emitter, the subscriber, the
tests and the benchmarks all use `parse` and `format_line` from here; the field rules
(`parse_user_id`, `parse_txn_id`) serve the web app's parameters too.

Event times are accepted from 2000-01-01 to now + MAX_CLOCK_SKEW: far enough from year
10000 that no window end, cursor or format of a stored time can overflow.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from decimal import Decimal

import config
from txstream.money import AMOUNT_LIMIT, CENT, format_amount
from txstream.times import format_epoch, format_time, from_micros, to_micros, utcnow
from txstream.transaction import MAX_USER_ID, Transaction, checked_txn_id

MAX_LINE_BYTES = 1024

# [0-9], not \d: \d also matches non-ASCII digits such as '٣'.
_USER_ID = re.compile(r"[0-9]{1,19}")
_AMOUNT = re.compile(r"[+-]?[0-9]+(\.[0-9]{1,2})?")
_TIMESTAMP = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")
_MICROSECOND = Decimal("0.000001")
EARLIEST = datetime(2000, 1, 1)  # the earliest event time accepted
_EARLIEST_MICROS = to_micros(EARLIEST)


class MalformedMessage(ValueError):
    """A message that is not a valid transaction line; the text says why."""


def latest_accepted(clock_skew: int = config.DEFAULT_MAX_CLOCK_SKEW) -> int:
    """The latest event time accepted now, in epoch microseconds: now + `clock_skew` s."""
    return to_micros(utcnow()) + clock_skew * 10**6


def parse(
    raw: bytes | str, missing_id: str | None = None, latest: int | None = None
) -> Transaction:
    """Parse one wire line; raise `MalformedMessage` saying what is wrong.

    A 3-field line gets `missing_id` as its txn_id, or a new UUID when none is given.
    The event time must be from 2000-01-01 to `latest` (epoch microseconds; default
    `latest_accepted()`): the subscriber works that out once per batch, not per message.
    """
    # surrogatepass: a lone surrogate is then bad UTF-8 below, not an UnicodeEncodeError
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise MalformedMessage("empty message")
    if len(data) > MAX_LINE_BYTES:
        raise MalformedMessage(f"line longer than {MAX_LINE_BYTES} bytes")
    try:
        line = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage("not valid UTF-8") from None
    fields = line.split(",")
    if len(fields) not in (3, 4):
        raise MalformedMessage(f"expected 3 or 4 comma-separated fields, got {len(fields)}")
    txn_id = fields[3] if len(fields) == 4 else (missing_id or str(uuid.uuid4()))
    return Transaction(  # txn_id, user_id, amount, ts: by position, a quarter faster
        parse_txn_id(txn_id),
        parse_user_id(fields[0]),
        _parse_amount(fields[1]),
        _parse_timestamp(fields[2], latest_accepted() if latest is None else latest),
    )


def format_line(tx: Transaction) -> str:
    """The wire line for `tx`, with its txn_id: `user_id,amount,timestamp,txn_id`."""
    return f"{tx.user_id},{format_amount(tx.amount)},{format_epoch(tx.ts)},{tx.txn_id}"


def parse_user_id(text: str) -> int:
    """A user id: ASCII digits, 1..2^63-1."""
    if not _USER_ID.fullmatch(text):
        raise MalformedMessage(f"user_id must be a whole number >= 1, got {text[:40]!r}")
    user_id = int(text)
    if not 1 <= user_id <= MAX_USER_ID:
        raise MalformedMessage(f"user_id out of range 1..{MAX_USER_ID}, got {text!r}")
    return user_id


def parse_txn_id(text: str) -> str:
    """A txn_id: 1-64 characters of A-Z a-z 0-9 . _ : -."""
    try:
        return checked_txn_id(text)
    except ValueError as exc:
        raise MalformedMessage(str(exc)) from None


def _parse_amount(text: str) -> Decimal:
    if not _AMOUNT.fullmatch(text):
        raise MalformedMessage(
            f"amount must be a plain decimal number with at most 2 decimals, got {text[:40]!r}"
        )
    amount = Decimal(text)
    if abs(amount) >= AMOUNT_LIMIT:
        raise MalformedMessage(f"amount out of range (|amount| < 10^18), got {text[:40]!r}")
    return amount.quantize(CENT) + 0


def _parse_timestamp(text: str, latest: int) -> datetime:
    if not _TIMESTAMP.fullmatch(text):
        raise MalformedMessage(f"timestamp must be unix epoch seconds, got {text[:40]!r}")
    whole, _, fraction = text.lstrip("+-").partition(".")
    if len(whole) > 12 or len(fraction) > 9:  # 12 digits reach past year 9999
        raise MalformedMessage(f"timestamp out of range or too precise, got {text[:40]!r}")
    if len(fraction) <= 6 and text[0] != "-":  # the usual case, in whole numbers
        micros = int(whole) * 1_000_000 + int(fraction.ljust(6, "0"))
    else:  # rounded to the microsecond, half to even
        micros = int(Decimal(text).quantize(_MICROSECOND).scaleb(6))
    if not _EARLIEST_MICROS <= micros <= latest:
        raise MalformedMessage(
            f"timestamp out of range ({format_time(EARLIEST)} to "
            f"{format_time(from_micros(latest))}, now + MAX_CLOCK_SKEW), got {text!r}"
        )
    return from_micros(micros)
