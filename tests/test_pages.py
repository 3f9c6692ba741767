"""The HTML pages: what they show, their links, and their error pages."""

from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest
import redis

from tests.helpers import BIGGEST, line, seed
from txstream.pages import PAGE_SIZE
from txstream.times import format_time

_MICRO = timedelta(microseconds=1)


def get_page(client, path: str, status: int = 200, **params) -> str:
    """GET `path`; check the status and that the answer is HTML; return the text."""
    response = client.get(path, query_string=params or None)
    assert response.status_code == status
    assert response.mimetype == "text/html"
    return response.get_data(as_text=True)


def older_link(page: str) -> str | None:
    """The target of the page's "Older" link, if it has one."""
    match = re.search(r'<a [^>]*rel="next" href="([^"]+)">Older</a>', page)
    return html.unescape(match[1]) if match else None


def test_index_lists_the_latest_transactions_of_all_users(app, client):
    now = app.config["CLOCK"]()
    seed(app, line(11, "1234.50", now, "newest"), line(12, "-7.00", now - _MICRO, "older"))

    page = get_page(client, "/")

    assert page.index('<td class="id">newest</td>') < page.index('<td class="id">older</td>')
    assert '<a href="/users/11">11</a>' in page
    assert '<td class="num money" data-amount="1234.50">1234.50</td>' in page
    assert '<td class="num money negative" data-amount="-7.00">-7.00</td>' in page
    assert format_time(now) in page
    assert 'action="/users"' in page  # the jump-to-user form
    assert older_link(page) is None


@pytest.mark.parametrize("path", ["/", "/users/1"])
def test_older_link_pages_through_every_transaction(app, client, path):
    now = app.config["CLOCK"]()
    seed(app, *(line(1, "1.00", now - i * _MICRO, f"t{i:03d}") for i in range(PAGE_SIZE + 1)))

    first = get_page(client, path)
    target = older_link(first)
    second = get_page(client, target)

    assert "t000" in first and "t049" in first and "t050" not in first
    assert "t050" in second and "t049" not in second
    assert older_link(second) is None


def test_user_page_shows_sum_recent_list_and_windows(app, client):
    now = app.config["CLOCK"]()
    seed(
        app,
        *(line(5, BIGGEST, now - i * timedelta(minutes=1), f"recent-{i}") for i in range(6)),
        line(5, "100.00", now - timedelta(hours=6), "outside-the-sum"),
        line(6, "3.00", now, "other-user"),
    )

    page = get_page(client, "/users/5")

    assert "<h1>User 5</h1>" in page
    assert '<dd id="period-count" class="num">6</dd>' in page
    assert 'value="5999999999999999999.94">5,999,999,999,999,999,999.94</data>' in page
    recent = page.split(">Recent 5</h2>")[1].split("<h2")[0]
    assert re.findall(r"recent-\d", recent) == [f"recent-{i}" for i in range(5)]
    assert "outside-the-sum" in page  # in the full list
    assert "other-user" not in page
    windows = page.split("window</h2>")[1]
    starts = re.findall(r'<tr>\s*<td class="time"><time datetime="([^"]+)"', windows)
    assert starts == [format_time(now), format_time(now - timedelta(hours=6))]
    # 12:00-18:00 holds recent-0; 06:00-12:00 the other five and the one at 06:00.
    assert f'value="{BIGGEST}">999,999,999,999,999,999.99</data>' in windows
    assert 'value="5000000000000000099.95">5,000,000,000,000,000,099.95</data>' in windows


def test_user_page_without_redis_still_shows_the_database_parts(app, client, closed_port):
    seed(app, line(5, "12.34", app.config["CLOCK"](), "stored-one"))
    app.config["REDIS"] = redis.Redis.from_url(f"redis://127.0.0.1:{closed_port}/0")

    page = get_page(client, "/users/5")

    assert "Unavailable: Redis is not answering." in page
    assert "stored-one" in page and 'value="12.34">12.34</data></dd>' in page


def test_jump_form_redirects_to_the_user_page(client):
    response = client.get("/users", query_string={"user_id": "42"})

    assert response.status_code == 302
    assert response.headers["Location"] == "/users/42"


@pytest.mark.parametrize(
    "path, params",
    [
        ("/users/abc", {}),
        ("/users/0", {}),
        ("/users", {"user_id": "x"}),
        ("/users", {}),
        ("/", {"before": "not-a-cursor"}),
        ("/users/1", {"before": "!"}),
    ],
)
def test_bad_input_is_a_400_page(client, path, params):
    page = get_page(client, path, status=400, **params)

    assert "<h1>400 Bad Request</h1>" in page
    assert re.search(r'<p class="error">(user_id|before) ', page)


def test_error_page_escapes_the_input(client):
    page = get_page(client, "/users/<b>x", status=400)

    assert "&lt;b&gt;x" in page
    assert "<b>x" not in page


def test_unknown_page_is_a_404_page(client):
    page = get_page(client, "/no/such/page", status=404)

    assert "<h1>404 Not Found</h1>" in page


def test_wrong_method_is_a_405_page(client):
    response = client.post("/")

    assert response.status_code == 405
    assert response.mimetype == "text/html"
    assert "<h1>405 Method Not Allowed</h1>" in response.get_data(as_text=True)
