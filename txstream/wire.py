"""The transaction and the ways it is written down: the wire line and its JSON form.

Wire format, one UTF-8 line per message: `user_id,amount,timestamp[,txn_id]`,
e.g. the seed's `1,-44690489068,1570358269.4836092`. The emitter, the subscriber,
the tests and the benchmarks all use `parse` and `format_line` from here.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal, Inexact, InvalidOperation

MAX_LINE_BYTES = 1024
MAX_USER_ID = 2**63 - 1  # BIGINT
AMOUNT_LIMIT = Decimal(10) ** 18  # |amount| must stay below this
CENT = Decimal("0.01")
# Sums of many amounts need more than the default 28 digits; never round silently.
MONEY_CONTEXT = Context(prec=40, traps=[InvalidOperation, Inexact])
MICROSECOND = Decimal("0.000001")
EPOCH = datetime(1970, 1, 1)
MAX_TIMESTAMP = 253402300800  # 10000-01-01: beyond DATETIME's range

# [0-9], not \d: \d also matches non-ASCII digits such as '٣'.
_USER_ID = re.compile(r"[0-9]{1,19}")
_AMOUNT = re.compile(r"[+-]?[0-9]+(\.[0-9]{1,2})?")
_TIMESTAMP = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")
_TXN_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class MalformedMessage(ValueError):
    """A message that is not a valid transaction line; the text says why."""


@dataclass(frozen=True, slots=True)
class Transaction:
    """One card transaction. `ts` is the event time, naive UTC, microsecond precision."""

    txn_id: str
    user_id: int
    amount: Decimal
    ts: datetime

    @property
    def epoch(self) -> float:
        """The event time as unix epoch seconds."""
        return to_epoch(self.ts)


def parse(raw: bytes | str, missing_id: str | None = None) -> Transaction:
    """Parse one wire line; raise `MalformedMessage` saying what is wrong.

    A 3-field line gets `missing_id` as its txn_id, or a new UUID when none is given.
    """
    data = raw.encode() if isinstance(raw, str) else raw
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
    return Transaction(
        txn_id=parse_txn_id(txn_id),
        user_id=parse_user_id(fields[0]),
        amount=_parse_amount(fields[1]),
        ts=_parse_timestamp(fields[2]),
    )


def format_line(tx: Transaction) -> str:
    """The wire line for `tx`, with its txn_id: `user_id,amount,timestamp,txn_id`."""
    return f"{tx.user_id},{format_amount(tx.amount)},{format_epoch(tx.ts)},{tx.txn_id}"


def to_json(tx: Transaction) -> dict:
    """The API's JSON object for `tx`; the amount is a string, never a float."""
    return {
        "txn_id": tx.txn_id,
        "user_id": tx.user_id,
        "amount": format_amount(tx.amount),
        "ts": tx.epoch,
        "time": format_time(tx.ts),
    }


def to_json_text(tx: Transaction) -> str:
    """`to_json(tx)` as compact JSON text, built directly: this runs for every transaction.

    Nothing in it needs escaping: a txn_id is A-Z a-z 0-9 . _ : - only (`parse_txn_id`).
    """
    return (
        f'{{"txn_id":"{parse_txn_id(tx.txn_id)}","user_id":{tx.user_id:d},'
        f'"amount":"{format_amount(tx.amount)}","ts":{tx.epoch!r},"time":"{format_time(tx.ts)}"}}'
    )


def dead_letter(raw: bytes | str, reason: str, at: datetime) -> dict:
    """The dead-letter record of a rejected message; non-UTF-8 bytes are kept escaped."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "backslashreplace")
    return {"raw": raw, "reason": reason, "at": format_time(at)}


def format_amount(amount: Decimal) -> str:
    """`amount` with exactly two decimals, e.g. `-44690489068.00`."""
    return f"{amount.quantize(CENT) + 0:.2f}"  # + 0 turns -0.00 into 0.00


def format_time(ts: datetime) -> str:
    """ISO-8601 UTC with microseconds, e.g. `2019-10-06T10:37:49.483609Z`.

    Always six fractional digits, so these strings sort in time order.
    """
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    return ts.isoformat(timespec="microseconds") + "Z"


def format_epoch(ts: datetime) -> str:
    """Unix epoch seconds with microseconds, e.g. `1570358269.483609`."""
    delta = ts - EPOCH
    seconds = delta.days * 86400 + delta.seconds
    return f"{seconds}.{delta.microseconds:06d}"


def to_epoch(ts: datetime) -> float:
    """Unix epoch seconds of a naive UTC datetime."""
    return (ts - EPOCH).total_seconds()


def from_epoch(seconds: Decimal | int | float) -> datetime:
    """Naive UTC datetime of unix epoch seconds, rounded to the microsecond."""
    micros = int((Decimal(seconds) / MICROSECOND).to_integral_value())
    return EPOCH + timedelta(microseconds=micros)


def utcnow() -> datetime:
    """The current time, naive UTC, as txstream stores times."""
    return EPOCH + timedelta(microseconds=time.time_ns() // 1000)  # a third faster than now(UTC)


def parse_user_id(text: str) -> int:
    """A user id: ASCII digits, 1..2^63-1."""
    if not _USER_ID.fullmatch(text):
        raise MalformedMessage(f"user_id must be a whole number >= 1, got {text[:40]!r}")
    user_id = int(text)
    if not 1 <= user_id <= MAX_USER_ID:
        raise MalformedMessage(f"user_id out of range 1..{MAX_USER_ID}, got {text!r}")
    return user_id


def _parse_amount(text: str) -> Decimal:
    if not _AMOUNT.fullmatch(text):
        raise MalformedMessage(
            f"amount must be a plain decimal number with at most 2 decimals, got {text[:40]!r}"
        )
    amount = Decimal(text)
    if abs(amount) >= AMOUNT_LIMIT:
        raise MalformedMessage(f"amount out of range (|amount| < 10^18), got {text[:40]!r}")
    return amount.quantize(CENT) + 0


def _parse_timestamp(text: str) -> datetime:
    if not _TIMESTAMP.fullmatch(text):
        raise MalformedMessage(f"timestamp must be unix epoch seconds, got {text[:40]!r}")
    whole, _, fraction = text.lstrip("+-").partition(".")
    if len(whole) > 12 or len(fraction) > 9:  # 12 digits reach past year 9999
        raise MalformedMessage(f"timestamp out of range or too precise, got {text[:40]!r}")
    if len(fraction) <= 6 and text[0] != "-":  # the usual case, in whole numbers
        micros = int(whole) * 1_000_000 + int(fraction.ljust(6, "0"))
    else:  # rounded to the microsecond, half to even
        micros = int(Decimal(text).quantize(MICROSECOND).scaleb(6))
    if micros <= 0:
        raise MalformedMessage(f"timestamp must be > 0, got {text!r}")
    if micros >= MAX_TIMESTAMP * 1_000_000:
        raise MalformedMessage(f"timestamp out of range (before year 10000), got {text!r}")
    return EPOCH + timedelta(microseconds=micros)


def parse_txn_id(text: str) -> str:
    """A txn_id: 1-64 characters of A-Z a-z 0-9 . _ : -."""
    if not _TXN_ID.fullmatch(text):
        raise MalformedMessage(
            f"txn_id must be 1-64 characters of A-Z a-z 0-9 . _ : -, got {text[:80]!r}"
        )
    return text
