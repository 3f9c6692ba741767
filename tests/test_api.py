"""The JSON API on fakeredis + SQLite, with data stored through the subscriber's write path.

tests/test_api_mysql.py runs the key tests of this module again on the real servers.
"""

from __future__ import annotations

import base64
import re
from datetime import datetime, timedelta
from decimal import Decimal
from urllib.parse import quote

import pytest
import redis
from sqlalchemy import inspect

import models
from tests.helpers import BIGGEST, line, seed
from txstream import queries
from txstream.aggregates import Layout, recorded_layout
from txstream.keys import Keys
from txstream.recent import RecentLists
from txstream.times import format_time
from txstream.transaction import Transaction, to_json, to_json_text
from txstream.wire import parse

_AMOUNT = re.compile(r"-?[0-9]+\.[0-9]{2}")
_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_MICRO = timedelta(microseconds=1)


def newest_first(txns: list[Transaction]) -> list[str]:
    """The txn_ids of `txns` in the API's order: ts DESC, txn_id DESC."""
    return [tx.txn_id for tx in sorted(txns, key=lambda tx: (tx.ts, tx.txn_id), reverse=True)]


def get_json(client, path: str, status: int = 200, **params) -> dict:
    """GET `path` with query `params`; check the status and that the answer is JSON."""
    response = client.get(path, query_string=params)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    return response.get_json()


def assert_transaction_json(item: dict) -> None:
    """An item of a transaction list: amount a string with two decimals, times consistent."""
    assert set(item) == {"txn_id", "user_id", "amount", "ts", "time"}
    assert isinstance(item["amount"], str) and _AMOUNT.fullmatch(item["amount"])
    assert _ISO.fullmatch(item["time"])


# --- sum -------------------------------------------------------------------------------


def test_sum_is_exact_for_large_amounts(app, client):
    now = app.config["CLOCK"]()
    seed(app, *(line(7, BIGGEST, now - i * _MICRO, f"big-{i}") for i in range(5)))
    seed(app, line(7, "-0.01", now, "small"))

    body = get_json(client, "/api/users/7/sum")

    assert body["count"] == 6
    assert body["sum"] == "4999999999999999999.94"


def test_sum_counts_start_exclusive_end_inclusive(app, client):
    now = app.config["CLOCK"]()
    start = now - timedelta(hours=6)
    seed(
        app,
        line(1, "1000.00", start, "at-start"),  # excluded: start < ts
        line(1, "200.00", start + _MICRO, "after-start"),
        line(1, "30.00", now, "at-now"),  # included: ts <= now
        line(1, "4000.00", now + _MICRO, "after-now"),
        line(2, "50000.00", now, "other-user"),
    )

    body = get_json(client, "/api/users/1/sum", hours="6")

    assert body == {
        "user_id": 1,
        "hours": 6,
        "from": format_time(start),
        "to": format_time(now),
        "count": 2,
        "sum": "230.00",
    }
    assert isinstance(body["hours"], int)


def test_sum_takes_fractional_hours(app, client):
    now = app.config["CLOCK"]()
    start = now - timedelta(minutes=90)
    seed(
        app,
        line(1, "1.00", start, "at-start"),
        line(1, "2.00", start + _MICRO, "after-start"),
        line(1, "4.00", now - timedelta(hours=1), "hour-ago"),
    )

    body = get_json(client, "/api/users/1/sum", hours="1.5")

    assert (body["hours"], body["from"], body["count"], body["sum"]) == (
        1.5,
        format_time(start),
        2,
        "6.00",
    )


def test_sum_defaults_to_window_hours(app, client):
    app.config["WINDOW_HOURS"] = Decimal("0.25")
    now = app.config["CLOCK"]()
    seed(app, line(1, "1.00", now - timedelta(minutes=10), "in"))
    seed(app, line(1, "2.00", now - timedelta(minutes=20), "out"))

    body = get_json(client, "/api/users/1/sum")

    assert (body["hours"], body["count"], body["sum"]) == (0.25, 1, "1.00")


def test_sum_of_a_user_without_transactions_is_zero(app, client):
    body = get_json(client, "/api/users/9223372036854775807/sum")

    assert (body["count"], body["sum"]) == (0, "0.00")


@pytest.mark.parametrize("from_aggregates", [True, False], ids=["aggregates", "raw-rows"])
def test_user_sum_query_returns_exact_decimals(app, from_aggregates):
    now = app.config["CLOCK"]()
    seed(app, line(3, "0.10", now, "a"), line(3, "0.20", now - _MICRO, "b"))

    with app.config["ENGINE"].connect() as conn:
        recorded = recorded_layout(conn)
        layout = recorded if from_aggregates else None
        found = queries.user_sum(conn, 3, now - timedelta(hours=1), now, layout)
        empty = queries.user_sum(conn, 4, now - timedelta(hours=1), now, layout)

    assert recorded is not None  # the subscriber's Store recorded it
    assert found == (2, Decimal("0.30"))
    assert empty == (0, Decimal("0.00"))


# --- transaction lists -------------------------------------------------------------------


def seed_for_paging(app) -> list[Transaction]:
    """Seven transactions of user 1, three of them at the same time, and two of user 2."""
    now = app.config["CLOCK"]()
    tie = now - timedelta(minutes=5)
    return seed(
        app,
        line(1, "1.00", now - timedelta(days=400), "oldest"),
        line(1, "2.00", tie, "tie-a"),
        line(1, "3.00", tie, "tie-B"),  # byte order: "tie-B" < "tie-a" < "tie-c"
        line(1, "4.00", tie, "tie-c"),
        line(2, "5.00", tie, "tie-b"),
        line(1, "6.00", tie - _MICRO, "just-before-tie"),
        line(1, "7.00", tie + _MICRO, "just-after-tie"),
        line(2, "8.00", now, "user-2-newest"),
        line(1, BIGGEST, now + timedelta(days=1), "future"),
    )


@pytest.mark.parametrize("limit", [1, 2, 3, 50])
@pytest.mark.parametrize(
    "path, users", [("/api/users/1/transactions", {1}), ("/api/transactions", {1, 2})]
)
def test_pages_return_every_row_once_newest_first(app, client, path, users, limit):
    txns = [tx for tx in seed_for_paging(app) if tx.user_id in users]
    expected = newest_first(txns)

    pages = max(1, -(-len(expected) // limit))  # ceil: no empty last page
    seen, cursor = [], None
    for page in range(pages):
        params = {"limit": str(limit)} if cursor is None else {"limit": limit, "before": cursor}
        body = get_json(client, path, **params)
        assert len(body["items"]) <= limit
        seen += body["items"]
        cursor = body["next"]
        assert (cursor is None) == (page == pages - 1)

    assert [item["txn_id"] for item in seen] == expected
    by_id = {tx.txn_id: tx for tx in txns}
    for item in seen:
        assert_transaction_json(item)
        assert item == to_json(by_id[item["txn_id"]])


def test_transactions_default_limit_is_50(app, client):
    now = app.config["CLOCK"]()
    seed(app, *(line(1, "1.00", now - i * _MICRO, f"t{i:03d}") for i in range(51)))

    body = get_json(client, "/api/users/1/transactions")

    assert len(body["items"]) == 50
    assert body["next"] is not None


@pytest.mark.parametrize("of_one_user", [False, True])
def test_page_query_breaks_ties_on_ts_by_txn_id(of_one_user):
    # The indexes return ties in txn_id order anyway; the ORDER BY must not rely on it.
    query = queries._page_statement(of_one_user, after_a_position=True)

    assert "ORDER BY transactions.ts DESC, transactions.txn_id DESC" in str(query)


def test_cursor_round_trip():
    position = queries.Position(datetime(2019, 10, 6, 10, 37, 49, 483609), "a.b_c:d-E")

    cursor = queries.encode_cursor(position)

    assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor)
    assert queries.decode_cursor(cursor) == position


# --- recent, from Redis -------------------------------------------------------------------


def test_recent_lists_the_latest_five_newest_first(app, client):
    now = app.config["CLOCK"]()
    first = seed(app, *(line(4, f"{i}.00", now - timedelta(minutes=i), f"m{i}") for i in (1, 3, 5)))
    # Later batch, older and equal times: the list stays ordered by (time, txn_id).
    second = seed(
        app,
        line(4, "9.00", now - timedelta(minutes=1), "m1-b"),
        line(4, "2.00", now - timedelta(minutes=2), "m2"),
        line(4, "7.00", now - timedelta(minutes=7), "m7"),
    )

    body = get_json(client, "/api/users/4/recent")

    expected = newest_first(first + second)[:5]
    assert [item["txn_id"] for item in body["items"]] == expected
    assert body["items"][0] == to_json(second[0])
    for item in body["items"]:
        assert_transaction_json(item)


def test_recent_does_not_query_the_database(app, client, closed_port):
    now = app.config["CLOCK"]()
    seed(app, line(4, "1.00", now, "only"))
    app.config["ENGINE"] = models.make_engine(f"mysql+pymysql://root@127.0.0.1:{closed_port}/x")
    app.config["AUTH"] = False  # checking a token is the one read a request makes otherwise

    body = get_json(client, "/api/users/4/recent")

    assert [item["txn_id"] for item in body["items"]] == ["only"]
    app.config["ENGINE"].dispose()


def test_recent_of_an_unknown_user_is_empty(client):
    assert get_json(client, "/api/users/5/recent") == {"items": []}


def test_recent_returns_exactly_what_the_redis_list_holds(app, client):
    now = app.config["CLOCK"]()
    seed(app, *(line(4, f"-{i}.50", now - timedelta(seconds=i), f"x{i}") for i in range(7)))
    key = Keys(app.config["KEY_PREFIX"]).recent(4)
    listed = [item.decode() for item in app.config["REDIS"].lrange(key, 0, -1)]
    assert len(listed) == 5
    body = client.get("/api/users/4/recent").get_data(as_text=True)
    assert body.strip() == '{"items":[' + ",".join(listed) + "]}"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda r, key: r.set(key, "a string"),
        lambda r, key: (r.delete(key), r.sadd(key, "a set")),
        lambda r, key: r.lpush(key, "not json", b"\xff\xfe", '{"time":"x"}', "[]"),
        lambda r, key: r.lpush(key, to_json_text(parse("5,1.00,1570358269,of-user-5"))),
    ],
    ids=["string", "set", "junk-items", "other-users-item"],
)
def test_recent_skips_what_it_cannot_read(app, client, tamper, caplog):
    now = app.config["CLOCK"]()
    (good,) = seed(app, line(4, "1.00", now, "good"))
    key = Keys(app.config["KEY_PREFIX"]).recent(4)
    tamper(app.config["REDIS"], key)
    response = client.get("/api/users/4/recent")
    assert response.status_code == 200
    assert response.get_json()["items"] in ([], [to_json(good)])
    assert "recent list" in caplog.text and key in caplog.text
    assert client.get("/users/4").status_code == 200


# --- window totals -----------------------------------------------------------------------


def test_windows_newest_first_with_string_amounts(app, client):
    now = app.config["CLOCK"]()  # 12:00, so windows of 6 h start at 06:00 and 12:00
    seed(
        app,
        line(6, "10.50", now - timedelta(hours=6), "w1-first"),
        line(6, "-3.25", now - _MICRO, "w1-last"),
        line(6, BIGGEST, now, "w2"),
        line(6, BIGGEST, now + timedelta(hours=5), "w2-b"),
        line(8, "1.00", now, "other-user"),
    )

    items = get_json(client, "/api/users/6/windows")["items"]

    assert [item["window_start"] for item in items] == [
        format_time(now),
        format_time(now - timedelta(hours=6)),
    ]
    assert items[1]["window_end"] == format_time(now)
    got = [(i["tx_count"], i["amount_sum"], i["amount_min"], i["amount_max"]) for i in items]
    assert got == [
        (2, "1999999999999999999.98", BIGGEST, BIGGEST),
        (2, "7.25", "-3.25", "10.50"),
    ]
    for item in items:
        assert item["user_id"] == 6
        assert _ISO.fullmatch(item["updated_at"])

    limited = get_json(client, "/api/users/6/windows", limit="1")["items"]
    assert [item["window_start"] for item in limited] == [format_time(now)]


# --- health ------------------------------------------------------------------------------


def test_healthz_ok(client):
    assert get_json(client, "/healthz") == {"redis": "ok", "database": "ok"}


@pytest.mark.parametrize(
    "down", [{"redis"}, {"database"}, {"redis", "database"}], ids=["redis", "db", "both"]
)
def test_healthz_503_names_what_is_down(app, client, closed_port, caplog, down):
    if "redis" in down:
        url = f"redis://127.0.0.1:{closed_port}/0"  # made as the app makes its client
        app.config["REDIS"] = redis.Redis.from_url(url, socket_connect_timeout=2)
    if "database" in down:
        url = f"mysql+pymysql://root@127.0.0.1:{closed_port}/x"
        app.config["ENGINE"] = models.make_engine(url)

    body = get_json(client, "/healthz", status=503)

    assert body == {name: "down" if name in down else "ok" for name in ("redis", "database")}
    for name in down:
        assert f"{'Redis' if name == 'redis' else 'the database'} is down" in caplog.text
    app.config["REDIS"].close()
    app.config["ENGINE"].dispose()


# --- errors ------------------------------------------------------------------------------

USER_PATHS = ["sum", "transactions", "recent", "windows"]
BAD_USER_IDS = [
    "abc",
    "0",
    "-1",
    "+1",
    "1.0",
    "1e3",
    "9223372036854775808",  # 2^63
    "99999999999999999999",
    "\u0661\u0662",  # Arabic-Indic digits
    "\uff11",  # fullwidth 1
    " 1",
]
BAD_HOURS = [
    "",
    "0",
    "0.0",
    "-1",
    "+1",
    "nan",
    "NaN",
    "inf",
    "Infinity",
    "1e3",
    "8760.000001",
    "8761",
    "1.",
    ".5",
    "1,5",
    " 6",
    "0x10",
    "0.0000000001",  # 0.36 microseconds
    "\u0661",
]
BAD_LIMITS = ["", "0", "501", "-1", "+5", "1.5", "1e2", "abc", " 5", "\u0665"]


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


GOOD_CURSOR = queries.encode_cursor(queries.Position(datetime(2024, 1, 1), "abc"))
BAD_CURSORS = [
    "",
    "!!!",
    "a",
    GOOD_CURSOR + "=",
    GOOD_CURSOR.replace("-", "+").replace("_", "/") + "+",
    _b64("1704067200000000"),
    _b64("x:abc"),
    _b64("-1:abc"),
    _b64("0:abc"),
    _b64("1704067200000000:"),
    _b64("1704067200000000:bad id"),
    _b64("1704067200000000:" + "a" * 65),
    _b64("999999999999999999:abc"),
    _b64("01704067200000000:abc"),
    base64.urlsafe_b64encode(b"\xff\xfe:abc").decode(),
    "x" * 300,
]


def bad_requests():
    """(path, query, parameter named in the error) for every class of bad input."""
    for user_id in BAD_USER_IDS:
        for name in USER_PATHS:
            yield f"/api/users/{quote(user_id, safe='')}/{name}", {}, "user_id"
    for hours in BAD_HOURS:
        yield "/api/users/1/sum", {"hours": hours}, "hours"
    for limit in BAD_LIMITS:
        for path in ["/api/transactions", "/api/users/1/transactions", "/api/users/1/windows"]:
            yield path, {"limit": limit}, "limit"
    for cursor in BAD_CURSORS:
        for path in ["/api/transactions", "/api/users/1/transactions"]:
            yield path, {"before": cursor}, "before"


@pytest.mark.parametrize("path, query, parameter", list(bad_requests()))
def test_bad_input_is_a_400_naming_the_parameter(client, path, query, parameter):
    body = get_json(client, path, status=400, **query)

    assert set(body) == {"error"}
    assert body["error"].startswith(parameter)


@pytest.mark.parametrize("path", ["/api", "/api/", "/api/nope", "/api/users/1/nope"])
def test_unknown_api_path_is_a_json_404(client, path):
    body = get_json(client, path, status=404)

    assert body == {"error": f"no such endpoint: {path}"}


def test_wrong_method_is_a_json_405(client):
    response = client.post("/api/transactions")

    assert response.status_code == 405
    assert "GET" in response.headers["Allow"]
    assert set(response.get_json()) == {"error"}


class _BrokenEngine:
    def connect(self):
        raise RuntimeError("secret detail of a bug")


def test_unexpected_error_is_a_json_500_without_details(app, client, caplog):
    app.config.update(ENGINE=_BrokenEngine(), PROPAGATE_EXCEPTIONS=False)

    response = client.get("/api/users/1/sum")

    assert response.status_code == 500
    assert set(response.get_json()) == {"error"}
    assert "secret" not in response.get_data(as_text=True)
    assert "secret detail of a bug" in caplog.text  # logged, with its traceback


@pytest.mark.parametrize(
    ("error", "status"),
    [("WRONGTYPE Operation against a key holding the wrong kind of value", 503), ("ERR bug", 500)],
)
def test_a_wrongtype_no_reader_expected_is_a_503_any_other_refusal_a_500(
    app, client, monkeypatch, error, status
):
    def refused(self, user_id):
        raise redis.ResponseError(error)

    monkeypatch.setattr(RecentLists, "latest", refused)
    app.config["PROPAGATE_EXCEPTIONS"] = False

    response = client.get("/api/users/1/recent")

    assert response.status_code == status
    assert ("holds another type" in response.json["error"]) == (status == 503)


# --- init-db -----------------------------------------------------------------------------


def test_init_db_creates_the_tables_once(app, tmp_path):
    engine = models.make_engine(f"sqlite:///{tmp_path / 'new.sqlite3'}")
    app.config["ENGINE"] = engine
    runner = app.test_cli_runner()

    first = runner.invoke(args=["init-db"])
    second = runner.invoke(args=["init-db"])

    assert first.exit_code == 0, first.output
    tables = (
        "api_tokens, settings, transactions, user_bucket_totals, user_window_totals, web_sessions"
    )
    assert f"Created tables {tables} in sqlite:///" in first.output
    assert set(inspect(engine).get_table_names()) == set(tables.split(", "))
    assert "Aggregates: windows of 6 h, buckets of 60 s" in first.output
    with engine.connect() as conn:
        assert recorded_layout(conn) == Layout(6 * 3600, 60)
    assert "nothing to create" in second.output, second.output
    assert second.exit_code == 0


def test_init_db_refuses_a_database_of_another_window(app, tmp_path):
    engine = models.make_engine(f"sqlite:///{tmp_path / 'new.sqlite3'}")
    app.config["ENGINE"] = engine
    runner = app.test_cli_runner()
    runner.invoke(args=["init-db"])
    app.config["WINDOW_HOURS"] = Decimal(1)

    result = runner.invoke(args=["init-db"])

    assert result.exit_code == 1
    assert "windows of 6 h, buckets of 60 s, not windows of 1 h" in result.output
    assert "set WINDOW_HOURS=6" in result.output
    engine.dispose()
