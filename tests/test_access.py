"""Who may read: bearer tokens on the API, a signed-in session on the pages, rate limits,
and what every response tells browsers."""

from __future__ import annotations

import hashlib
import io
import logging
import re
import secrets
from datetime import datetime, timedelta
from urllib.parse import urljoin, urlsplit

import pytest
import redis
import sqlalchemy
from sqlalchemy import select

import config
import models
from tests.helpers import (
    TEST_DATABASE_URL,
    TEST_REDIS_URL,
    TEST_SECRET_KEY,
    sign_in,
    signed_in_client,
)
from txstream import access, tokens
from txstream.keys import Keys
from txstream.rebuild_redis import RedisRebuild

PAGES = ["/", "/users/1", "/users?user_id=1"]


def make_app(backend, key_prefix, **settings):
    """The web app on `backend`, with this test's Redis keys and `settings` on top."""
    from app import create_app  # here, not at the top: importing `app` builds an app

    engine, client = backend
    base = {"TESTING": True, "ENGINE": engine, "REDIS": client, "KEY_PREFIX": key_prefix}
    return create_app({**base, "SECRET_KEY": TEST_SECRET_KEY, **settings})


@pytest.fixture
def app(backend, key_prefix):
    """The web app, with tokens required, on each backend."""
    return make_app(backend, key_prefix)


def create_token(app, name: str) -> str:
    """`flask --app app create-token NAME`; the token from its last line."""
    result = app.test_cli_runner().invoke(args=["create-token", name])
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# --- the API ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "invalid"),
    [
        (None, False),
        ("", False),
        ("Basic dXNlcjpwYXNz", False),
        ("Bearer", False),
        ("Bearer not-a-token", True),
        ("Bearer txs_" + "A" * 43, True),  # the form of one, but never made
        ("Bearer " + "x" * 10_000, True),
    ],
    ids=["none", "empty", "basic", "no-token", "garbage", "unknown", "huge"],
)
def test_the_api_refuses_requests_without_a_valid_token(anonymous, header, invalid):
    headers = {} if header is None else {"Authorization": header}
    response = anonymous.get("/api/users/1/sum", headers=headers)
    assert response.status_code == 401
    assert response.is_json and response.get_json()["error"]
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert ('error="invalid_token"' in challenge) == invalid


def test_a_token_made_by_the_command_opens_the_api(app, anonymous):
    token = create_token(app, "analyst")
    assert re.fullmatch(r"txs_[A-Za-z0-9_-]{43}", token)
    assert anonymous.get("/api/users/1/sum", headers=bearer(token)).status_code == 200
    assert anonymous.get("/api/transactions", headers=bearer(token.lower())).status_code == 401


def test_only_a_hash_of_a_token_is_stored(app):
    token = create_token(app, "stored")
    with app.config["ENGINE"].connect() as conn:
        rows = conn.execute(select(models.api_tokens)).mappings().all()
    assert [row["token_hash"] for row in rows] == [tokens.hash_of(token)]
    assert token not in str(rows)


def test_tokens_are_listed_without_their_secret_and_revoked(app, anonymous, caplog):
    token = create_token(app, "ci-bot")
    anonymous.get("/api/transactions", headers=bearer(token))
    listed = app.test_cli_runner().invoke(args=["list-tokens"]).output
    assert re.search(r"^ci-bot\tcreated \S+Z\tlast used \S+Z$", listed, re.M)
    assert token not in listed and token not in caplog.text
    revoked = app.test_cli_runner().invoke(args=["revoke-token", "ci-bot"])
    assert revoked.exit_code == 0 and "Revoked token 'ci-bot'" in revoked.output
    assert anonymous.get("/api/transactions", headers=bearer(token)).status_code == 401
    again = app.test_cli_runner().invoke(args=["revoke-token", "ci-bot"])
    assert again.exit_code != 0 and "no token called 'ci-bot'" in again.output


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "ümlaut", "semi;colon"])
def test_a_token_name_must_be_plain(app, name):
    result = app.test_cli_runner().invoke(args=["create-token", name])
    assert result.exit_code != 0 and "a token name is 1-64 characters" in result.output


def test_a_token_name_is_taken_once(app):
    create_token(app, "twice")
    result = app.test_cli_runner().invoke(args=["create-token", "twice"])
    assert result.exit_code != 0 and "exists already" in result.output


def test_healthz_needs_no_token(anonymous):
    response = anonymous.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"redis": "ok", "database": "ok"}


# --- the pages ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
def test_a_page_without_a_session_redirects_to_the_login_and_shows_no_data(anonymous, path):
    response = anonymous.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")
    assert b"<table" not in response.data


def login_form(client, path: str = "/login") -> dict:
    """The login page's hidden fields."""
    page = client.get(path).get_data(as_text=True)
    assert 'name="token"' in page
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', page))


def test_signing_in_with_a_token_opens_the_pages_until_signing_out(app, anonymous):
    token = create_token(app, "person")
    fields = login_form(anonymous, "/login?next=/users/7")
    response = anonymous.post("/login", data={**fields, "token": token})
    assert response.status_code == 302 and response.headers["Location"] == "/users/7"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert token not in cookie
    assert anonymous.get("/").status_code == 200
    page = anonymous.get("/").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert anonymous.post("/logout", data={"csrf": csrf}).status_code == 302
    assert anonymous.get("/").status_code == 302


def test_the_session_cookie_is_secure_over_https(app):
    client = app.test_client()
    token = create_token(app, "https-user")
    base = "https://localhost"
    fields = login_form(client, base + "/login")
    response = client.post(base + "/login", data={**fields, "token": token})
    assert "Secure" in response.headers["Set-Cookie"]


def test_a_wrong_token_does_not_sign_in(anonymous):
    fields = login_form(anonymous)
    response = anonymous.post("/login", data={**fields, "token": "txs_" + "B" * 43})
    assert response.status_code == 401
    assert "That token is not valid" in response.get_data(as_text=True)
    assert anonymous.get("/").status_code == 302


@pytest.mark.parametrize("csrf", [None, "", "forged"])
def test_forms_without_their_csrf_token_are_refused(app, anonymous, csrf):
    token = create_token(app, "csrf-victim")
    login_form(anonymous)  # the session has its CSRF token now; the posts below lack it
    form = {} if csrf is None else {"csrf": csrf}
    assert anonymous.post("/login", data={**form, "token": token}).status_code == 400
    assert anonymous.get("/").status_code == 302  # not signed in
    signed_in = signed_in_client(app)
    assert signed_in.post("/logout", data=form).status_code == 400
    assert signed_in.get("/").status_code == 200  # still signed in


def test_revoking_a_token_ends_its_sessions(app):
    client = signed_in_client(app)
    assert client.get("/").status_code == 200
    (name,) = [t.name for t in tokens.listed(app.config["ENGINE"])]
    tokens.revoke(app.config["ENGINE"], name)
    assert client.get("/").status_code == 302


def test_a_form_posted_without_a_session_csrf_value_is_refused(app, anonymous):
    """Login CSRF: a cross-site POST carries no cookie, so no session's CSRF value to match."""
    token = create_token(app, "attacker")
    for csrf in ("x", "", "é"):
        assert anonymous.post("/login", data={"csrf": csrf, "token": token}).status_code == 400
    assert anonymous.get("/").status_code == 302  # not signed in
    signed_in = signed_in_client(app)  # a session, but one without a CSRF value
    assert signed_in.post("/logout", data={"csrf": "x"}).status_code == 400
    assert signed_in.get("/").status_code == 200  # still signed in


# --- sessions ------------------------------------------------------------------------------


def session_cookie(client) -> str | None:
    cookie = client.get_cookie(access.SESSION_COOKIE)
    return cookie.value if cookie is not None else None


def session_rows(app) -> list:
    with app.config["ENGINE"].connect() as conn:
        return conn.execute(sqlalchemy.select(models.web_sessions)).all()


def test_the_cookie_holds_only_a_random_id_and_the_table_only_its_hash(app, anonymous):
    token = create_token(app, "cookie")
    sign_in(anonymous, token)
    cookie = session_cookie(anonymous)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", cookie)  # 256 random bits, nothing else
    assert tokens.hash_of(token) not in cookie and token not in cookie
    (row,) = session_rows(app)
    assert row.id_hash == hashlib.sha256(cookie.encode()).hexdigest()
    assert cookie not in repr(row) and token not in repr(row)


def test_signing_out_ends_the_session_for_every_copy_of_its_cookie(app):
    """The stolen copy of a cookie opens nothing once its owner has signed out."""
    client = sign_in(app.test_client(), create_token(app, "owner"))
    copy = app.test_client()
    copy.set_cookie(access.SESSION_COOKIE, session_cookie(client))
    assert copy.get("/").status_code == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/").get_data(as_text=True))[1]
    assert client.post("/logout", data={"csrf": csrf}).status_code == 302
    assert session_cookie(client) is None  # the browser is told to drop it
    assert session_rows(app) == []
    assert copy.get("/").status_code == 302
    assert copy.get("/api/users/1/sum").status_code == 401


def test_revoking_a_token_deletes_its_sessions_and_no_other(app):
    revoked, kept = sign_in(app.test_client(), create_token(app, "revoked")), None
    kept = sign_in(app.test_client(), create_token(app, "kept"))
    sign_in(app.test_client(), create_token(app, "revoked-2"))
    result = app.test_cli_runner().invoke(args=["revoke-token", "revoked"])
    assert result.exit_code == 0, result.output
    assert revoked.get("/").status_code == 302
    assert revoked.get("/api/users/1/sum").status_code == 401
    assert kept.get("/").status_code == 200
    assert len(session_rows(app)) == 2


class Clock:
    """A clock the test moves: the app's CLOCK."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 8, 9, 0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def test_a_session_ends_after_its_idle_timeout_unless_used(backend, key_prefix):
    clock = Clock()
    app = make_app(backend, key_prefix, CLOCK=clock, SESSION_IDLE_TIMEOUT=60)
    client = sign_in(app.test_client(), create_token(app, "idle"))
    for _ in range(5):  # used every 50 s: 250 s in all, more than 60
        clock.advance(50)
        assert client.get("/api/users/1/sum").status_code == 200
    clock.advance(59)
    assert client.get("/").status_code == 200
    clock.advance(61)
    assert client.get("/").status_code == 302
    assert client.get("/api/users/1/sum").status_code == 401


def test_a_session_ends_after_its_lifetime_however_much_it_is_used(backend, key_prefix):
    clock = Clock()
    app = make_app(backend, key_prefix, CLOCK=clock, SESSION_IDLE_TIMEOUT=60, SESSION_LIFETIME=300)
    client = sign_in(app.test_client(), create_token(app, "busy"))
    for _ in range(5):
        clock.advance(59)
        assert client.get("/").status_code == 200
    clock.advance(5)  # 300 s after the sign-in
    assert client.get("/").status_code == 302
    sign_in(client, create_token(app, "busy-again"))  # signing in again opens a new one
    assert client.get("/").status_code == 200


def test_sessions_that_ended_leave_the_table_at_the_next_sign_in(backend, key_prefix):
    clock = Clock()
    app = make_app(backend, key_prefix, CLOCK=clock, SESSION_IDLE_TIMEOUT=60)
    token = create_token(app, "many")
    for _ in range(3):
        sign_in(app.test_client(), token)
    clock.advance(61)
    sign_in(app.test_client(), token)
    assert len(session_rows(app)) == 1


def test_signing_in_again_ends_the_browsers_previous_session(app):
    client = sign_in(app.test_client(), create_token(app, "first"))
    before = session_cookie(client)
    sign_in(client, create_token(app, "second"))
    assert session_cookie(client) != before
    assert len(session_rows(app)) == 1
    stale = app.test_client()
    stale.set_cookie(access.SESSION_COOKIE, before)
    assert stale.get("/").status_code == 302


@pytest.mark.parametrize("cookie", ["x", "A" * 43, "A" * 3000, "é", ""])
def test_an_unknown_session_cookie_signs_in_nobody_and_is_dropped(app, anonymous, cookie):
    anonymous.set_cookie(access.SESSION_COOKIE, cookie)
    response = anonymous.get("/users/1")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert anonymous.get("/api/users/1/sum").status_code == 401
    if cookie:
        assert session_cookie(anonymous) is None


def test_a_session_is_kept_in_the_database_so_redis_down_does_not_sign_out(app, closed_port):
    """A signed-in operator still sees the System page, which says Redis is down."""
    client = sign_in(app.test_client(), create_token(app, "operator"))
    app.config["REDIS"] = redis.Redis(port=closed_port, socket_connect_timeout=1)
    page = client.get("/system")
    assert page.status_code == 200
    assert '<th>Redis</th><td class="down">down</td>' in page.get_data(as_text=True)


def test_the_sign_in_forms_cookie_is_signed(app, anonymous):
    """A CSRF cookie planted by a neighbouring site (same domain) does not match a form."""
    token = create_token(app, "planted")
    anonymous.set_cookie(access.LOGIN_COOKIE, "chosen", path="/login")
    response = anonymous.post("/login", data={"csrf": "chosen", "token": token})
    assert response.status_code == 400
    assert anonymous.get("/").status_code == 302


def test_flask_s_own_session_cookie_is_neither_read_nor_written(app, anonymous):
    """The session of before this change (a signed cookie with the token's hash) opens
    nothing, and no answer sets one."""
    anonymous.set_cookie("session", "eyJ0b2tlbl9oYXNoIjoiYWJjIn0.forged.sig")
    assert anonymous.get("/").status_code == 302
    sign_in(anonymous, create_token(app, "plain"))
    assert anonymous.get_cookie("session").value.startswith("eyJ")  # untouched, unused


OTHER_HOSTS = [
    "//evil.example/x",
    "https://evil.example/",
    "/\\evil.example",
    "javascript:x",
    "/\t/evil.example/phish",
    "/\r/evil.example",
    "/\n/evil.example",
    "/users/7\r\nLocation: //evil.example",
    "/\x0b/evil.example",
    "/\x00/evil.example",
    " //evil.example",
    "/ /evil.example",
    "\t//evil.example",
    "\\\\evil.example",
    "/\\/evil.example",
    "%2F%2Fevil.example",
    "http:evil.example",
    "http:/evil.example",
    "https:\\\\evil.example",
    "///evil.example",
    "/.//evil.example",
    "/..//evil.example",
    "/x/..//evil.example",
    "//evil\uff0eexample",
    "/\uff0f/evil.example",
    "/\uff0e\uff0e/evil.example",
]
SAME_SITE = ["/users/7", "/users?user_id=1", "/%2F/evil.example", "/%5Cevil.example", "/%09/x"]


@pytest.mark.parametrize("target", OTHER_HOSTS + SAME_SITE)
def test_signing_in_never_redirects_to_another_host(app, anonymous, target):
    token = create_token(app, "redirected")
    fields = login_form(anonymous)
    response = anonymous.post("/login", data={**fields, "token": token, "next": target})
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location == (target if target in SAME_SITE else "/")
    followed = urlsplit(urljoin("http://testserver/", location))  # as a browser resolves it
    assert (followed.scheme, followed.netloc) == ("http", "testserver")


def test_untrusted_host_headers_are_refused(app, client):
    app.config["TRUSTED_HOSTS"] = ["txstream.bank.example"]
    assert client.get("/healthz", headers={"Host": "evil.example"}).status_code == 400
    assert client.get("/healthz", headers={"Host": "txstream.bank.example"}).status_code == 200


@pytest.mark.parametrize(
    ("path", "location"),
    [("/users//1", "/users/1"), ("/api//transactions?limit=2", "/api/transactions?limit=2")],
)
def test_redirects_never_name_the_requests_host(anonymous, path, location):
    response = anonymous.get(path, headers={"Host": "evil.example"})
    assert response.status_code == 308
    assert response.headers["Location"] == location


# --- request bodies ------------------------------------------------------------------------


class _Unreadable(io.RawIOBase):
    """A request body that fails the test if anything reads it."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        raise AssertionError("the body was read")


@pytest.mark.parametrize(("path", "json"), [("/login", False), ("/api/transactions", True)])
def test_a_body_declared_too_long_is_refused_unread(app, anonymous, path, json):
    limit = app.config["MAX_CONTENT_LENGTH"]
    assert limit == config.Settings().max_content_length == 64 * 1024
    response = anonymous.post(
        path,
        content_type="application/x-www-form-urlencoded",
        environ_overrides={"wsgi.input": _Unreadable(), "CONTENT_LENGTH": str(limit + 1)},
    )
    assert response.status_code == 413
    assert response.is_json == json
    assert f"{limit} bytes at most" in response.get_data(as_text=True)


def chunked(client, body: bytes):
    """POST `body` to /login as a chunked body that the server has dechunked (gunicorn)."""
    environ = {"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True}
    headers = {"Transfer-Encoding": "chunked"}
    form = "application/x-www-form-urlencoded"
    return client.post("/login", content_type=form, headers=headers, environ_overrides=environ)


def test_a_chunked_body_is_refused_past_the_limit_and_read_within_it(app, anonymous):
    limit = app.config["MAX_CONTENT_LENGTH"]
    response = chunked(anonymous, b"token=" + b"A" * limit)
    assert response.status_code == 413
    csrf = login_form(anonymous)["csrf"]
    body = f"csrf={csrf}&token=x&next=".encode()
    assert chunked(anonymous, body.ljust(limit, b"A")).status_code == 401  # read whole


def test_a_body_within_the_limit_is_read(app, anonymous):
    fields = login_form(anonymous)
    padding = "A" * (app.config["MAX_CONTENT_LENGTH"] // 2)
    response = anonymous.post("/login", data={**fields, "token": "x", "next": padding})
    assert response.status_code == 401


# --- the API with a page session ---------------------------------------------------------


def session_client(app, token: str):
    """A client of `app` signed in to the pages with `token`, sending no Authorization."""
    return sign_in(app.test_client(), token)


def with_a_post_route(app):
    """`app` with an API route that takes POST as well as GET (the API has none yet)."""
    app.add_url_rule(
        "/api/test-write", "test_write", lambda: {"done": True}, methods=["GET", "POST"]
    )
    return app


@pytest.mark.parametrize("path", ["/api/users/1/sum", "/api/transactions", "/api/dead-letters"])
def test_a_page_session_reads_the_api(app, path):
    client = session_client(app, create_token(app, "console"))
    assert client.get(path).status_code == 200
    assert client.head(path).status_code == 200
    assert app.test_client().get(path).status_code == 401  # without the session


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_a_page_session_cannot_do_more_than_read_the_api(app, method):
    token = create_token(with_a_post_route(app), "console")
    client = session_client(app, token)
    assert client.get("/api/test-write").status_code == 200
    refused = client.open("/api/test-write", method=method)
    assert refused.status_code in (401, 405)
    if method == "POST":
        assert refused.status_code == 401 and "GET and HEAD only" in refused.get_json()["error"]
        with_token = client.post("/api/test-write", headers=bearer(token))
        assert with_token.status_code == 200  # the bearer token may


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_a_page_session_reads_the_api_from_this_site_only(app, site):
    client = session_client(app, create_token(app, "console"))
    refused = client.get("/api/users/1/sum", headers={"Sec-Fetch-Site": site})
    assert refused.status_code == 401 and "from this site only" in refused.get_json()["error"]
    for own in ("same-origin", "none"):
        assert client.get("/api/users/1/sum", headers={"Sec-Fetch-Site": own}).status_code == 200


def test_a_revoked_tokens_session_cannot_read_the_api(app):
    client = session_client(app, create_token(app, "leaked"))
    assert client.get("/api/users/1/recent").status_code == 200  # and now cached
    revoked = app.test_cli_runner().invoke(args=["revoke-token", "leaked"])
    assert revoked.exit_code == 0, revoked.output
    refused = client.get("/api/users/1/recent")
    assert refused.status_code == 401 and "sign in again" in refused.get_json()["error"]


def test_a_page_sessions_api_requests_count_against_its_tokens_rate_limit(backend, key_prefix):
    app = make_app(backend, key_prefix, RATE_LIMIT="3/minute")
    token = create_token(app, "console")
    client = session_client(app, token)
    assert [client.get("/api/users/1/sum").status_code for _ in range(2)] == [200, 200]
    assert app.test_client().get("/api/users/1/sum", headers=bearer(token)).status_code == 200
    assert client.get("/api/users/1/sum").status_code == 429
    other = session_client(app, create_token(app, "other"))
    assert other.get("/api/users/1/sum").status_code == 200


# --- without auth, and the settings ---------------------------------------------------------


def test_auth_off_opens_everything_and_warns_at_start(backend, key_prefix, caplog):
    with caplog.at_level(logging.WARNING):
        app = make_app(backend, key_prefix, AUTH=False, SECRET_KEY=None)
    assert "AUTH=off" in caplog.text
    client = app.test_client()
    assert client.get("/api/users/1/sum").status_code == 200
    assert client.get("/").status_code == 200


def test_the_app_will_not_start_with_auth_and_no_secret_key(backend, key_prefix):
    with pytest.raises(config.ConfigError, match="SECRET_KEY must be set"):
        make_app(backend, key_prefix, SECRET_KEY="")


@pytest.mark.parametrize("value", ["sometimes", "ON ", "1"])
def test_auth_takes_on_or_off_only(value):
    with pytest.raises(config.ConfigError, match="AUTH must be one of on, off"):
        config.load({"AUTH": value})


@pytest.mark.parametrize("value", ["lots", "10/fortnight", "-1/minute"])
def test_rate_limit_must_be_in_its_notation(value):
    with pytest.raises(config.ConfigError, match="RATE_LIMIT"):
        config.load({"RATE_LIMIT": value})


# --- the token cache: a revocation is seen on the next request, in every process ------------


def cached(app, token: str):
    """A client of `app` with `token`, which `app` has now cached: it answers a Redis-only
    request with no database at all."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    assert [client.get("/api/users/1/sum").status_code for _ in range(2)] == [200, 200]
    engine = app.config["ENGINE"]
    # As once a subscriber has checked Redis's derived state: /recent then reads Redis only.
    RedisRebuild(engine, app.config["REDIS"], app.config["KEYS"], "tests").check()
    app.config["ENGINE"] = models.make_engine("mysql+pymysql://root@127.0.0.1:1/unreachable")
    try:
        assert client.get("/api/users/1/recent").status_code == 200
    finally:
        app.config["ENGINE"].dispose()
        app.config["ENGINE"] = engine
    return client


def test_a_checked_token_is_cached(backend, key_prefix):
    app = make_app(backend, key_prefix)
    cached(app, create_token(app, "cached"))  # fails unless the second request was cached


def test_a_revoked_token_fails_on_the_next_request_of_every_app(backend, key_prefix):
    first, second = make_app(backend, key_prefix), make_app(backend, key_prefix)
    token = create_token(first, "leaked")
    clients = [cached(first, token), cached(second, token)]
    revoked = (
        make_app(backend, key_prefix).test_cli_runner().invoke(args=["revoke-token", "leaked"])
    )
    assert revoked.exit_code == 0, revoked.output
    assert [c.get("/api/users/1/recent").status_code for c in clients] == [401, 401]


@pytest.mark.services
def test_a_token_revoked_by_another_process_fails_on_the_next_request(
    mysql_engine, redis_client, key_prefix, run
):
    apps = [make_app((mysql_engine, redis_client), key_prefix) for _ in range(2)]
    token = create_token(apps[0], "leaked")
    clients = [cached(app, token) for app in apps]
    env = {"DATABASE_URL": TEST_DATABASE_URL, "REDIS_URL": TEST_REDIS_URL}
    env |= {"KEY_PREFIX": key_prefix, "SECRET_KEY": TEST_SECRET_KEY}
    revoke = run("-m", "flask", "--app", "app", "revoke-token", "leaked", env=env)
    revoke.wait_ok()
    assert [c.get("/api/users/1/recent").status_code for c in clients] == [401, 401]


def test_the_cache_never_takes_an_unknown_or_revoked_token(backend, key_prefix):
    app = make_app(backend, key_prefix)
    kept, revoked = create_token(app, "kept"), create_token(app, "revoked")
    cached(app, kept), cached(app, revoked)
    unknown = "txs_" + kept[4:-1] + ("A" if kept[-1] != "A" else "B")
    assert app.test_client().get("/api/users/1/sum", headers=bearer(unknown)).status_code == 401
    tokens.revoke(app.config["ENGINE"], "revoked")
    tokens.announce_revocation(backend[1], Keys(key_prefix))
    answers = [
        app.test_client().get("/api/users/1/recent", headers=bearer(t)) for t in (revoked, kept)
    ]
    assert [a.status_code for a in answers] == [401, 200]


def test_a_redis_that_lost_the_revocation_epoch_empties_the_caches(backend, key_prefix):
    """Redis restarted without its data: the epoch is new, so nothing cached is trusted."""
    app = make_app(backend, key_prefix)
    client = cached(app, create_token(app, "lost"))
    tokens.revoke(app.config["ENGINE"], "lost")  # and Redis was never told...
    backend[1].delete(Keys(key_prefix).token_epoch)  # ...but it lost its data
    assert client.get("/api/users/1/recent").status_code == 401


def test_revoking_with_redis_down_revokes_and_says_what_is_left(backend, key_prefix, closed_port):
    app = make_app(backend, key_prefix)
    client = cached(app, create_token(app, "revoked"))
    down = make_app(backend, key_prefix, REDIS=redis.Redis(port=closed_port))
    result = down.test_cli_runner().invoke(args=["revoke-token", "revoked"])
    assert result.exit_code != 0
    assert "Revoked token 'revoked' in the database, but Redis could not be told" in result.output
    assert "run it again" in result.output
    assert tokens.listed(app.config["ENGINE"]) == []
    again = app.test_cli_runner().invoke(args=["revoke-token", "revoked"])  # Redis is back
    assert again.exit_code != 0 and "no token called 'revoked'" in again.output
    assert client.get("/api/users/1/recent").status_code == 401


def test_a_cached_token_is_checked_in_the_database_again_after_a_minute(
    backend, key_prefix, monkeypatch
):
    """So that `last_used_at` is kept (written at most once a minute)."""
    app = make_app(backend, key_prefix)
    client = cached(app, create_token(app, "used"))
    clock = tokens.time.monotonic() + tokens.LAST_USED_EVERY.total_seconds()
    monkeypatch.setattr(tokens.time, "monotonic", lambda: clock)
    app.config["ENGINE"] = models.make_engine("mysql+pymysql://root@127.0.0.1:1/unreachable")
    assert client.get("/api/users/1/recent").status_code == 503
    app.config["ENGINE"].dispose()


# --- rate limits ----------------------------------------------------------------------------


def test_each_token_has_its_own_rate_limit(backend, key_prefix):
    app = make_app(backend, key_prefix, RATE_LIMIT="3/minute")
    first, second = signed_in_client(app), signed_in_client(app)
    assert [first.get("/api/users/1/sum").status_code for _ in range(3)] == [200] * 3
    refused = first.get("/api/users/1/sum")
    assert refused.status_code == 429
    assert refused.is_json and "too many requests" in refused.get_json()["error"]
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert second.get("/api/users/1/sum").status_code == 200
    assert first.get("/healthz").status_code == 200  # not limited
    assert backend[1].keys(f"{key_prefix}ratelimit*")


@pytest.mark.parametrize("limit", ["3/minute", "100/second;3/minute", "3/hour;1000/day"])
def test_a_rate_limit_is_shared_by_every_app(backend, key_prefix, limit):
    """Two gunicorn workers are two apps: they count a token's requests together."""
    first, second = (make_app(backend, key_prefix, RATE_LIMIT=limit) for _ in range(2))
    token = create_token(first, "shared")
    clients = [app.test_client() for app in (first, second, first, second)]
    answers = [c.get("/api/users/1/sum", headers=bearer(token)) for c in clients]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert "at most 3 per 1" in answers[-1].get_json()["error"]


def test_without_a_token_the_rate_limit_counts_per_address(backend, key_prefix):
    app = make_app(backend, key_prefix, RATE_LIMIT="2/minute", AUTH=False)
    client = app.test_client()
    answers = [client.get("/api/users/1/sum").status_code for _ in range(3)]
    assert answers == [200, 200, 429]
    assert app.test_client().get("/api/openapi.json").status_code == 429  # the same address


# --- failed authentication: limited per client address -------------------------------------


def wrong_token() -> str:
    """A token of the right form that was never made."""
    return tokens.PREFIX + secrets.token_urlsafe(32)


def from_address(app, address: str):
    """A test client of `app` whose requests come from `address`."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def test_wrong_tokens_get_429_after_the_address_limit_but_checked_tokens_are_served(
    backend, key_prefix
):
    """The address's failures are limited, not its valid users: a token this worker has
    checked is still served; one it has not is refused without a database query until the
    window ends, and other addresses are not affected."""
    app = make_app(backend, key_prefix, AUTH_FAIL_LIMIT="3/minute")
    valid, later = create_token(app, "valid"), create_token(app, "later")
    attacker = from_address(app, "10.0.0.1")
    checked = [attacker.get("/api/users/1/sum", headers=bearer(valid)) for _ in range(2)]
    assert [a.status_code for a in checked] == [200, 200]  # and cached (`cached`)
    answers = [attacker.get("/api/users/1/sum", headers=bearer(wrong_token())) for _ in range(5)]
    assert [a.status_code for a in answers] == [401, 401, 401, 429, 429]
    assert 0 < int(answers[-1].headers["Retry-After"]) <= 60
    assert "at most 3 per 1 minute" in answers[-1].get_json()["error"]
    assert attacker.get("/api/users/1/sum", headers=bearer(valid)).status_code == 200
    assert attacker.get("/api/users/1/sum", headers=bearer(later)).status_code == 429
    assert attacker.get("/api/users/1/sum", headers=bearer("not-a-token")).status_code == 429
    other = from_address(app, "10.0.0.2")
    assert other.get("/api/users/1/sum", headers=bearer(later)).status_code == 200
    assert other.get("/api/users/1/sum", headers=bearer(wrong_token())).status_code == 401


def test_the_failure_limit_is_shared_by_every_app(backend, key_prefix):
    """Two gunicorn workers count an address's failures together."""
    apps = [make_app(backend, key_prefix, AUTH_FAIL_LIMIT="2/minute") for _ in range(2)]
    clients = [from_address(app, "10.0.0.3") for app in (*apps, *apps)]
    answers = [c.get("/api/users/1/sum", headers=bearer(wrong_token())) for c in clients]
    assert [a.status_code for a in answers] == [401, 401, 429, 429]


def test_failed_sign_ins_get_429_after_the_address_limit(backend, key_prefix):
    app = make_app(backend, key_prefix, AUTH_FAIL_LIMIT="2/minute")
    token = create_token(app, "person")
    client = from_address(app, "10.0.0.4")
    fields = login_form(client)
    answers = [client.post("/login", data={**fields, "token": wrong_token()}) for _ in range(3)]
    assert [a.status_code for a in answers] == [401, 401, 429]
    assert int(answers[-1].headers["Retry-After"]) > 0
    assert client.post("/login", data={**fields, "token": token}).status_code == 429
    other = from_address(app, "10.0.0.5")
    assert other.post("/login", data={**login_form(other), "token": token}).status_code == 302


def test_a_sign_in_over_the_limit_answers_the_login_page_and_the_api_json(backend, key_prefix):
    """A person signing in reads why and for how long (the third wrong token, then even a
    valid one); an API client still gets JSON."""
    app = make_app(backend, key_prefix, AUTH_FAIL_LIMIT="2/minute")
    token = create_token(app, "person")
    client = from_address(app, "10.0.0.7")
    fields = login_form(client, "/login?next=/users/7")
    sent = [wrong_token(), wrong_token(), wrong_token(), token]
    answers = [client.post("/login", data={**fields, "token": t}) for t in sent]
    assert [a.status_code for a in answers] == [401, 401, 429, 429]
    for refused in answers[2:]:
        seconds = int(refused.headers["Retry-After"])
        page = refused.get_data(as_text=True)
        assert refused.mimetype == "text/html" and seconds > 0
        assert "Too many failed sign-ins from your address; try again in " in page
        assert re.search(rf"try again in {seconds} seconds?\.", page)
        assert 'name="token"' in page and 'name="next" value="/users/7"' in page
        assert f'name="csrf" value="{fields["csrf"]}"' in page  # usable once the wait is over
    api = client.get("/api/users/1/sum", headers=bearer(wrong_token()))
    assert api.status_code == 429 and api.is_json and api.get_json()["error"]
    assert int(api.headers["Retry-After"]) > 0


@pytest.fixture
def token_queries(backend):
    """The database queries of the tokens' table, as they run."""
    engine = backend[0]
    seen = []

    def note(_conn, _cursor, statement, *_args):
        if "api_tokens" in statement:
            seen.append(statement)

    sqlalchemy.event.listen(engine, "before_cursor_execute", note)
    yield seen
    sqlalchemy.event.remove(engine, "before_cursor_execute", note)


def test_a_repeated_wrong_token_costs_one_database_query(backend, key_prefix, token_queries):
    app = make_app(backend, key_prefix, AUTH_FAIL_LIMIT="100/minute")
    client = from_address(app, "10.0.0.6")
    wrong = wrong_token()
    answers = [client.get("/api/users/1/sum", headers=bearer(wrong)) for _ in range(10)]
    assert [a.status_code for a in answers] == [401] * 10
    fields = login_form(client)
    assert client.post("/login", data={**fields, "token": wrong}).status_code == 401
    assert len(token_queries) == 1


def test_the_wrong_tokens_of_an_address_over_its_limit_cost_no_query(
    backend, key_prefix, token_queries
):
    app = make_app(backend, key_prefix, AUTH_FAIL_LIMIT="2/minute")
    client = from_address(app, "10.0.0.7")
    answers = [client.get("/api/users/1/sum", headers=bearer(wrong_token())) for _ in range(10)]
    assert [a.status_code for a in answers] == [401, 401] + [429] * 8
    assert len(token_queries) == 3  # the third is counted after its query, and refused


def test_a_wrong_token_is_asked_again_after_a_minute(backend, key_prefix, monkeypatch):
    """The cache of wrong tokens holds as long as that of valid ones, then the database is
    asked again (a token brought back by restoring the database is then known)."""
    app = make_app(backend, key_prefix)
    token = create_token(app, "restored")
    app.extensions["txstream_access"].cache.add_unknown(tokens.hash_of(token))
    assert app.test_client().get("/api/users/1/sum", headers=bearer(token)).status_code == 401
    clock = tokens.time.monotonic() + tokens.LAST_USED_EVERY.total_seconds()
    monkeypatch.setattr(tokens.time, "monotonic", lambda: clock)
    assert app.test_client().get("/api/users/1/sum", headers=bearer(token)).status_code == 200


def test_the_cache_of_wrong_tokens_is_bounded():
    cache = tokens.Cache()
    hashes = [tokens.hash_of(wrong_token()) for _ in range(cache.MAX_ENTRIES + 1)]
    for token_hash in hashes:
        cache.add_unknown(token_hash)
    assert len(cache._unknown) <= cache.MAX_ENTRIES
    assert cache.unknown(hashes[-1])


@pytest.mark.parametrize("value", ["many", "20/fortnight"])
def test_auth_fail_limit_must_be_in_its_notation(value):
    with pytest.raises(config.ConfigError, match="AUTH_FAIL_LIMIT"):
        config.load({"AUTH_FAIL_LIMIT": value})


# --- what every response says -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/users/1/sum", "/", "/login", "/healthz", "/nowhere"])
def test_every_response_carries_the_security_headers(client, path):
    headers = client.get(path).headers
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    # No cache keeps the API's answers, nor a page made for a signed-in session.
    private = path.startswith("/api/") or path in ("/healthz", "/")
    assert (headers.get("Cache-Control") == "no-store") == private


# --- outages --------------------------------------------------------------------------------


def test_with_redis_down_the_api_answers_503(app, client, closed_port):
    app.config["REDIS"] = redis.Redis(port=closed_port, socket_connect_timeout=1)
    response = client.get("/api/users/1/recent")
    assert response.status_code == 503 and response.is_json
    assert int(response.headers["Retry-After"]) >= 5


def test_with_redis_down_a_wrong_token_or_sign_in_gets_503(app, anonymous, closed_port):
    """Its failure cannot be counted: the answer says Redis is down, never a 500."""
    fields = login_form(anonymous)
    app.config["REDIS"] = redis.Redis(port=closed_port, socket_connect_timeout=1)
    wrong = wrong_token()
    assert anonymous.get("/api/users/1/sum", headers=bearer(wrong)).status_code == 503
    assert anonymous.post("/login", data={**fields, "token": wrong}).status_code == 503


@pytest.mark.parametrize("path", ["/api/users/1/sum", "/api/users/1/recent"])
def test_with_redis_down_even_a_cached_token_gets_503(backend, key_prefix, closed_port, path):
    """Neither the rate limit nor a revocation can be checked: nothing is served."""
    app = make_app(backend, key_prefix)
    client = cached(app, create_token(app, "cached"))
    app.config["REDIS"] = redis.Redis(port=closed_port, socket_connect_timeout=1)
    response = client.get(path)
    assert response.status_code == 503 and response.is_json


def test_with_the_database_down_the_api_and_pages_answer_503(app, client, closed_port):
    client.get("/")  # signed in while the database was up
    app.config["ENGINE"] = models.make_engine(f"mysql+pymysql://root@127.0.0.1:{closed_port}/x")
    api = client.get("/api/users/1/sum")
    assert api.status_code == 503 and api.is_json
    page = client.get("/")
    assert page.status_code == 503 and page.mimetype == "text/html"
    assert "unavailable" in page.get_data(as_text=True)
    app.config["ENGINE"].dispose()
