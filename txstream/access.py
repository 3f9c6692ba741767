"""Who may read: bearer tokens for the API, a login session for the pages, rate limits.

Every `/api/...` request needs `Authorization: Bearer <token>` (txstream.tokens), or else
a page session and the method GET or HEAD, from this site; a page needs a session, made by
pasting a token into /login. Sessions are kept in the database (txstream.sessions): the
cookie holds only a random id; signing out or revoking the token ends a session at once, and
it ends after SESSION_IDLE_TIMEOUT unused or SESSION_LIFETIME in all. Its forms carry its CSRF
value; the sign-in form's is in a cookie of its own, signed with SECRET_KEY.

`/metrics` needs a bearer token like the API, and counts against its rate limit: a scrape
every 15 s is 4 of RATE_LIMIT's default 600 a minute (give Prometheus a token of its own, so
that no API client uses its share up). `/healthz`, the API's description (/api/openapi.json,
/api/docs), the login page and static files are open. A wrong token (API or sign-in) counts
against its client address's AUTH_FAIL_LIMIT; over it, the address's failures and its tokens
not yet checked by this worker get 429, while its tokens already checked are served. With
AUTH=off (local experiments only) nothing is asked, and every start says so.
"""

from __future__ import annotations

import hmac
import logging
import math
import re
import secrets
import time
from dataclasses import dataclass, field

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    g,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.sessions import SessionInterface
from itsdangerous import BadSignature, Signer

from txstream import queries, redisconn, sessions, tokens
from txstream.ratelimit import FixedWindows, Hit, RateLimited

log = logging.getLogger(__name__)
bp = Blueprint("access", __name__)

SESSION_METHODS = ("GET", "HEAD")  # what a page session may ask of the API
SESSION_COOKIE = "txs_session"  # a page session's random id (txstream.sessions)
LOGIN_COOKIE = "txs_login"  # the sign-in form's CSRF value, signed with SECRET_KEY
LOGIN_FORM_LIFETIME = 3600  # seconds a sign-in form may be left open
OPEN_ENDPOINTS = {"access.login", "static", "api.healthz", "api.openapi_document", "api.docs"}


class _NoFlaskSession(SessionInterface):
    """Flask's own session is not used (the pages' are txstream.sessions): no cookie of its
    is read or written, and writing to `flask.session` fails loudly."""

    def open_session(self, app, request):
        return self.make_null_session(app)

    def save_session(self, app, session, response) -> None:
        return None


def init_app(app: Flask) -> None:
    """Guard every request of `app`, and set up its sessions and rate limits."""
    app.session_interface = _NoFlaskSession()
    app.register_blueprint(bp)
    app.before_request(_guard)
    app.after_request(_private_if_signed_in)
    app.register_error_handler(RateLimited, _rate_limited)
    app.context_processor(lambda: {"csrf_token": csrf_token, "signed_in": g.get("token_name")})
    keys = app.config["KEYS"]
    app.extensions["txstream_access"] = _Access(
        FixedWindows(keys, app.config["RATE_LIMIT"]),
        FixedWindows(keys, app.config["AUTH_FAIL_LIMIT"]),
        tokens.Cache(),
        sessions.Limits(app.config["SESSION_IDLE_TIMEOUT"], app.config["SESSION_LIFETIME"]),
    )


@dataclass
class _Access:
    """An app's rate-limit counters, the tokens it has checked lately, and the addresses
    over their AUTH_FAIL_LIMIT: address -> (the refusal, until when on time.monotonic)."""

    limits: FixedWindows
    failures: FixedWindows
    cache: tokens.Cache
    session_limits: sessions.Limits
    blocked: dict[str, tuple[RateLimited, float]] = field(default_factory=dict)

    MAX_BLOCKED = 10_000  # a bound: an attacker may have many addresses

    def refuse_if_blocked(self, address: str) -> None:
        """Raise RateLimited if `address` went over its failure limit lately: a token this
        worker has not checked then costs no database query."""
        entry = self.blocked.get(address)
        if entry is None:
            return
        exceeded, until = entry
        left = until - time.monotonic()
        if left <= 0:
            self.blocked.pop(address, None)
            return
        raise RateLimited(exceeded.limit, max(1, math.ceil(left)))

    def failed(self, client, address: str) -> None:
        """Count a failed authentication of `address`; raise RateLimited over the limit."""
        hit = self.failures.hit(client, f"failed:{address}")
        self.cache.saw(hit.epoch)
        if hit.exceeded is not None:
            if len(self.blocked) >= self.MAX_BLOCKED:
                self.blocked.clear()
            until = time.monotonic() + hit.exceeded.retry_after
            self.blocked[address] = (hit.exceeded, until)
        hit.check()


def _guard():
    """Before every request: who is asking? Refuse what needs a token and has none; count
    every API request against its token's rate limit (or its address's, when it needs none)."""
    counted = request.path.startswith("/api/")
    if not current_app.config["AUTH"] or request.endpoint in OPEN_ENDPOINTS:
        if counted:
            _count(f"address:{request.remote_addr}").check()
        return None
    if request.routing_exception is not None:  # no such page, or a Host not trusted
        return None  # Flask answers it next; there is nothing to protect
    if counted or request.path == "/api" or request.endpoint == "metrics.metrics":
        return _api_guard()
    return _page_guard()


def _count(who: str) -> Hit:
    """Count a request of `who`; the revocation epoch, read in the same Redis call, is noted."""
    access = _access()
    hit = access.limits.hit(current_app.config["REDIS"], who)
    access.cache.saw(hit.epoch)
    return hit


def _api_guard():
    header = request.headers.get("Authorization")
    if header is None and SESSION_COOKIE in request.cookies:
        return _api_session_guard()
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return _unauthorized("this API needs an Authorization: Bearer <token> header")
    if not tokens.looks_like_a_token(token):
        return _failed("the bearer token is not valid")
    return _admit(tokens.hash_of(token), "the bearer token is not valid (revoked?)")


def _api_session_guard():
    """The pages' session reads the API too (the console's own pages fetch it): GET and
    HEAD only, from this site only, so that no other site's form can act with it."""
    if request.method not in SESSION_METHODS:
        return _unauthorized(
            f"with a page session this API answers {' and '.join(SESSION_METHODS)} only; "
            "send an Authorization: Bearer <token> header"
        )
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return _unauthorized("a page session reads this API from this site only")
    found = page_session()
    if found is None:
        return _forget_session(_unauthorized("the session has ended; sign in again"))
    g.token_name = found.token_name
    _count(f"token:{found.token_id}").check()
    return None


def _admit(token_hash: str, refusal: str):
    """Serve the holder of the token with this hash, counted against its rate limit; or
    refuse with `refusal`."""
    found = _checked(token_hash)
    if found is None:
        return _failed(refusal)
    g.token_name = found[0].name
    found[1].check()
    return None


def _checked(token_hash: str) -> tuple[tokens.Token, Hit] | None:
    """The token with this hash and its request's count, or None: one Redis call, and a
    database look-up only when the token is not cached (or a revocation came since)."""
    cache = _access().cache
    try:
        cached = cache.get(token_hash)
        if cached is not None:
            hit = _count(f"token:{cached[0].id}")
            if hit.epoch == cached[1]:
                return cached[0], hit
            known = hit.epoch  # a token was revoked since; this epoch is read before the look-up
            token = _find(token_hash)
        else:
            if cache.unknown(token_hash):
                return None
            _access().refuse_if_blocked(request.remote_addr)
            known = cache.epoch  # read by an earlier request: before the look-up
            token = _find(token_hash)
            hit = _count(f"token:{token.id}") if token is not None else None
    except redisconn.ERRORS:
        cache.clear()  # revocations cannot be seen: trust no entry once Redis is back
        raise
    if token is None:
        cache.add_unknown(token_hash)
        return None
    if hit is None:
        return None
    if known is not None:
        cache.add(token_hash, token, known)
    return token, hit


def _page_guard():
    found = page_session()
    if found is None:
        login = redirect(url_for("access.login", next=request.full_path.rstrip("?")))
        return _forget_session(login)
    g.token_name = found.token_name
    return None


def page_session() -> sessions.PageSession | None:
    """This request's signed-in session, or None: looked up once per request. A session id
    is 256 random bits, so a wrong one is not counted as a failed authentication: guessing
    is hopeless, and each look-up is one primary-key read."""
    if "page_session" not in g:
        session_id = request.cookies.get(SESSION_COOKIE, "")
        g.page_session = None
        if session_id:
            now, limits = current_app.config["CLOCK"](), _access().session_limits
            g.page_session = queries.read(
                current_app.config["ENGINE"],
                lambda conn: sessions.find(conn, session_id, now, limits),
            )
    return g.page_session


def _forget_session(response):
    """`response`, telling the browser to drop a session cookie that opens nothing."""
    if SESSION_COOKIE in request.cookies:
        response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="Lax")
    return response


def _private_if_signed_in(response):
    """A page or answer made for a session is no one else's: not stored by any cache."""
    if g.get("page_session") is not None:
        response.headers["Cache-Control"] = "no-store"
        response.vary.add("Cookie")
    return response


def _find(token_hash: str) -> tokens.Token | None:
    return queries.read(current_app.config["ENGINE"], lambda conn: tokens.find(conn, token_hash))


def _access() -> _Access:
    return current_app.extensions["txstream_access"]


def _failed(refusal: str):
    """Refuse a wrong token with 401, counted against its address's AUTH_FAIL_LIMIT (429
    over it)."""
    _access().failed(current_app.config["REDIS"], request.remote_addr)
    return _unauthorized(refusal, invalid=True)


def _unauthorized(message: str, invalid: bool = False):
    response = jsonify(error=message)
    response.status_code = 401
    challenge = 'Bearer realm="txstream"'
    if invalid:
        challenge += ', error="invalid_token"'
    response.headers["WWW-Authenticate"] = challenge
    return response


def csrf_token() -> str:
    """This session's CSRF value, for a hidden field of every form that changes something."""
    found = page_session()
    return found.csrf if found is not None else ""


def _check_csrf(expected: str | None) -> None:
    """400 unless the form's CSRF field is `expected`: none (no cookie, as in a cross-site
    sign-in) matches nothing. Compared as bytes: any text may be sent."""
    sent = request.form.get("csrf", "").encode()
    if not (expected and hmac.compare_digest(sent, expected.encode())):
        abort(400, description="the form has expired or did not come from this site; try again")


def _login_signer() -> Signer:
    return Signer(current_app.secret_key, salt="txstream-login-form")


def _login_form_csrf() -> str | None:
    """The sign-in form's CSRF value, from its signed cookie (None: no cookie, or forged).
    Signed, so that a cookie set by a neighbouring site of the same domain is worth nothing."""
    try:
        return _login_signer().unsign(request.cookies.get(LOGIN_COOKIE, "")).decode()
    except (BadSignature, UnicodeDecodeError):
        return None


# A path of this site: one "/", then only characters a URL carries as they are (no space,
# control, back-slash or non-ASCII character, which browsers and Werkzeug drop or rewrite).
_SAFE_NEXT = re.compile(r"/(?!/)[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")
_DOT_SEGMENT = re.compile(r"/\.\.?(?:/|$)")


def _safe_next(target: str | None) -> str:
    """`target` if it is plainly a path of this site, else the start page: never another
    host. An allow-list, because every encoding a browser normalises is a way out."""
    path = (target or "").partition("?")[0]
    if _SAFE_NEXT.fullmatch(target or "") and "//" not in path and not _DOT_SEGMENT.search(path):
        return target
    return url_for("pages.index")


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Sign in by pasting a token: a new session, whatever the browser had before."""
    if not current_app.config["AUTH"]:
        return redirect(url_for("pages.index"))  # nobody signs in: every page is open
    if request.method == "GET":
        csrf = secrets.token_urlsafe(32)
        response = make_response(_login_page(request.args.get("next", ""), csrf))
        response.set_cookie(
            LOGIN_COOKIE,
            _login_signer().sign(csrf).decode(),
            max_age=LOGIN_FORM_LIFETIME,
            path=url_for("access.login"),
            secure=request.is_secure,
            httponly=True,
            samesite="Lax",
        )
        return response
    csrf = _login_form_csrf()
    _check_csrf(csrf)
    token = request.form.get("token", "").strip()
    found = _signed_in(token)
    if found is None:
        log.warning("sign-in refused from %s", request.remote_addr)
        _access().failed(current_app.config["REDIS"], request.remote_addr)
        return _login_page(request.form.get("next", ""), csrf, error=True), 401
    engine = current_app.config["ENGINE"]
    sessions.end(engine, request.cookies.get(SESSION_COOKIE, ""))  # the browser's previous
    session_id = sessions.begin(
        engine, found.id, current_app.config["CLOCK"](), _access().session_limits
    )
    log.info("signed in with token %r", found.name)
    response = redirect(_safe_next(request.form.get("next")))
    response.set_cookie(
        SESSION_COOKIE, session_id, secure=request.is_secure, httponly=True, samesite="Lax"
    )
    response.delete_cookie(LOGIN_COOKIE, path=url_for("access.login"))
    return response


def _login_page(next_path: str, csrf: str, error: bool = False, retry_after: int = 0) -> str:
    return render_template(
        "login.html", next=next_path, csrf=csrf, error=error, retry_after=retry_after
    )


def _signed_in(token: str) -> tokens.Token | None:
    """The token pasted in the sign-in form, or None: no database query for one known
    wrong lately, or from an address over its AUTH_FAIL_LIMIT."""
    if not tokens.looks_like_a_token(token):
        return None
    access, token_hash = _access(), tokens.hash_of(token)
    if access.cache.unknown(token_hash):
        return None
    access.refuse_if_blocked(request.remote_addr)
    found = _find(token_hash)
    if found is None:
        access.cache.add_unknown(token_hash)
    return found


@bp.post("/logout")
def logout():
    """Sign out: the session is deleted; its cookie opens nothing any more."""
    if not current_app.config["AUTH"]:
        return redirect(url_for("pages.index"))
    _check_csrf(csrf_token())
    sessions.end(current_app.config["ENGINE"], request.cookies.get(SESSION_COOKIE, ""))
    g.page_session = None
    return _forget_session(redirect(url_for("access.login")))


def _rate_limited(exc: RateLimited):
    """429 with Retry-After, the seconds until the limit's window resets: as the login page
    to a person signing in, as JSON to everything else."""
    if request.endpoint == "access.login":
        csrf = _login_form_csrf() or ""  # the form still works once the wait is over
        page = _login_page(request.values.get("next", ""), csrf, retry_after=exc.retry_after)
        response = make_response(page, 429)
    else:
        response = jsonify(error=str(exc))
        response.status_code = 429
    response.headers["Retry-After"] = str(exc.retry_after)
    return response
