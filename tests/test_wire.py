"""The wire format: parse and format_line."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from txstream.times import MICROSECOND, format_epoch, to_micros, utcnow
from txstream.transaction import Transaction
from txstream.wire import MAX_LINE_BYTES, MalformedMessage, format_line, latest_accepted, parse

# The seed's lines, exactly as its emitter printed them.
SEED = [
    ("1,-44690489068,1570358269.4836092", 1, "-44690489068", "2019-10-06 10:37:49.483609"),
    ("2,20596488508,1570358272.48946", 2, "20596488508", "2019-10-06 10:37:52.489460"),
    ("1,-27269658564,1570358277.493473", 1, "-27269658564", "2019-10-06 10:37:57.493473"),
    ("3,41603904384,1570358279.49744", 3, "41603904384", "2019-10-06 10:37:59.497440"),
]
Y2K_1 = datetime(2000, 1, 1, 0, 0, 1)


@pytest.mark.parametrize(("line", "user_id", "amount", "ts"), SEED)
def test_seed_lines_parse(line, user_id, amount, ts):
    tx = parse(line, missing_id="seed-1")
    assert tx == Transaction("seed-1", user_id, Decimal(amount), datetime.fromisoformat(ts))


def test_three_fields_get_a_new_uuid_each():
    first, second = parse(SEED[0][0]), parse(SEED[0][0])
    assert first.txn_id != second.txn_id
    assert str(uuid.UUID(first.txn_id)) == first.txn_id


def test_fourth_field_is_the_txn_id():
    assert parse("7,1.5,1570358269,abc-1", missing_id="unused").txn_id == "abc-1"


@pytest.mark.parametrize(
    "raw",
    [b"1,2.50,946684900,t", b"1,2.50,946684900,t\n", b"1,2.50,946684900,t\r\n",
     "1,2.50,946684900,t\n"],
)  # fmt: skip
def test_one_trailing_newline_is_tolerated(raw):
    assert parse(raw) == Transaction("t", 1, Decimal("2.50"), datetime(2000, 1, 1, 0, 1, 40))


@pytest.mark.parametrize(
    ("line", "user_id", "amount", "ts"),
    [
        ("1,0,946684801", 1, "0", Y2K_1),
        (f"{2**63 - 1},1,946684801", 2**63 - 1, "1", Y2K_1),
        ("1,999999999999999999.99,946684801", 1, "999999999999999999.99", Y2K_1),
        ("1,-999999999999999999.99,946684801", 1, "-999999999999999999.99", Y2K_1),
        ("1,+5.5,946684801", 1, "5.50", Y2K_1),
        ("1,-0.01,946684801", 1, "-0.01", Y2K_1),
        ("1,1,946684800.000001", 1, "1", datetime(2000, 1, 1, 0, 0, 0, 1)),
        ("1,1,1570358269.4836095", 1, "1", datetime(2019, 10, 6, 10, 37, 49, 483610)),
        ("1,1,+1570358269", 1, "1", datetime(2019, 10, 6, 10, 37, 49)),
    ],
)
def test_valid_edges(line, user_id, amount, ts):
    tx = parse(line, missing_id="x")
    assert (tx.user_id, tx.amount, tx.ts) == (user_id, Decimal(amount), ts)


NOW = datetime(2026, 11, 28, 23, 55, 8, 323301)
SKEW = timedelta(days=1)  # MAX_CLOCK_SKEW's default


@pytest.mark.parametrize(
    ("ts", "accepted"),
    [
        (datetime(1999, 12, 31, 23, 59, 59, 999999), False),
        (datetime(2000, 1, 1), True),
        (NOW, True),
        (NOW + SKEW, True),
        (NOW + SKEW + MICROSECOND, False),
        (datetime(9999, 12, 31, 23, 59, 59, 999999), False),
    ],
    ids=["before-2000", "2000-exactly", "now", "now+skew", "just-past-now+skew", "year-9999"],
)
def test_event_times_run_from_2000_to_now_plus_the_clock_skew(ts, accepted):
    line = f"1,1.00,{format_epoch(ts)},t"
    latest = to_micros(NOW + SKEW)
    if accepted:
        assert parse(line, latest=latest).ts == ts
    else:
        with pytest.raises(MalformedMessage, match=r"timestamp out of range \(2000-01-01T"):
            parse(line, latest=latest)


def test_the_latest_time_accepted_is_now_plus_the_skew():
    before = to_micros(utcnow())
    latest = latest_accepted(3600)
    assert before + 3600 * 10**6 <= latest <= to_micros(utcnow()) + 3600 * 10**6
    assert latest_accepted() - latest_accepted(0) == pytest.approx(86400 * 10**6, abs=10**6)


def test_txn_id_of_64_allowed_characters():
    txn_id = ("AZaz09._:-" * 7)[:64]
    assert parse(f"1,1,1570358269,{txn_id}").txn_id == txn_id


def _line_of(size: int) -> bytes:
    """A valid line of exactly `size` bytes (leading zeros of the amount pad it)."""
    tail = "1,1570358269.5"
    return ("1," + "0" * (size - len(tail) - 2) + tail).encode()


def test_longest_line_is_accepted():
    assert len(_line_of(MAX_LINE_BYTES)) == MAX_LINE_BYTES
    assert parse(_line_of(MAX_LINE_BYTES) + b"\n").user_id == 1


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("\n", "empty"),
        ("1,2", "got 2"),
        ("1,2,3,4,5", "got 5"),
        ("1,2,3,4\n\n", "txn_id"),
        ("1,2,3\r", "timestamp"),
        ("x,1,1", "user_id"),
        ("1,x,1", "amount"),
        ("1,1,x", "timestamp"),
        ("1,NaN,1", "amount"),
        ("1,nan,1", "amount"),
        ("1,inf,1", "amount"),
        ("1,-Infinity,1", "amount"),
        ("1,1,NaN", "timestamp"),
        ("1,1,nan", "timestamp"),
        ("1,1,inf", "timestamp"),
        ("0,1,1", "user_id"),
        ("-1,1,1", "user_id"),
        (f"{2**63},1,1", "user_id"),
        ("1" * 30 + ",1,1", "user_id"),
        ("1,1.001,1", "amount"),
        ("1,1.,1", "amount"),
        ("1,.5,1", "amount"),
        ("1,1000000000000000000,1", "amount"),
        ("1,-1000000000000000000,1", "amount"),
        ("1,1000000000000000000.00,1", "amount"),
        ("1,10000000000000000000000,1", "amount"),
        ("1,1e5,1", "amount"),
        ("1,1E5,1", "amount"),
        ("1,1,1e9", "timestamp"),
        ("٣,1,1", "user_id"),
        ("1,٣,1", "amount"),
        ("1,1,١٥٧٠٣٥٨٢٦٩", "timestamp"),
        (" 1,1,1", "user_id"),
        ("1,1 ,1", "amount"),
        ("1,- 1,1", "amount"),
        ("1,1,1 ", "timestamp"),
        ("1,1,1\t", "timestamp"),
        (",1,1", "user_id"),
        ("1,,1", "amount"),
        ("1,1,", "timestamp"),
        ("1,1,1,", "txn_id"),
        ("1,1,1," + "a" * 65, "txn_id"),
        ("1,1,1,a b", "txn_id"),
        ("1,1,1,a/b", "txn_id"),
        ("1,1,1,é", "txn_id"),
        ("1,1,0", "timestamp out of range"),
        ("1,1,0.0000001", "timestamp out of range"),
        ("1,1,-1", "timestamp out of range"),
        ("1,1,-1570358269.5", "timestamp out of range"),
        ("1,1,1", "timestamp out of range"),
        ("1,1,253402300799.999999", "timestamp out of range"),  # year 9999
        ("1,1,253402300800", "out of range"),
        ("1,1,1" + "0" * 300, "out of range"),
        ("1,1,253402300799.9999999", "out of range"),  # rounds up to year 10000
        ("1,1,-" + "9" * 300, "timestamp"),
        ("1,1,-1" + "0" * 25, "timestamp"),
        ("1,1," + "0" * 300 + "1570358269", "timestamp out of range"),
        ("1,1,1570358269." + "1" * 300, "too precise"),
        (b"1,1,\xff", "UTF-8"),
        (b"1,\xc3,1", "UTF-8"),
        ("1,1,1570358269,\ud800", "UTF-8"),  # a lone surrogate in a str
        (_line_of(MAX_LINE_BYTES + 1), "longer than 1024 bytes"),
        (b"1,1,1," + b"a" * 2000, "longer than 1024 bytes"),
    ],
)
def test_malformed(raw, reason):
    with pytest.raises(MalformedMessage, match=reason):
        parse(raw, missing_id="x")


@pytest.mark.parametrize(
    "line",
    [line for line, *_ in SEED]
    + ["9,0.10,946684800.000001,A:b.c_d-e", "5,-0,946684807", "5,+12.3,1570358269.5"],
)
def test_format_line_round_trips(line):
    tx = parse(line, missing_id="id-1")
    formatted = format_line(tx)
    assert parse(formatted) == tx
    assert format_line(parse(formatted)) == formatted


def test_format_line_of_a_seed_line():
    assert format_line(parse(SEED[0][0], missing_id="s1")) == (
        "1,-44690489068.00,1570358269.483609,s1"
    )
