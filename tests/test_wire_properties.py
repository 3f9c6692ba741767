"""Properties of the wire parser for any input, found by hypothesis (its profile, the same
examples every run, is in conftest.py)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from txstream.money import AMOUNT_LIMIT, format_amount
from txstream.times import from_micros, to_micros
from txstream.transaction import MAX_USER_ID, TXN_ID, Transaction, from_json_text, to_json_text
from txstream.wire import EARLIEST, MAX_LINE_BYTES, MalformedMessage, format_line, parse

PROPERTY = settings(max_examples=400)  # parsing is fast: more than the default 100
NOW = datetime(2026, 11, 29, 0, 5, 43)
LATEST = to_micros(NOW) + 86_400 * 10**6  # now + MAX_CLOCK_SKEW's default

# Inputs near the format, where parsing has the most to get wrong: fields of digits, signs,
# points and look-alikes, joined by commas, with line ends; plus any bytes and any text.
_FIELD = st.text(alphabet="0123456789+-.eE_:aZ \t\r\n\x00é٣\ud800", max_size=25)
_NEAR_LINES = st.lists(_FIELD, min_size=1, max_size=6).map(",".join)
_VALID = st.builds(
    Transaction,
    txn_id=st.from_regex(TXN_ID, fullmatch=True),
    user_id=st.integers(1, MAX_USER_ID),
    amount=st.integers(-(10**20) + 1, 10**20 - 1).map(lambda cents: Decimal(cents).scaleb(-2)),
    ts=st.integers(to_micros(EARLIEST), LATEST).map(from_micros),
)


@st.composite
def _mutated_lines(draw) -> bytes:
    """A valid line with a few of its bytes overwritten or inserted."""
    line = format_line(draw(_VALID)).encode()
    at = draw(st.integers(0, len(line)))
    new = draw(st.binary(min_size=1, max_size=3))
    skip = draw(st.sampled_from([0, len(new)]))  # inserted, or overwriting
    return line[:at] + new + line[at + skip :]


ANY_INPUT = st.one_of(
    st.binary(max_size=MAX_LINE_BYTES + 10),
    st.text(),
    _NEAR_LINES,
    _NEAR_LINES.map(lambda text: text.encode("utf-8", "surrogatepass")),
    _mutated_lines(),
)
# Every amount text the wire format takes: at most 2 decimals, |amount| < 10^18, with or
# without a sign and leading zeros.
_AMOUNT_TEXT = st.from_regex(r"[+-]?0{0,3}[0-9]{1,18}(\.[0-9]{1,2})?", fullmatch=True)


def assert_valid(tx: Transaction) -> None:
    """`tx` holds only what the rest of txstream can store and show."""
    assert TXN_ID.fullmatch(tx.txn_id)
    assert type(tx.user_id) is int and 1 <= tx.user_id <= MAX_USER_ID
    assert tx.amount.is_finite() and abs(tx.amount) < AMOUNT_LIMIT
    assert tx.amount.as_tuple().exponent == -2
    assert EARLIEST <= tx.ts <= from_micros(LATEST) and tx.ts.tzinfo is None


@PROPERTY
@given(ANY_INPUT)
def test_any_input_is_a_valid_transaction_or_a_malformed_message(raw):
    try:
        tx = parse(raw, missing_id="m", latest=LATEST)
    except MalformedMessage:
        return
    assert_valid(tx)


@PROPERTY
@given(_VALID)
def test_format_line_then_parse_gives_the_transaction_back(tx):
    line = format_line(tx)
    assert parse(line, latest=LATEST) == tx
    assert format_line(parse(line.encode(), latest=LATEST)) == line


@PROPERTY
@given(_AMOUNT_TEXT)
def test_no_amount_loses_a_cent(text):
    tx = parse(f"1,{text},1570358269,t", latest=LATEST)
    assert tx.amount == Decimal(text)
    assert Decimal(format_amount(tx.amount)) == Decimal(text)
    assert from_json_text(to_json_text(tx)).amount == Decimal(text)
    assert parse(format_line(tx), latest=LATEST).amount == Decimal(text)
