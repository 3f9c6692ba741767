"""The card transaction, and its JSON form: what the API returns and the recent lists hold.

The JSON object's keys come in a fixed order, time first: `{"time":"<ISO UTC>","txn_id":...`.
Its compact text is the same in the API and in Redis, and, since the time has a fixed
width and a txn_id never holds a `"`, comparing two texts compares (time, txn_id): the
recent lists are merged by that (txstream.recent).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from txstream.money import format_amount
from txstream.times import epoch_seconds, format_time, parse_time

MAX_USER_ID = 2**63 - 1  # BIGINT
TXN_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # nothing to escape in JSON, SQL or Redis
_JSON_KEYS = ["time", "txn_id", "user_id", "amount", "ts"]
_AMOUNT_TEXT = re.compile(r"-?[0-9]{1,18}\.[0-9]{2}")


@dataclass(frozen=True, slots=True)
class Transaction:
    """One card transaction. `ts` is the event time, naive UTC, microsecond precision."""

    txn_id: str
    user_id: int
    amount: Decimal
    ts: datetime


def checked_txn_id(text: str) -> str:
    """`text` if it is a txn_id (1-64 of A-Z a-z 0-9 . _ : -), else ValueError: so it can
    be written into JSON, SQL or a Redis item as it is."""
    if not TXN_ID.fullmatch(text):
        raise ValueError(
            f"txn_id must be 1-64 characters of A-Z a-z 0-9 . _ : -, got {text[:80]!r}"
        )
    return text


def to_json(tx: Transaction) -> dict:
    """The API's JSON object for `tx`; the amount is a string, never a float."""
    return {
        "time": format_time(tx.ts),
        "txn_id": tx.txn_id,
        "user_id": tx.user_id,
        "amount": format_amount(tx.amount),
        "ts": epoch_seconds(tx.ts),
    }


def to_json_text(tx: Transaction) -> str:
    """`to_json(tx)` as compact JSON text, built directly: this runs for every transaction."""
    return (
        f'{{"time":"{format_time(tx.ts)}","txn_id":"{checked_txn_id(tx.txn_id)}",'
        f'"user_id":{tx.user_id:d},'
        f'"amount":"{format_amount(tx.amount)}","ts":{epoch_seconds(tx.ts)!r}}}'
    )


def from_json_text(text: bytes | str) -> Transaction:
    """The transaction of a `to_json_text` text; ValueError for anything else."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 is a ValueError too
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or list(data) != _JSON_KEYS:
        raise ValueError("not a transaction object")
    txn_id, user_id, amount = data["txn_id"], data["user_id"], data["amount"]
    if not (isinstance(txn_id, str) and TXN_ID.fullmatch(txn_id)):
        raise ValueError("bad txn_id")
    if type(user_id) is not int or not 1 <= user_id <= MAX_USER_ID:
        raise ValueError("bad user_id")
    if not (isinstance(amount, str) and _AMOUNT_TEXT.fullmatch(amount)):
        raise ValueError("bad amount")
    if not isinstance(data["time"], str):
        raise ValueError("bad time")
    tx = Transaction(txn_id, user_id, Decimal(amount), parse_time(data["time"]))
    canonical = to_json_text(tx)
    if canonical != (text.decode() if isinstance(text, bytes) else text):
        raise ValueError("not in its canonical form")
    return tx
