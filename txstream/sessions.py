"""The pages' sessions, kept in the database: the browser's cookie holds only a random id.

In the database, not in Redis, because MySQL is the truth: a Redis outage must neither sign
every operator out nor keep a signed-in operator from reading the System page that says
Redis is down. The table keeps the SHA-256 of the id (a copy of the table opens no session),
the token the session was opened with (revoking the token deletes its sessions, and a look-up
finds no session whose token is gone), the session's CSRF value, and its times: a session ends
when it has not been used for `idle` seconds, and `lifetime` seconds after its sign-in in any
case. Its last use is written at most every `refresh_every` seconds, not at every request.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, bindparam, delete, insert, or_, select, update

from models import api_tokens, web_sessions

MAX_ID_CHARS = 64  # a cookie longer than an id ever is: no look-up


@dataclass(frozen=True)
class Limits:
    """How long a session lasts unused, and at most (seconds)."""

    idle: int
    lifetime: int

    @property
    def refresh_every(self) -> timedelta:
        """How stale a session's last use may be in the table: a tenth of the idle timeout,
        at most a minute (so that a session ends at most that much before its time)."""
        return timedelta(seconds=min(60.0, self.idle / 10))


@dataclass(frozen=True)
class PageSession:
    """A signed-in session: its token's id and name, and the value its forms carry."""

    token_id: int
    token_name: str
    csrf: str


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def begin(engine: Engine, token_id: int, now: datetime, limits: Limits) -> str:
    """Open a session for the token with this id; the id for the cookie. Sessions that have
    ended are deleted first, so that the table holds only live ones and a few more."""
    session_id = secrets.token_urlsafe(32)
    s = web_sessions.c
    with engine.begin() as conn:
        conn.execute(
            delete(web_sessions).where(
                or_(s.expires_at <= now, s.seen_at <= now - timedelta(seconds=limits.idle))
            )
        )
        conn.execute(
            insert(web_sessions).values(
                id_hash=_digest(session_id),
                token_id=token_id,
                csrf=secrets.token_urlsafe(32),
                created_at=now,
                seen_at=now,
                expires_at=now + timedelta(seconds=limits.lifetime),
            )
        )
    return session_id


_FIND = (
    select(
        web_sessions.c.token_id,
        api_tokens.c.name,
        web_sessions.c.csrf,
        web_sessions.c.seen_at,
        web_sessions.c.expires_at,
    )
    .join(api_tokens, api_tokens.c.id == web_sessions.c.token_id)
    .where(web_sessions.c.id_hash == bindparam("digest"))
)
_SEEN = (
    update(web_sessions)
    .where(web_sessions.c.id_hash == bindparam("digest"))
    .values(seen_at=bindparam("now"))
)
_TOKEN_USED = (
    update(api_tokens)
    .where(api_tokens.c.id == bindparam("token_id"))
    .values(last_used_at=bindparam("now"))
)


def find(conn: Connection, session_id: str, now: datetime, limits: Limits) -> PageSession | None:
    """The live session with this id, or None (unknown, ended, or its token revoked). Its
    use is noted (and its token's) when the last note is older than `refresh_every`."""
    if not session_id or len(session_id) > MAX_ID_CHARS:
        return None
    digest = _digest(session_id)
    row = conn.execute(_FIND, {"digest": digest}).first()
    if row is None or now >= row.expires_at or now - row.seen_at >= timedelta(seconds=limits.idle):
        return None
    if now - row.seen_at >= limits.refresh_every:
        conn.execute(_SEEN, {"digest": digest, "now": now})
        conn.execute(_TOKEN_USED, {"token_id": row.token_id, "now": now})
        conn.commit()
    return PageSession(row.token_id, row.name, row.csrf)


def end(engine: Engine, session_id: str) -> None:
    """Sign out: the session with this id is deleted; its cookie opens nothing any more."""
    if session_id and len(session_id) <= MAX_ID_CHARS:
        with engine.begin() as conn:
            conn.execute(delete(web_sessions).where(web_sessions.c.id_hash == _digest(session_id)))


def end_all(conn: Connection, token_id: int) -> int:
    """Delete every session opened with the token with this id (it is being revoked); how
    many there were."""
    return conn.execute(delete(web_sessions).where(web_sessions.c.token_id == token_id)).rowcount
