"""The transaction's JSON form: what the API returns and the recent lists hold."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal

import pytest

from txstream.money import format_amount
from txstream.times import MAX_MICROS
from txstream.transaction import from_json_text, to_json, to_json_text
from txstream.wire import parse

SEED_LINE = "1,-44690489068,1570358269.4836092"


def parse_any_time(line: str):
    """`line` parsed with any time the JSON form holds, up to 9999-12-31T23:59:59.999999."""
    return parse(line, missing_id="m", latest=MAX_MICROS - 1)


def test_to_json_of_a_seed_line_has_its_keys_time_first():
    body = to_json(parse(SEED_LINE, missing_id="s1"))
    assert list(body.items()) == [
        ("time", "2019-10-06T10:37:49.483609Z"),
        ("txn_id", "s1"),
        ("user_id", 1),
        ("amount", "-44690489068.00"),
        ("ts", 1570358269.483609),
    ]


@pytest.mark.parametrize(
    ("amount", "expected"),
    [("-0", "0.00"), ("-0.00", "0.00"), ("0", "0.00"), ("+0.0", "0.00"), ("1.5", "1.50"),
     ("-0.01", "-0.01"), ("999999999999999999.99", "999999999999999999.99")],
)  # fmt: skip
def test_to_json_amount_has_two_decimals(amount, expected):
    assert to_json(parse(f"1,{amount},1570358269", missing_id="x"))["amount"] == expected


def test_to_json_time_always_has_six_fractional_digits():
    body = to_json(parse("1,1,1570358269", missing_id="x"))
    assert body["time"] == "2019-10-06T10:37:49.000000Z"
    assert isinstance(body["ts"], float)
    assert body["ts"] == 1570358269.0


@pytest.mark.parametrize(
    "line",
    [SEED_LINE, "1,-0.01,946684800,a.b:c-d_e", "9223372036854775807,1,1570358269.5,x",
     "7,999999999999999999.99,253402300799.999999,y", "2,-5,1570358269.000001,z"],
)  # fmt: skip
def test_to_json_text_is_the_compact_json_of_to_json(line):
    tx = parse_any_time(line)
    expected = json.dumps(to_json(tx), separators=(",", ":"))
    assert to_json_text(tx) == expected
    assert json.loads(to_json_text(tx)) == to_json(tx)


def test_to_json_text_refuses_a_txn_id_that_would_need_escaping():
    tx = parse("1,1,1570358269", missing_id="x")
    with pytest.raises(ValueError):
        to_json_text(dataclasses.replace(tx, txn_id='x","user_id":2'))


@pytest.mark.parametrize("line", [SEED_LINE, "7,999999999999999999.99,253402300799.999999,y"])
def test_from_json_text_reads_what_to_json_text_wrote(line):
    tx = parse_any_time(line)
    assert from_json_text(to_json_text(tx)) == tx
    assert from_json_text(to_json_text(tx).encode()) == tx


GOOD = to_json_text(parse(SEED_LINE, missing_id="s1"))


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"\xff\xfe",
        "not json",
        "[1, 2]",
        "null",
        "[" * 100_000,  # deeper than the JSON parser goes
        json.dumps(json.loads(GOOD)),  # the same object, not compact
        json.dumps(dict(sorted(json.loads(GOOD).items())), separators=(",", ":")),  # key order
        GOOD.replace('"s1"', '"s 1"'),
        GOOD.replace('"user_id":1', '"user_id":0'),
        GOOD.replace('"user_id":1', '"user_id":true'),
        GOOD.replace('"user_id":1', '"user_id":1.0'),
        GOOD.replace('"-44690489068.00"', '"-44690489068.0"'),
        GOOD.replace('"-44690489068.00"', '"NaN"'),
        GOOD.replace('"-44690489068.00"', "-44690489068.00"),
        GOOD.replace("2019-10-06T10:37:49.483609Z", "2019-10-06T10:37:49Z"),
        GOOD.replace("2019-10-06T10:37:49.483609Z", "2019-13-06T10:37:49.483609Z"),
        GOOD.replace("1570358269.483609", "1570358270.0"),  # ts disagrees with time
        GOOD[:-1] + ',"extra":1}',
    ],
)
def test_from_json_text_refuses_anything_else(text):
    with pytest.raises(ValueError):
        from_json_text(text)


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        ("9" * 28 + ".99", "9" * 28 + ".99"),  # the largest window sum DECIMAL(30,2) holds
        ("-" + "9" * 28 + ".99", "-" + "9" * 28 + ".99"),
        ("-0.00", "0.00"),
        ("-0.001", "0.00"),
        ("1.005", "1.00"),  # half to even, as Decimal rounds
    ],
)
def test_every_stored_amount_formats(amount, text):
    assert format_amount(Decimal(amount)) == text
