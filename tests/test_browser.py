"""The pages in a real browser: Debian's Chromium through Playwright, on the real subscriber
and web app (gunicorn), MariaDB and Redis (conftest's `system`; txstream.browsing).

Every page a test opens must log no console error but CSP reports (conftest's
`anonymous_page`). Select these tests with `pytest -m browser`.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import datetime, timedelta
from decimal import Decimal
from urllib.parse import urljoin, urlsplit

import pytest
from sqlalchemy import insert

import models
from tests.helpers import line
from txstream.browsing import DESKTOP, chart_drawing, fatal_console_messages, sign_in
from txstream.processes import wait_until
from txstream.times import format_time, utcnow

pytestmark = [pytest.mark.services, pytest.mark.browser]

LIVE = 2  # seconds: a new transaction is on the dashboard this soon, without a reload
HOSTILE = (
    "<script>window.__pwned=1</script>",
    '<img src=x onerror="window.__pwned=1">',
)


def new_user() -> int:
    """A user id no other test of the module uses."""
    return 1_000_000 + secrets.randbelow(1_000_000_000)


def lines_for(user_id: int, amounts: list[str]) -> list[str]:
    """Wire lines of `user_id`'s transactions, a second apart, the last one now."""
    now = utcnow()
    return [
        line(user_id, amount, now - timedelta(seconds=len(amounts) - 1 - i), f"b{user_id}-{i}")
        for i, amount in enumerate(amounts)
    ]


def api(page, system, path: str) -> dict:
    """GET `path` of the API with the system's bearer token."""
    headers = {"Authorization": f"Bearer {system.token}"}
    response = page.request.get(system.url + path, headers=headers)
    assert response.status == 200, response.text()
    return json.loads(response.text())


def wait_until_stored(page, system, user_id: int, count: int) -> dict:
    """The user's sum once the subscriber has stored `count` of their transactions."""

    def stored():
        found = api(page, system, f"/api/users/{user_id}/sum")
        return found if found["count"] == count else None

    return wait_until(stored, 20, f"{count} transactions of user {user_id} stored")


def test_sign_in_with_a_token(anonymous_page, system):
    page = anonymous_page
    page.goto(system.url + "/")
    assert page.url.startswith(system.url + "/login")  # pages need a session
    page.fill("#token", system.token)
    page.click("form.login button[type=submit]")
    page.wait_for_url(system.url + "/")
    assert page.locator("h1").inner_text() == "Console"
    assert page.locator("form.logout button").is_visible()


# `next` as it stands in a link to /login (the browser sends it, the app decodes it): ways
# that Werkzeug or a browser could turn into another site (issue 20: the tab did).
NASTY_NEXTS = (
    "/%09/evil.example/x",  # a tab: Werkzeug drops it, leaving //evil.example/x
    "/\\evil.example",  # a back-slash: browsers read /\ as //
    "//evil.example",  # scheme-relative
    "/%5Cevil.example",  # an encoded back-slash
    "https:evil.example",  # a scheme without slashes
    "/%0D%0A/evil.example",  # CR LF
    "%2F%2Fevil.example",  # encoded slashes
    "/%2F/evil.example",
    "///evil.example",
    "/.//evil.example",
    "/%20/evil.example",  # a space
    "/%E3%80%82/evil%EF%BC%8Eexample",  # full-width dots
)


def origin(url: str) -> tuple[str, str]:
    """(scheme, host:port) of `url`."""
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


@pytest.fixture
def page_without_csp(browser):
    """A new page that ignores the CSP: Chromium's form-action 'self' alone would stop a
    sign-in's redirect to another site, and not every browser does; the app must not ask."""
    context = browser.new_context(viewport=DESKTOP, bypass_csp=True)
    yield context.new_page()
    context.close()


def sign_in_from(page, url: str, token: str) -> str:
    """Open `url` (a /login link) and sign in with `token`: the URL the app's redirect
    sends the browser to, once loaded if it is on this site."""
    page.goto(url)
    page.fill("#token", token)
    with page.expect_response(lambda r: r.request.method == "POST") as answered:
        page.click("form.login button[type=submit]")
    response = answered.value
    assert response.status == 302, f"{response.status} {response.url}"
    target = urljoin(response.url, response.headers["location"])
    if origin(target) == origin(page.url):
        page.wait_for_url(target)
    return target


@pytest.mark.parametrize("nasty", NASTY_NEXTS)
def test_signing_in_never_leads_to_another_site(page_without_csp, system, nasty):
    page, elsewhere = page_without_csp, []
    page.on("request", lambda r: origin(r.url) != origin(system.url) and elsewhere.append(r.url))
    target = sign_in_from(page, f"{system.url}/login?next={nasty}", system.token)
    assert origin(target) == origin(page.url) == origin(system.url), target
    assert not elsewhere


def test_signing_in_goes_on_to_the_page_asked_for(anonymous_page, system):
    target = sign_in_from(anonymous_page, f"{system.url}/login?next=/users/7", system.token)
    assert target == anonymous_page.url == f"{system.url}/users/7"


def test_a_copy_of_the_session_cookie_is_no_use_after_signing_out(browser, system):
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        sign_in(page, system.url, system.token)
        assert page.locator("form.logout button").is_visible()
        cookies = context.cookies(system.url)
        assert cookies  # the session's
        page.click("form.logout button")
        page.wait_for_url(f"{system.url}/login")
    finally:
        context.close()
    replay = browser.new_context(viewport=DESKTOP)  # an attacker's, with the copied cookie
    try:
        replay.add_cookies(cookies)
        page = replay.new_page()
        page.goto(system.url + "/")
        assert urlsplit(page.url).path == "/login", page.url
        assert page.locator("form.logout").count() == 0
    finally:
        replay.close()


def test_a_wrong_token_is_refused(anonymous_page, system):
    page = anonymous_page
    page.goto(system.url + "/login")
    page.fill("#token", "txs_" + secrets.token_hex(20))
    page.click("form.login button[type=submit]")
    assert page.locator("#login-error").inner_text() == "That token is not valid."
    page.console.clear()  # Chromium logs the 401 of the refused sign-in itself
    page.goto(system.url + "/")
    assert page.url.startswith(system.url + "/login")
    assert page.locator("form.logout").count() == 0


def test_new_transactions_show_on_the_dashboard_as_stored_without_a_reload(page, system):
    page.goto(system.url + "/")
    page.evaluate("window.__same_page = true")
    user_id, now = new_user(), utcnow()
    # in the order stored, whatever their event time: one up to MAX_CLOCK_SKEW ahead does
    # not hold back the ones after it, and a late one shows too
    shifts = {"future": timedelta(hours=23), "late": -timedelta(days=30), "now": timedelta(0)}
    for name, shift in shifts.items():
        system.publish(line(user_id, "12.34", now + shift, f"b{user_id}-{name}"))
        row = page.locator(f'#live-transactions [data-txn-id="b{user_id}-{name}"]')
        row.wait_for(timeout=LIVE * 1000)
        assert str(user_id) in row.inner_text()
        assert row.locator("time").get_attribute("datetime") == format_time(now + shift)
    shown = page.locator("#live-rows tr").evaluate_all("rs => rs.map(r => r.dataset.txnId)")
    assert shown[:3] == [f"b{user_id}-{name}" for name in reversed(shifts)]  # newest on top
    assert page.evaluate("window.__same_page") is True  # no reload, no navigation

    page.reload()  # a page loaded after the future-dated one is live too
    system.publish(line(user_id, "1.00", utcnow(), f"b{user_id}-reloaded"))
    page.locator(f'#live-transactions [data-txn-id="b{user_id}-reloaded"]').wait_for(
        timeout=LIVE * 1000
    )


def test_a_transaction_committed_after_a_newer_one_shows_and_no_row_shows_twice(
    page, system, _mysql_database
):
    page.goto(system.url + "/")
    user_id, now = new_user(), utcnow()
    slow, fast = f"b{user_id}-slow", f"b{user_id}-fast"
    with _mysql_database.connect() as batch:  # another subscriber's: its id is handed out
        batch.execute(
            insert(models.transactions).values(
                txn_id=slow, user_id=user_id, amount=Decimal("1.00"), ts=now, received_at=now
            )
        )
        system.publish(line(user_id, "2.00", now, fast))  # a greater id, committed first
        page.locator(f'#live-transactions [data-txn-id="{fast}"]').wait_for(timeout=LIVE * 1000)
        for _ in range(2):  # answers that bring `fast` again, while `slow` may still come
            page.wait_for_event("response", lambda r: "/api/live" in r.url, timeout=LIVE * 1000)
        batch.commit()
    page.locator(f'#live-transactions [data-txn-id="{slow}"]').wait_for(timeout=LIVE * 1000)
    shown = page.locator("#live-rows tr").evaluate_all("rs => rs.map(r => r.dataset.txnId)")
    assert (shown.count(fast), shown.count(slow)) == (1, 1)


def test_a_position_the_app_refuses_is_dropped(page, system):
    def garbled(route):  # as a page made by another version of the app could hold
        response = route.fetch()
        body = re.sub(r'data-position="[^"]*"', 'data-position="not-a-position"', response.text())
        route.fulfill(response=response, body=body)

    page.route(system.url + "/", garbled)
    with page.expect_response(lambda r: "/api/live" in r.url and r.status == 400):
        page.goto(system.url + "/")
    user_id = new_user()
    system.publish(*lines_for(user_id, ["5.00"]))
    page.locator(f'#live-transactions [data-txn-id="b{user_id}-0"]').wait_for(timeout=LIVE * 1000)
    refused = fatal_console_messages(page.console)  # Chromium logs a refused request itself
    assert len(refused) == 1 and "after=not-a-position" in refused[0], refused  # once
    page.console.clear()


def test_the_user_page_shows_the_sum_of_the_api(page, system):
    user_id = new_user()
    amounts = ["10.10", "-3.05", "999999999.99", "0.01"]
    system.publish(*lines_for(user_id, amounts))
    expected = wait_until_stored(page, system, user_id, len(amounts))
    page.goto(f"{system.url}/users/{user_id}")
    assert page.locator("#period-count").inner_text() == str(expected["count"]) == "4"
    shown = page.locator("#period-sum").inner_text()
    assert shown == "1,000,000,007.05"  # as money: thousands separated
    assert Decimal(shown.replace(",", "")) == Decimal(expected["sum"]) == sum(map(Decimal, amounts))


def test_paging_through_a_users_transactions(page, system):
    user_id = new_user()
    total = 55  # more than a page (txstream.pages.PAGE_SIZE, 50)
    published = lines_for(user_id, [f"{i}.00" for i in range(1, total + 1)])
    system.publish(*published)
    wait_until_stored(page, system, user_id, total)
    page.goto(f"{system.url}/users/{user_id}")
    ids = page.locator("#transactions-table td.id")
    first = ids.all_inner_texts()
    assert first[0] == f"b{user_id}-{total - 1}"  # newest first
    page.click("#older-link")
    page.wait_for_url("**before=**")
    second = ids.all_inner_texts()
    assert len(first) == 50 and len(second) == total - 50
    assert first + second == [f"b{user_id}-{i}" for i in reversed(range(total))]
    assert page.locator("#older-link").count() == 0  # the last page


def test_hostile_dead_letters_are_shown_as_text(page, system):
    system.publish(*HOSTILE)
    page.goto(system.url + "/dead-letters")

    def shown() -> bool:
        texts = page.locator("pre.raw").all_inner_texts()
        if all(h in texts for h in HOSTILE):
            return True
        page.reload()
        return False

    wait_until(shown, 20, "the hostile dead letters on /dead-letters", interval=0.2)
    assert page.locator("pre.raw img, pre.raw script").count() == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"


CHARTS = {
    "blank canvas": ("<canvas id=c width=40 height=20></canvas>", "", 0, 0),
    "painted canvas": (
        "<canvas id=c width=40 height=20></canvas>",
        "document.getElementById('c').getContext('2d').fillRect(0, 0, 10, 20)",
        0,
        200,
    ),
    "svg with two bars": (
        "<svg id=c width=40 height=20><rect width=5 height=9 /><rect x=9 width=5 height=3 />"
        "<rect width=0 height=0 /></svg>",
        "",
        2,
        0,
    ),
}


@pytest.mark.parametrize("name", CHARTS)
def test_chart_drawing_sees_what_a_chart_drew(anonymous_page, name):
    # The helper that the dashboard's and the user page's chart tests use: no chart in the
    # app yet, so it is checked on charts made here.
    html, draw, shapes, painted = CHARTS[name]
    anonymous_page.set_content(html)
    if draw:
        anonymous_page.evaluate(draw)
    drawn = chart_drawing(anonymous_page, "#c")
    assert (drawn["shapes"], drawn["painted"]) == (shapes, painted)


def test_the_charts_draw_the_data_they_are_given(page, system):
    user_id = new_user()
    now = utcnow()
    amounts = {13: "100.00", 7: "-40.00", 0: "25.50"}  # hours ago: three 6-hour windows
    system.publish(
        *(line(user_id, a, now - timedelta(hours=h), f"c{user_id}-{h}") for h, a in amounts.items())
    )
    wait_until(
        lambda: api(page, system, f"/api/users/{user_id}/sum?hours=24")["count"] == 3,
        20,
        "3 transactions stored",
    )
    page.goto(f"{system.url}/users/{user_id}")
    bars = page.locator("#window-chart rect.bar")
    assert sorted(bars.evaluate_all("bs => bs.map(b => b.dataset.amount)")) == sorted(
        amounts.values()
    )
    assert page.locator("#window-chart rect.bar.negative").count() == 1
    assert chart_drawing(page, "#window-chart")["shapes"] >= 3

    page.goto(system.url + "/")

    def drawn_equals_served():  # the rate chart's bars carry what /api/live says was stored
        titles = page.locator("#rate-chart rect.bar title").evaluate_all(
            "ts => ts.map(t => t.textContent)"
        )
        drawn = sum(int(title.rsplit(": ", 1)[1].replace(",", "")) for title in titles)
        served = sum(p["stored"] for p in api(page, system, "/api/live")["rate"]["series"])
        return len(titles) == 90 and drawn == served >= 3

    wait_until(drawn_equals_served, 10, "the rate chart drawn from /api/live")


def test_pause_holds_new_rows_back_and_times_are_local_with_utc_on_hover(browser, system):
    context = browser.new_context(viewport=DESKTOP, timezone_id="Asia/Tokyo")  # UTC+9
    page = context.new_page()
    try:
        sign_in(page, system.url, system.token)
        toggle = page.locator("#live-toggle")
        toggle.press("Enter")  # a real button: the keyboard works it
        assert toggle.get_attribute("aria-pressed") == "true"
        assert page.locator("#live-state").get_attribute("data-state") == "paused"
        user_id = new_user()
        (published,) = lines_for(user_id, ["1.00"])
        system.publish(published)
        wait_until(
            lambda: api(page, system, f"/api/users/{user_id}/sum")["count"] == 1, 20, "stored"
        )
        row = page.locator(f'#live-transactions [data-txn-id="b{user_id}-0"]')
        page.wait_for_timeout(2 * LIVE * 1000)  # paused: nothing may arrive in this time
        assert row.count() == 0
        toggle.click()
        assert toggle.get_attribute("aria-pressed") == "false"
        row.wait_for(timeout=LIVE * 1000)
        shown = row.locator("time")
        utc = datetime.strptime(shown.get_attribute("datetime"), "%Y-%m-%dT%H:%M:%S.%fZ")
        assert shown.inner_text() == (utc + timedelta(hours=9)).strftime("%Y-%m-%d %H:%M:%S")
        assert shown.get_attribute("title").endswith(" UTC")
    finally:
        context.close()


@pytest.mark.parametrize("path", ["/", "/users/1", "/dead-letters", "/system"])
def test_the_pages_fit_a_phone(browser, system, path):
    context = browser.new_context(viewport={"width": 375, "height": 740})
    page = context.new_page()
    try:
        sign_in(page, system.url, system.token)
        page.goto(system.url + path)
        # Nothing wider than the screen: wide tables scroll inside their own box.
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
    finally:
        context.close()


def test_the_console_says_since_when_it_counts_what_redis_lost(page, system):
    """/api/live as after a loss of Redis's data: while it is rebuilt, then rebuilt."""
    since = "2026-11-29T10:00:00.000000Z"
    counts = {"since": {"duplicates": since, "dead_letters": None}, "rebuilding": True}

    def after_a_loss(route):
        body = route.fetch().json()
        body["counts"].update(counts)
        route.fulfill(json=body)

    page.route("**/api/live*", after_a_loss)
    page.goto(system.url + "/")
    notes = {name: page.locator(f"#count-{name}-note") for name in ("stored", "duplicates", "dead")}
    wait_until(lambda: notes["stored"].inner_text() == "rebuilding", LIVE, "rebuilding")
    assert notes["duplicates"].inner_text() == notes["dead"].inner_text() == "rebuilding"
    counts["rebuilding"] = False
    wait_until(lambda: notes["stored"].inner_text() == "", LIVE * 2, "rebuilt")
    shown = page.evaluate(f"window.txstream.formatTime({json.dumps(since)}).text")
    assert notes["duplicates"].inner_text() == f"since {shown}"
    assert notes["dead"].inner_text() == ""  # of all time
