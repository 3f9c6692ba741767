"""The bearer tokens of the API and the pages: made, checked and revoked here.

A token is shown once, when it is made; the database keeps only its SHA-256, so a copy of
the table lets nobody in. A token holds 256 random bits, so one fast hash is enough (a slow
password hash protects guessable secrets, which these are not).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from models import api_tokens
from txstream.times import utcnow

PREFIX = "txs_"  # so that a leaked token is recognisable (secret scanners, logs)
_TOKEN = re.compile(r"txs_[A-Za-z0-9_-]{43}")  # PREFIX + token_urlsafe(32)
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
LAST_USED_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often


class TokenError(ValueError):
    """A token name that cannot be used; the text says why."""


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: never the token itself."""

    name: str
    created_at: datetime
    last_used_at: datetime | None


def hash_of(token: str) -> str:
    """The hex SHA-256 of a token: what the database keeps."""
    return hashlib.sha256(token.encode()).hexdigest()


def create(engine: Engine, name: str) -> str:
    """Make a token called `name`; the token itself, to be shown once."""
    if not _NAME.fullmatch(name):
        raise TokenError(f"a token name is 1-64 characters of A-Z a-z 0-9 . _ -, got {name!r}")
    token = PREFIX + secrets.token_urlsafe(32)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(api_tokens).values(name=name, token_hash=hash_of(token), created_at=utcnow())
            )
    except IntegrityError:
        raise TokenError(f"a token called {name!r} exists already") from None
    return token


def revoke(engine: Engine, name: str) -> bool:
    """Delete the token called `name`; whether there was one."""
    with engine.begin() as conn:
        return conn.execute(delete(api_tokens).where(api_tokens.c.name == name)).rowcount > 0


def listed(engine: Engine) -> list[TokenInfo]:
    """Every token, by name."""
    t = api_tokens
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.name, t.c.created_at, t.c.last_used_at).order_by(t.c.name))
        return [TokenInfo(*row) for row in rows]


_BY_HASH = select(api_tokens.c.name, api_tokens.c.token_hash, api_tokens.c.last_used_at).where(
    api_tokens.c.token_hash == bindparam("hash")
)
_USED = (
    update(api_tokens)
    .where(api_tokens.c.token_hash == bindparam("hash"))
    .values(last_used_at=bindparam("now"))
)


def name_of(conn: Connection, token_hash: str) -> str | None:
    """The name of the token with this hash, or None if there is none (now); notes its use.

    The look-up is by hash, so it tells an attacker nothing about a token; the final
    comparison runs in constant time all the same.
    """
    row = conn.execute(_BY_HASH, {"hash": token_hash}).first()
    if row is None or not hmac.compare_digest(row.token_hash, token_hash):
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_EVERY:
        conn.execute(_USED, {"hash": token_hash, "now": now})
        conn.commit()
    return row.name


def looks_like_a_token(text: str) -> bool:
    """Whether `text` has a token's form (checked before any database work)."""
    return bool(_TOKEN.fullmatch(text))
