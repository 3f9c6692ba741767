"""Who may read: bearer tokens for the API, a login session for the pages, rate limits.

Every `/api/...` request needs `Authorization: Bearer <token>` (txstream.tokens); a page
needs a session, made by pasting a token into /login. The session cookie is signed with
SECRET_KEY and holds the token's hash, so revoking the token ends the session too. Forms
carry a CSRF token kept in the session. `/healthz`, the API's description
(/api/openapi.json, /api/docs), the login page and static files are open. With AUTH=off
(local experiments only) nothing is asked, and every start says so.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded

from txstream import queries, tokens

log = logging.getLogger(__name__)
bp = Blueprint("access", __name__)

OPEN_ENDPOINTS = {"access.login", "static", "api.healthz", "api.openapi_document", "api.docs"}


class _Session(SecureCookieSessionInterface):
    """The session cookie: HttpOnly, SameSite=Lax, and Secure when the page came over https."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure or super().get_cookie_secure(app)


def init_app(app: Flask) -> None:
    """Guard every request of `app`, and set up its sessions and rate limits."""
    app.session_interface = _Session()
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")
    app.register_blueprint(bp)
    app.before_request(_guard)
    app.context_processor(lambda: {"csrf_token": csrf_token, "signed_in": g.get("token_name")})
    limiter = Limiter(
        _rate_key,
        app=app,
        default_limits=[app.config["RATE_LIMIT"]],
        default_limits_exempt_when=lambda: not request.path.startswith("/api/"),
        # Its X-RateLimit-* headers would cost two more Redis calls per request: 429 says
        # Retry-After itself, below.
        headers_enabled=False,
        storage_uri="redis://",  # the app's own Redis client, below
        storage_options={
            "connection_pool": app.config["REDIS"].connection_pool,
            "key_prefix": f"{app.config['KEY_PREFIX']}ratelimit",
        },
        swallow_errors=True,  # Redis down: serve (and log) rather than refuse everyone
        key_prefix="api",
    )
    app.extensions["txstream_limiter"] = limiter


def _rate_key() -> str:
    """Requests are counted per token (per address before a token is known)."""
    return g.get("token_name") or request.remote_addr or "unknown"


def _guard():
    """Before every request: who is asking? Refuse what needs a token and has none."""
    if not current_app.config["AUTH"] or request.endpoint in OPEN_ENDPOINTS:
        return None
    if request.routing_exception is not None:  # no such page, or a Host not trusted
        return None  # Flask answers it next; there is nothing to protect
    if request.path.startswith("/api/") or request.path == "/api":
        return _api_guard()
    return _page_guard()


def _api_guard():
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return _unauthorized("this API needs an Authorization: Bearer <token> header")
    if not tokens.looks_like_a_token(token):
        return _unauthorized("the bearer token is not valid", invalid=True)
    name = _name_of(tokens.hash_of(token))
    if name is None:
        return _unauthorized("the bearer token is not valid (revoked?)", invalid=True)
    g.token_name = name
    return None


def _page_guard():
    token_hash = session.get("token_hash")
    name = _name_of(token_hash) if isinstance(token_hash, str) else None
    if name is None:
        session.pop("token_hash", None)
        return redirect(url_for("access.login", next=request.full_path.rstrip("?")))
    g.token_name = name
    return None


def _name_of(token_hash: str) -> str | None:
    return queries.read(current_app.config["ENGINE"], lambda conn: tokens.name_of(conn, token_hash))


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
    sent = request.form.get("csrf", "")
    if not (isinstance(sent, str) and hmac.compare_digest(sent, session.get("csrf", "") or "x")):
        abort(400, description="the form has expired or did not come from this site; try again")


def _safe_next(target: str | None) -> str:
    """`target` if it is a path of this site, else the start page: never another host."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return url_for("pages.index")


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Sign in by pasting a token."""
    if request.method == "GET":
        return render_template("login.html", next=request.args.get("next", ""), error=None)
    _check_csrf()
    token = request.form.get("token", "").strip()
    name = None
    if tokens.looks_like_a_token(token):
        name = _name_of(tokens.hash_of(token))
    if name is None:
        log.warning("sign-in refused from %s", request.remote_addr)
        page = render_template("login.html", next=request.form.get("next", ""), error=True)
        return page, 401
    session.clear()  # a new session: nothing from before survives a sign-in
    session["token_hash"] = tokens.hash_of(token)
    log.info("signed in with token %r", name)
    return redirect(_safe_next(request.form.get("next")))


@bp.post("/logout")
def logout():
    """Sign out: the session is forgotten."""
    _check_csrf()
    session.clear()
    return redirect(url_for("access.login"))


def rate_limited(exc: RateLimitExceeded):
    """429 as JSON, with Retry-After: the seconds until the token's window resets."""
    response = jsonify(error=f"too many requests: at most {exc.limit.limit}")
    response.status_code = 429
    window = exc.limit.limit.get_expiry()  # seconds
    current = current_app.extensions["txstream_limiter"].current_limit
    wait = current.reset_at - time.time() if current is not None else window
    response.headers["Retry-After"] = str(min(max(1, round(wait)), window))
    return response
