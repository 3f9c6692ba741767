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
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from sqlalchemy import Connection, Engine, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from models import api_tokens
from txstream import sessions
from txstream.keys import Keys
from txstream.ratelimit import new_epoch
from txstream.times import utcnow

PREFIX = "txs_"  # so that a leaked token is recognisable (secret scanners, logs)
_TOKEN = re.compile(r"txs_[A-Za-z0-9_-]{43}")  # PREFIX + token_urlsafe(32)
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
LAST_USED_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often


class TokenError(ValueError):
    """A token name that cannot be used; the text says why."""


@dataclass(frozen=True)
class Token:
    """A valid token as the web app knows it: its row's id, and its name."""

    id: int
    name: str


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
    """Delete the token called `name` and its page sessions; whether there was one. Then call
    `announce_revocation`."""
    with engine.begin() as conn:
        token_id = conn.scalar(select(api_tokens.c.id).where(api_tokens.c.name == name))
        if token_id is None:
            return False
        sessions.end_all(conn, token_id)
        conn.execute(delete(api_tokens).where(api_tokens.c.id == token_id))
        return True


def announce_revocation(client: redis.Redis, keys: Keys) -> None:
    """Tell every web worker to forget the tokens it has cached: a new revocation epoch.

    Call it after the database has committed the revocation, never before: a worker that
    reads the new epoch must not find the token in the database any more.
    """
    client.set(keys.token_epoch, new_epoch())


def listed(engine: Engine) -> list[TokenInfo]:
    """Every token, by name."""
    t = api_tokens
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.name, t.c.created_at, t.c.last_used_at).order_by(t.c.name))
        return [TokenInfo(*row) for row in rows]


_BY_HASH = select(
    api_tokens.c.id, api_tokens.c.name, api_tokens.c.token_hash, api_tokens.c.last_used_at
).where(api_tokens.c.token_hash == bindparam("hash"))
_USED = (
    update(api_tokens)
    .where(api_tokens.c.token_hash == bindparam("hash"))
    .values(last_used_at=bindparam("now"))
)


def find(conn: Connection, token_hash: str) -> Token | None:
    """The token with this hash, or None if there is none (now); notes its use.

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
    return Token(row.id, row.name)


class Cache:
    """The tokens this process found in the database lately: their hash -> Token.

    An entry holds only while no token has been revoked since: it keeps the revocation
    epoch (Redis, `Keys.token_epoch`) read before its database look-up, and a request may
    use it only when the epoch that request reads is still that one. `revoke-token`
    commits the deletion first and then sets a new epoch, so a token revoked after its
    look-up changes the epoch before its next use. Epochs are random, never a count, so
    a Redis that lost the key (and gets a new one) cannot bring an old epoch back.

    Only tokens found in the database are added. An entry is dropped after
    LAST_USED_EVERY, so that the database is asked again and `last_used_at` stays
    current. Finding an entry by its hash tells an attacker nothing about a token, like
    the database's index; the hashes are compared in constant time all the same.

    The hashes the database did not know are kept too, for as long (`unknown`): a client
    repeating a wrong token then costs no database query. A token made later never has one
    of these hashes (it holds 256 random bits nobody asked for before), so making a token
    needs no new epoch, and a revocation makes no unknown token known; a token brought back
    by restoring the database is known again after LAST_USED_EVERY at most.
    """

    MAX_ENTRIES = 10_000  # far more tokens than anyone makes; a bound all the same

    def __init__(self) -> None:
        self._entries: dict[str, tuple[str, Token, bytes, float]] = {}
        self._unknown: dict[str, float] = {}  # hash -> when the database did not know it
        self.epoch: bytes | None = None  # the latest epoch a request read

    def get(self, token_hash: str) -> tuple[Token, bytes] | None:
        """The cached token with this hash and the epoch it holds under, if any."""
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        stored_hash, token, epoch, added = entry
        if time.monotonic() - added >= _LAST_USED_SECONDS:
            self._entries.pop(token_hash, None)
            return None
        if not hmac.compare_digest(stored_hash, token_hash):
            return None
        return token, epoch

    def add(self, token_hash: str, token: Token, epoch: bytes) -> None:
        """Keep `token`, found in the database after `epoch` was read from Redis."""
        if epoch != self.epoch:
            return  # a revocation came since: the next look-up will add it
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()
        self._entries[token_hash] = (token_hash, token, epoch, time.monotonic())

    def unknown(self, token_hash: str) -> bool:
        """Whether the database did not know this hash lately."""
        added = self._unknown.get(token_hash)
        if added is None:
            return False
        if time.monotonic() - added >= _LAST_USED_SECONDS:
            self._unknown.pop(token_hash, None)
            return False
        return True

    def add_unknown(self, token_hash: str) -> None:
        """Keep a hash the database did not know (bounded: an attacker sends many)."""
        if len(self._unknown) >= self.MAX_ENTRIES:
            self._unknown.clear()
        self._unknown[token_hash] = time.monotonic()

    def saw(self, epoch: bytes) -> None:
        """Note the epoch a request read; a new one drops every entry."""
        if epoch != self.epoch:
            self._entries.clear()  # a revocation makes no unknown token known: _unknown stays
            self.epoch = epoch

    def clear(self) -> None:
        """Forget everything (Redis could not be read: nothing is known about revocations)."""
        self._entries.clear()
        self._unknown.clear()
        self.epoch = None


_LAST_USED_SECONDS = LAST_USED_EVERY.total_seconds()


def looks_like_a_token(text: str) -> bool:
    """Whether `text` has a token's form (checked before any database work)."""
    return bool(_TOKEN.fullmatch(text))
