"""Sums read from the aggregates: equal to a plain sum over the raw rows for any
transactions, window length and range (hypothesis; its profile is in conftest.py), and
at a cost that does not grow with the user's volume."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from tests.helpers import make_app, signed_in_client
from txstream import queries
from txstream.aggregates import KnownLayout, Layout, split_range
from txstream.keys import Keys
from txstream.params import MAX_HOURS, span
from txstream.store import Store
from txstream.testing import assert_totals_match_raw_rows, empty_tables
from txstream.times import from_micros, to_micros
from txstream.transaction import Transaction

MICRO = timedelta(microseconds=1)
HOUR = 3600 * 10**6  # microseconds
NOW = datetime(2026, 11, 29, 12, 0)
USER = 1  # whose sums are asked for; user 2's transactions must never count
PROPERTY = settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Window lengths in seconds: the default 6 h, lengths whose bucket is less than a minute
# (90 s -> 30 s buckets, 7 s -> 7 s), a year, and any up to three days.
WINDOWS = st.one_of(
    st.sampled_from([6 * 3600, 3600, 60, 90, 7, 1, 86400, 5400, MAX_HOURS * 3600]),
    st.integers(1, 3 * 86400),
)
# `hours` as the API takes them: up to 8760, in steps of 0.0001 h (0.36 s), or whole.
HOURS = st.one_of(
    st.integers(1, MAX_HOURS * 10**4).map(lambda k: Decimal(k).scaleb(-4)),
    st.integers(1, MAX_HOURS).map(Decimal),
)
AMOUNTS = st.one_of(st.integers(-(10**8), 10**8), st.integers(-(10**20) + 1, 10**20 - 1)).map(
    lambda cents: Decimal(cents).scaleb(-2)
)


def near(times: list[datetime]) -> st.SearchStrategy[datetime]:
    """One of `times`, or 1 us before or after it: where an off-by-one would show."""
    return st.tuples(st.sampled_from(times), st.sampled_from([0, -1, 1])).map(
        lambda t: t[0] + t[1] * MICRO
    )


@st.composite
def scenarios(draw):
    """(layout, now, hours, batches of transactions): times near every boundary that
    splits the range into raw rows, buckets and windows, and anywhere around it."""
    layout = Layout.for_window(draw(WINDOWS))
    now = NOW + draw(st.integers(0, 10 * 86400 * 10**6)) * MICRO
    hours = draw(HOURS)
    start = now - span(hours)
    parts = split_range(start, now, layout)
    bucket = timedelta(seconds=layout.bucket_seconds)
    boundaries = [*parts, parts.a - bucket, parts.wa - bucket, parts.wb - bucket, parts.b + bucket]
    anywhere = st.integers(to_micros(start) - HOUR, to_micros(now) + HOUR).map(from_micros)
    times = st.one_of(near(boundaries), near(boundaries), anywhere)
    rows = draw(st.lists(st.tuples(st.sampled_from([USER, USER, 2]), AMOUNTS, times), max_size=40))
    txns = [Transaction(f"t{i}", user, amount, ts) for i, (user, amount, ts) in enumerate(rows)]
    # Stored in batches, some of them delivered twice (a redelivery stores nothing new).
    cuts = sorted(draw(st.lists(st.integers(0, len(txns)), max_size=4)))
    batches = [txns[i:j] for i, j in zip([0, *cuts], [*cuts, len(txns)], strict=True)]
    again = draw(st.lists(st.sampled_from(batches), max_size=2)) if batches else []
    return layout, now, hours, batches + again


def expected_sum(txns: list[Transaction], start: datetime, end: datetime) -> tuple[int, Decimal]:
    """The plain sum over the raw rows: user 1's transactions with start < ts <= end."""
    amounts = [t.amount for t in txns if t.user_id == USER and start < t.ts <= end]
    return len(amounts), sum(amounts, Decimal("0.00"))


@pytest.fixture
def app(backend, key_prefix):
    engine, client = backend
    return make_app(engine, client, key_prefix, RATE_LIMIT="1000000/minute")


@PROPERTY
@given(scenario=scenarios(), other_range=st.data())
def test_sums_equal_the_raw_rows_for_any_range(app, scenario, other_range):
    layout, now, hours, batches = scenario
    engine = app.config["ENGINE"]
    empty_tables(engine)  # the tokens too: a new one per example
    store = Store(
        engine, app.config["REDIS"], Keys(app.config["KEY_PREFIX"]), layout.window_seconds
    )
    for batch in batches:
        store.store(batch)
    stored = list({t.txn_id: t for batch in batches for t in batch}.values())
    app.config.update(CLOCK=lambda: now, LAYOUT=KnownLayout())
    start = now - span(hours)

    body = signed_in_client(app).get(f"/api/users/{USER}/sum?hours={hours}").get_json()

    assert (body["count"], Decimal(body["sum"])) == expected_sum(stored, start, now)
    # Any other range, to the microsecond, straight from the query.
    times = [t.ts for t in stored] + list(split_range(start, now, layout))
    lo, hi = sorted(other_range.draw(st.lists(near(times), min_size=2, max_size=2, unique=True)))
    with engine.connect() as conn:
        for few_rows in (0, 1, queries.FEW_ROWS):  # 0: from the aggregates whatever the rows
            found = queries.user_sum(conn, USER, lo, hi, layout, few_rows)
            assert found == expected_sum(stored, lo, hi), few_rows
        found = queries.user_sum(conn, USER, start, now, layout, few_rows=0)
        assert (body["count"], Decimal(body["sum"])) == found
    assert_totals_match_raw_rows(engine, layout.window_seconds)


@settings(max_examples=300)
@given(
    window=WINDOWS,
    start=st.integers(to_micros(NOW), to_micros(NOW) + 86400 * 10**6),
    length=st.integers(1, MAX_HOURS * HOUR),
)
def test_a_range_splits_into_whole_buckets_and_windows(window, start, length):
    layout = Layout.for_window(window)
    bucket, window = layout.bucket_seconds * 10**6, layout.window_seconds * 10**6
    parts = [
        to_micros(t) for t in split_range(from_micros(start), from_micros(start + length), layout)
    ]
    s, a, wa, wb, b, e = parts

    assert s < a <= wa <= wb <= b <= e
    assert (a - s <= bucket and e - b < bucket) or a == b == e  # raw rows: at most two buckets
    if a < b:
        assert a % bucket == b % bucket == 0
    if wa < wb:
        assert wa % window == wb % window == 0
        assert wa - a < window and b - wb < window  # at most 2 x window/bucket buckets
    else:
        assert wa == wb == b


@pytest.mark.services
def test_a_heavy_users_sum_reads_aggregates_not_every_row(mysql_engine, redis_client, key_prefix):
    """20,000 transactions over 7 days: the sum over all of them reads a few hundred rows
    (windows, buckets, two edges of raw rows), as MariaDB's handler counters show."""
    store = Store(mysql_engine, redis_client, Keys(key_prefix), 6 * 3600)
    every = timedelta(days=7) / 20_000
    txns = [Transaction(f"h{i}", 7, Decimal("1.25"), NOW - i * every) for i in range(20_000)]
    for i in range(0, len(txns), 2000):
        store.commit(txns[i : i + 2000])
    layout = Layout.for_window(6 * 3600)
    start = NOW - timedelta(hours=168) + timedelta(seconds=17)  # inside a bucket

    with mysql_engine.connect() as conn:
        before = _rows_read(conn)
        count, total = queries.user_sum(conn, 7, start, NOW + timedelta(seconds=5), layout)
        read = _rows_read(conn) - before
        raw_before = _rows_read(conn)
        assert queries.user_sum(conn, 7, start, NOW + timedelta(seconds=5), None) == (count, total)
        raw_read = _rows_read(conn) - raw_before

    assert (count, total) == (20_000, Decimal("25000.00"))
    assert raw_read >= 19_000  # the raw sum reads every row
    # FEW_ROWS + 1 raw rows, then 27 windows, up to 718 buckets, the raw rows of two minutes
    assert read < 1000


def _rows_read(conn) -> int:
    """The rows this session's statements have read from indexes and tables so far."""
    status = conn.execute(text("SHOW SESSION STATUS LIKE 'Handler_read%'")).all()
    return sum(int(value) for _, value in status)


def test_the_next_sum_after_a_rebuild_uses_the_new_layout(app):
    """A web app caches the layout; the windows are rebuilt with another length (1 h to
    6 h: the 1 h split would count a whole 6 h window at each end); its very next sum is
    right, since the statement itself checks the layout it was split by."""
    engine = app.config["ENGINE"]
    every = timedelta(hours=30) / 800
    txns = [Transaction(f"c{i}", USER, Decimal(i).scaleb(-2), NOW - i * every) for i in range(800)]
    Store(engine, app.config["REDIS"], Keys(app.config["KEY_PREFIX"]), 3600).commit(txns)
    now = NOW + timedelta(minutes=20, seconds=7)
    app.config.update(CLOCK=lambda: now, WINDOW_HOURS=Decimal(1))
    client = signed_in_client(app)
    hours = Decimal("7.5")
    expected = expected_sum(txns, now - span(hours), now)
    assert expected[0] > queries.FEW_ROWS  # read from the aggregates
    assert client.get(f"/api/users/{USER}/sum?hours={hours}").get_json()["count"] == expected[0]
    assert app.config["LAYOUT"].get(None) == Layout.for_window(3600)  # cached

    result = app.test_cli_runner().invoke(args=["rebuild-windows", "--hours", "6"])
    assert result.exit_code == 0, result.output

    body = client.get(f"/api/users/{USER}/sum?hours={hours}").get_json()
    assert (body["count"], Decimal(body["sum"])) == expected
    assert app.config["LAYOUT"].get(None) == Layout.for_window(6 * 3600)
    assert_totals_match_raw_rows(engine, 6 * 3600)
