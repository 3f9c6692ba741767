"""Who may read: bearer tokens for the API, a login session for the pages, rate limits.

Every `/api/...` request needs `Authorization: Bearer <token>` (txstream.tokens), or else
a page session and the method GET or HEAD, from this site; a page needs a session, made by
pasting a token into /login. The session cookie is signed with
SECRET_KEY and holds the token's hash, so revoking the token ends the session too. Forms
carry a CSRF token kept in the session. `/metrics` needs a bearer token like the API, and
counts against its rate limit: a scrape every 15 s is 4 of RATE_LIMIT's default 600 a
minute (give Prometheus a token of its own, so that no API client uses its share up).
`/healthz`, the API's description (/api/openapi.json, /api/docs), the login page and
static files are open. A wrong token (API, session or sign-in) counts against its client
address's AUTH_FAIL_LIMIT; over it, the address's failures and its tokens not yet checked by
this worker get 429, while its tokens already checked are served. With AUTH=off (local
experiments only) nothing is asked, and every start says so.
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
    session,
    url_for,
)
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask.wrappers import Request

from txstream import queries, redisconn, tokens
from txstream.ratelimit import FixedWindows, Hit, RateLimited

log = logging.getLogger(__name__)
bp = Blueprint("access", __name__)

SESSION_METHODS = ("GET", "HEAD")  # what a page session may ask of the API
OPEN_ENDPOINTS = {"access.login", "static", "api.healthz", "api.openapi_document", "api.docs"}


class _Session(SecureCookieSessionInterface):
    """The session cookie: HttpOnly, SameSite=Lax, and Secure when the page came over https."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure or super().get_cookie_secure(app)

    def open_session(self, app: Flask, incoming: Request) -> SecureCookieSession | None:
        # No cookie (every API client): an empty session, without building the signer
        # that Flask would make first, a twentieth of an API request's time.
        if app.secret_key and not incoming.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, incoming)


def init_app(app: Flask) -> None:
    """Guard every request of `app`, and set up its sessions and rate limits."""
    app.session_interface = _Session()
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")
    app.register_blueprint(bp)
    app.before_request(_guard)
    app.register_error_handler(RateLimited, _rate_limited)
    app.context_processor(lambda: {"csrf_token": csrf_token, "signed_in": g.get("token_name")})
    keys = app.config["KEYS"]
    app.extensions["txstream_access"] = _Access(
        FixedWindows(keys, app.config["RATE_LIMIT"]),
        FixedWindows(keys, app.config["AUTH_FAIL_LIMIT"]),
        tokens.Cache(),
    )


@dataclass
class _Access:
    """An app's rate-limit counters, the tokens it has checked lately, and the addresses
    over their AUTH_FAIL_LIMIT: address -> (the refusal, until when on time.monotonic)."""

    limits: FixedWindows
    failures: FixedWindows
    cache: tokens.Cache
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
    if header is None and "token_hash" in session:
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
    token_hash = session["token_hash"]
    if not isinstance(token_hash, str):
        return _failed("the session is not valid; sign in again")
    return _admit(token_hash, "the session's token is not valid (revoked?); sign in again")


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
    token_hash = session.get("token_hash")
    token = _find(token_hash) if isinstance(token_hash, str) else None
    if token is None:
        session.pop("token_hash", None)
        return redirect(url_for("access.login", next=request.full_path.rstrip("?")))
    g.token_name = token.name
    return None


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
    """This session's CSRF token, for a hidden field of every form that changes something."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def _check_csrf() -> None:
    """400 unless the form's CSRF field is this session's: a session without one (no cookie,
    as in a cross-site sign-in) matches nothing. Compared as bytes: any text may be sent."""
    sent, expected = request.form.get("csrf", "").encode(), session.get("csrf")
    if not (
        isinstance(expected, str) and expected and hmac.compare_digest(sent, expected.encode())
    ):
        abort(400, description="the form has expired or did not come from this site; try again")


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
    """Sign in by pasting a token."""
    if request.method == "GET":
        return render_template("login.html", next=request.args.get("next", ""), error=None)
    _check_csrf()
    token = request.form.get("token", "").strip()
    found = _signed_in(token)
    if found is None:
        log.warning("sign-in refused from %s", request.remote_addr)
        _access().failed(current_app.config["REDIS"], request.remote_addr)
        page = render_template("login.html", next=request.form.get("next", ""), error=True)
        return page, 401
    session.clear()  # a new session: nothing from before survives a sign-in
    session["token_hash"] = tokens.hash_of(token)
    log.info("signed in with token %r", found.name)
    return redirect(_safe_next(request.form.get("next")))


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
    """Sign out: the session is forgotten."""
    _check_csrf()
    session.clear()
    return redirect(url_for("access.login"))


def _rate_limited(exc: RateLimited):
    """429 with Retry-After, the seconds until the limit's window resets: as the login page
    to a person signing in, as JSON to everything else."""
    if request.endpoint == "access.login":
        next_ = request.values.get("next", "")
        page = render_template("login.html", next=next_, retry_after=exc.retry_after)
        response = make_response(page, 429)
    else:
        response = jsonify(error=str(exc))
        response.status_code = 429
    response.headers["Retry-After"] = str(exc.retry_after)
    return response
