"""The user page: the chosen period's sum, the date-range filter, the window chart, money."""

from __future__ import annotations

import html
import re
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from tests.helpers import line, make_app, seed, signed_in_client
from tests.test_pages import get_page, older_link
from txstream.chart import HEIGHT, bar_chart
from txstream.money import format_money
from txstream.pages import PAGE_SIZE, PERIODS
from txstream.queries import WindowRow
from txstream.times import format_time

NOW = datetime(2024, 5, 6, 12, 0, 0)
_SUM = re.compile(r'<dd id="period-sum" class="num"><data class="money[^"]*" value="([^"]+)"')
_COUNT = re.compile(r'<dd id="period-count" class="num">([0-9]+)</dd>')


def listed(page: str) -> list[str]:
    """The transaction ids in the page's list of transactions."""
    table = (
        page.split('id="transactions-table"')[1].split("</table>")[0]
        if "transactions-table" in page
        else ""
    )
    return re.findall(r'<td class="id">([^<]+)</td>', table)


@pytest.fixture
def both_app(backend, key_prefix):
    """The web app on SQLite with fakeredis, and on MariaDB with Redis, at a fixed CLOCK."""
    engine, client = backend
    return make_app(
        engine,
        client,
        key_prefix,
        WINDOW_HOURS=Decimal(6),
        CLOCK=lambda: NOW,
        RATE_LIMIT="1000000/minute",
    )


@pytest.mark.parametrize("hours", [str(h) for h in PERIODS])
def test_period_sum_equals_the_apis(both_app, hours):
    # One transaction inside each period's edge and one just outside: each period differs.
    seed(
        both_app,
        *(
            line(3, f"{sign}{i}.25", NOW - timedelta(hours=h) + delta, f"t{i}-{sign or 'p'}")
            for i, h in enumerate([1, 6, 24, 168, 200])
            for sign, delta in (("", timedelta(seconds=1)), ("-", -timedelta(seconds=1)))
        ),
        line(3, "1234567.89", NOW, "big"),
    )
    client = signed_in_client(both_app)

    page = get_page(client, "/users/3", hours=hours)
    api = client.get("/api/users/3/sum", query_string={"hours": hours}).get_json()

    assert _SUM.search(page)[1] == api["sum"]
    assert _COUNT.search(page)[1] == str(api["count"])
    assert f'<time datetime="{api["from"]}">' in page.split('id="period-range"')[1]
    assert re.search(rf'id="period-{hours}" href="[^"]+"\s*aria-current="page"', page)


def test_default_period_is_window_hours(app, client):
    seed(app, line(3, "5.00", NOW - timedelta(hours=5), "in-6h"))

    page = get_page(client, "/users/3")

    assert _SUM.search(page)[1] == "5.00"
    assert "Last 6 h</h2>" in page


# Around 2024-05-05: the range's edges, one microsecond either side.
_DAY = datetime(2024, 5, 5)
_MICRO = timedelta(microseconds=1)
_EDGES = [
    ("before-from", _DAY - _MICRO),
    ("at-from", _DAY),
    ("inside", _DAY + timedelta(hours=12)),
    ("before-to", _DAY + timedelta(days=1) - _MICRO),
    ("at-to", _DAY + timedelta(days=1)),
]


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"from": "2024-05-05", "to": "2024-05-06"}, ["before-to", "inside", "at-from"]),
        ({"from": "2024-05-05T00:00", "to": ""}, ["at-to", "before-to", "inside", "at-from"]),
        ({"from": "", "to": "2024-05-05T12:00:00"}, ["at-from", "before-from"]),
        ({}, ["at-to", "before-to", "inside", "at-from", "before-from"]),
    ],
)
def test_range_is_from_inclusive_to_exclusive(both_app, params, expected):
    seed(both_app, *(line(4, "1.00", ts, name) for name, ts in _EDGES))

    page = get_page(signed_in_client(both_app), "/users/4", **params)

    assert listed(page) == expected
    assert "Times are UTC" in page


def test_older_link_keeps_the_range_and_the_period(app, client):
    start = datetime(2024, 5, 1)
    inside = [line(1, "1.00", start + i * _MICRO, f"in{i:03d}") for i in range(PAGE_SIZE + 2)]
    seed(
        app, *inside, line(1, "1.00", start - _MICRO, "out-early"), line(1, "1.00", NOW, "out-late")
    )
    params = {"from": "2024-05-01", "to": "2024-05-02", "hours": "24"}

    first = get_page(client, "/users/1", **params)
    target = older_link(first)
    second = get_page(client, target)

    assert "from=2024-05-01" in target and "to=2024-05-02" in target and "hours=24" in target
    assert listed(first) + listed(second) == [f"in{i:03d}" for i in reversed(range(PAGE_SIZE + 2))]
    newest = html.unescape(re.search(r'id="newest-link" href="([^"]+)"', second)[1])
    assert "before=" not in newest and "from=2024-05-01" in newest


@pytest.mark.parametrize(
    "params, reason",
    [
        ({"from": "2024-05-06", "to": "2024-05-05"}, "to must be later than from"),
        ({"from": "2024-05-06", "to": "2024-05-06"}, "to must be later than from"),
        ({"from": "yesterday"}, "from must be a UTC date"),
        ({"to": "2024-13-01"}, "to must be a UTC date"),
        ({"to": "2024-02-30T10:00"}, "to must be a UTC date"),
        ({"from": "1969-12-31"}, "from must be a UTC date"),
        ({"from": "2024-05-06T25:00"}, "from must be a UTC date"),
        ({"from": "2024-05-06 10:00"}, "from must be a UTC date"),
        ({"from": "2024-05-06T10:00+02:00"}, "from must be a UTC date"),
        ({"from": "\u0662\u0660\u0662\u0664-05-06"}, "from must be a UTC date"),
        ({"hours": "0"}, "hours must be"),
        ({"hours": "-1"}, "hours must be"),
        ({"hours": "nan"}, "hours must be"),
        ({"hours": "1e3"}, "hours must be"),
        ({"hours": "9999"}, "hours must be"),
        ({"hours": ""}, "hours must be"),
        ({"before": "x" * 5000}, "before is not"),
    ],
)
def test_bad_parameters_are_a_400_page_with_the_reason(client, params, reason):
    page = get_page(client, "/users/1", status=400, **params)

    assert f'<p class="error">{reason}' in html.unescape(page)


@pytest.mark.parametrize("name", ["from", "to", "hours", "before"])
@pytest.mark.parametrize("value", ["\x00", "<script>", "9" * 300, "%", "2024-05-06T10:00:00.5"])
def test_hostile_parameters_never_500(client, name, value):
    response = client.get("/users/1", query_string={name: value})

    assert response.status_code in (200, 400)
    assert "<script>" not in response.get_data(as_text=True)


def test_chart_has_a_bar_per_window_with_its_sign_and_title(app, client):
    seed(
        app,
        line(2, "300.00", NOW - timedelta(hours=1), "a"),  # 06:00-12:00 window: +300
        line(2, "-100.50", NOW - timedelta(hours=7), "b"),  # 00:00-06:00 window: -100.50
        line(2, "1000.00", NOW - timedelta(hours=13), "c"),  # 18:00-00:00 window: +1000
    )

    page = get_page(client, "/users/2")

    svg = page.split('<svg id="window-chart"')[1].split("</svg>")[0]
    bars = re.findall(r'<rect class="bar( negative)?"[^>]*><title>([^<]+)</title></rect>', svg)
    start = datetime(2024, 5, 5, 18)
    assert bars == [
        ("", f"{format_time(start)} to {format_time(start + timedelta(hours=6))}: 1,000.00"),
        (
            " negative",
            f"{format_time(start + timedelta(hours=6))} to "
            f"{format_time(start + timedelta(hours=12))}: -100.50",
        ),
        (
            "",
            f"{format_time(start + timedelta(hours=12))} to "
            f"{format_time(start + timedelta(hours=18))}: 300.00",
        ),
    ]
    assert 'role="img"' in svg and 'aria-labelledby="window-chart-title window-chart-desc"' in svg
    assert '<table id="window-table">' in page  # the figures as text too


def window(start: datetime, amount: str) -> WindowRow:
    return WindowRow(1, start, 1, Decimal(amount), Decimal(amount), Decimal(amount), start)


def test_bars_are_proportional_with_negatives_below_the_axis():
    rows = [window(datetime(2024, 1, 1, h), a) for h, a in [(12, "-100.00"), (6, "300.00")]]

    chart = bar_chart(rows, timedelta(hours=6))

    up, down = chart.bars  # oldest first
    assert chart.axis_y == Decimal(HEIGHT) * 3 / 4
    assert (up.y, up.height) == (Decimal(0), chart.axis_y)
    assert (down.y, down.height) == (chart.axis_y, Decimal(HEIGHT) / 4)
    assert not up.negative and down.negative


def test_chart_of_zero_sums_is_flat():
    chart = bar_chart([window(datetime(2024, 1, 1), "0.00")], timedelta(hours=6))

    assert chart.bars[0].height == 0 and chart.axis_y == HEIGHT


@pytest.mark.parametrize(
    "amount, text",
    [
        ("0", "0.00"),
        ("-0.00", "0.00"),
        ("0.5", "0.50"),
        ("-40", "-40.00"),
        ("999.99", "999.99"),
        ("1000", "1,000.00"),
        ("-1000.01", "-1,000.01"),
        ("1234567.89", "1,234,567.89"),
        ("-1234567.89", "-1,234,567.89"),
        ("999999999999999999.99", "999,999,999,999,999,999.99"),
        ("-9999999999999999999999999999.99", "-9,999,999,999,999,999,999,999,999,999.99"),
    ],
)
def test_format_money(amount, text):
    assert format_money(Decimal(amount)) == text


def test_negative_amounts_are_marked(app, client):
    seed(app, line(7, "-40.00", NOW, "refund"), line(7, "12.00", NOW - _MICRO, "buy"))

    page = get_page(client, "/users/7")

    assert '<data class="money negative" value="-40.00">-40.00</data>' in page
    assert '<data class="money" value="12.00">12.00</data>' in page


def test_every_input_has_a_label(client):
    page = get_page(client, "/users/1")

    for input_id in re.findall(r'<input id="([^"]+)"', page):
        assert f'<label for="{input_id}">' in page
