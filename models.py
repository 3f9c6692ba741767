"""The database: SQLAlchemy models of the tables, and the engine that reaches them.

`schema.sql` creates the same tables for MySQL users (DataGrip, `mysql < schema.sql`);
a test proves the two agree on a real MariaDB.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    DateTime,
    Engine,
    Index,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    make_url,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from txstream.dialect import (
    MYSQL_NAMES,
    SQLITE,
    SQLITE_BEGIN,
    Money,
    configure_sqlite,
    family,
)

# BIGINT AUTO_INCREMENT on MySQL; SQLite only auto-increments INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")
# DATETIME(6): microseconds. On SQLite a fixed-width text that sorts in time order.
Timestamp = DateTime().with_variant(mysql.DATETIME(fsp=6), *MYSQL_NAMES)
# Case-sensitive, byte-ordered ids, so "a" and "A" are two transactions and ties
# on `ts` break in the same order in MySQL, SQLite, Python and Redis.
TxnId = String(64).with_variant(
    mysql.VARCHAR(64, charset="ascii", collation="ascii_bin"), *MYSQL_NAMES
)
# How long create_schema waits for another process creating the tables (seconds).
_SCHEMA_LOCK_WAIT = 60
_TABLE_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


class Base(DeclarativeBase):
    """Base of txstream's models."""


class StoredTransaction(Base):
    """One card transaction, stored exactly once (unique `txn_id`)."""

    __tablename__ = "transactions"
    __table_args__ = (
        UniqueConstraint("txn_id", name="uq_transactions_txn_id"),  # exactly once
        # Covers a user's time-range sum and newest-first pages: no other user's rows
        # are read, and the table itself is not touched.
        Index("ix_transactions_user_ts", "user_id", "ts", "txn_id", "amount"),
        # The newest transactions of all users.
        Index("ix_transactions_ts", "ts", "txn_id"),
        _TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    txn_id: Mapped[str] = mapped_column(TxnId)
    user_id: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[Decimal] = mapped_column(Money(20))
    ts: Mapped[datetime] = mapped_column(Timestamp, comment="event time, UTC")
    received_at: Mapped[datetime] = mapped_column(Timestamp, comment="stored at, UTC")


class UserWindowTotal(Base):
    """A user's totals over one tumbling window of WINDOW_HOURS, aligned to the epoch."""

    __tablename__ = "user_window_totals"
    __table_args__ = (
        # A window's users and their totals, for the console's top users: read from the
        # index alone (one range), never from the table's pages.
        Index("ix_user_window_totals_window_start", "window_start", "amount_sum", "tx_count"),
        _TABLE_OPTIONS,
    )

    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    window_start: Mapped[datetime] = mapped_column(DateTime, primary_key=True, comment="UTC")
    tx_count: Mapped[int] = mapped_column(BigInteger)
    # Wider than one amount, so that many large amounts cannot overflow the sum.
    amount_sum: Mapped[Decimal] = mapped_column(Money(30))
    amount_min: Mapped[Decimal] = mapped_column(Money(20))
    amount_max: Mapped[Decimal] = mapped_column(Money(20))
    updated_at: Mapped[datetime] = mapped_column(Timestamp, comment="UTC")


class UserBucketTotal(Base):
    """A user's count and sum over one bucket: finer than a window, so that a sum over any
    range reads whole windows, then whole buckets, and raw rows only at its two edges."""

    __tablename__ = "user_bucket_totals"
    __table_args__ = (_TABLE_OPTIONS,)

    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    bucket_start: Mapped[datetime] = mapped_column(DateTime, primary_key=True, comment="UTC")
    tx_count: Mapped[int] = mapped_column(BigInteger)
    amount_sum: Mapped[Decimal] = mapped_column(Money(30))


class Setting(Base):
    """A fact about the stored data that every process must agree on, such as the
    length of the windows the aggregates were built with (txstream.aggregates)."""

    __tablename__ = "settings"
    __table_args__ = (_TABLE_OPTIONS,)

    name: Mapped[str] = mapped_column(
        String(64).with_variant(
            mysql.VARCHAR(64, charset="ascii", collation="ascii_bin"), *MYSQL_NAMES
        ),
        primary_key=True,
    )
    value: Mapped[str] = mapped_column(String(255))


class ApiToken(Base):
    """A bearer token of the API and the pages: only its SHA-256 is stored (txstream.tokens)."""

    __tablename__ = "api_tokens"
    __table_args__ = (
        UniqueConstraint("name", name="uq_api_tokens_name"),
        UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
        _TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(
        String(64).with_variant(
            mysql.CHAR(64, charset="ascii", collation="ascii_bin"), *MYSQL_NAMES
        ),
        comment="hex SHA-256 of the token",
    )
    created_at: Mapped[datetime] = mapped_column(Timestamp, comment="UTC")
    last_used_at: Mapped[datetime | None] = mapped_column(
        Timestamp, nullable=True, comment="UTC, to the minute"
    )


class WebSession(Base):
    """A signed-in page session (txstream.sessions): the browser's cookie holds its id,
    the table only the id's SHA-256."""

    __tablename__ = "web_sessions"
    __table_args__ = (Index("ix_web_sessions_token_id", "token_id"), _TABLE_OPTIONS)

    id_hash: Mapped[str] = mapped_column(
        String(64).with_variant(
            mysql.CHAR(64, charset="ascii", collation="ascii_bin"), *MYSQL_NAMES
        ),
        primary_key=True,
        comment="hex SHA-256 of the cookie's id",
    )
    token_id: Mapped[int] = mapped_column(BigInteger, comment="api_tokens.id")
    csrf: Mapped[str] = mapped_column(
        String(64).with_variant(
            mysql.VARCHAR(64, charset="ascii", collation="ascii_bin"), *MYSQL_NAMES
        ),
        comment="the value its forms carry",
    )
    created_at: Mapped[datetime] = mapped_column(Timestamp, comment="signed in at, UTC")
    seen_at: Mapped[datetime] = mapped_column(Timestamp, comment="last used, UTC, to the minute")
    expires_at: Mapped[datetime] = mapped_column(Timestamp, comment="ends at the latest, UTC")


transactions = StoredTransaction.__table__
api_tokens = ApiToken.__table__
web_sessions = WebSession.__table__
user_window_totals = UserWindowTotal.__table__
user_bucket_totals = UserBucketTotal.__table__
settings = Setting.__table__


def make_engine(
    url: str, reads_only: bool = False, connect_timeout: int = 5, read_timeout: int | None = None
) -> Engine:
    """An engine for `url` (MySQL/MariaDB, or SQLite for tests and the demo).

    `reads_only` (the web app, whose requests only run SELECTs): on MySQL every
    statement commits by itself, so no ROLLBACK is sent when a connection goes back to
    the pool, and connections are not pinged before use; a dead one is replaced after
    its first failure (`txstream.queries.read`). Two round trips less per request.
    The timeouts are MySQL's, in seconds; `read_timeout` None waits as long as it takes.
    """
    if family(make_url(url).get_backend_name()) == SQLITE:
        engine = create_engine(url, connect_args={"timeout": 30})
        configure_sqlite(engine)
        return engine
    reads = (
        {"isolation_level": "AUTOCOMMIT", "skip_autocommit_rollback": True} if reads_only else {}
    )
    timeouts = {} if read_timeout is None else {"read_timeout": read_timeout}
    return create_engine(
        url,
        pool_pre_ping=not reads_only,  # a MySQL restart must not hand out dead connections
        pool_recycle=3600,
        connect_args={"connect_timeout": connect_timeout, **timeouts},
        **reads,
    )


def create_schema(engine: Engine) -> None:
    """Create the database (MySQL) and the tables if they are missing.

    Any number of processes may run it at once on a new database (subscribers, init-db):
    SQLAlchemy looks for each table, then creates it, so two of them would both create
    it. They take turns: under a server lock named after the database (MySQL's
    GET_LOCK), or in a write transaction (SQLite, which has one writer at a time).
    """
    if family(engine.dialect) == SQLITE:
        with engine.connect() as conn:
            conn.execution_options(**{SQLITE_BEGIN: "BEGIN IMMEDIATE"})  # the write lock now
            with conn.begin():
                Base.metadata.create_all(conn)
        return
    with _schema_lock(engine):
        Base.metadata.create_all(engine)


@contextmanager
def _schema_lock(engine: Engine) -> Iterator[None]:
    """Hold the server lock of `engine`'s database, created first if it is missing."""
    url = engine.url
    server = create_engine(url.set(database=""), connect_args={"connect_timeout": 5})
    name = f"txstream.schema.{url.database or ''}"[:64]  # MySQL's longest lock name
    try:
        with server.connect() as conn:
            wait = {"name": name, "wait": _SCHEMA_LOCK_WAIT}
            if conn.scalar(text("SELECT GET_LOCK(:name, :wait)"), wait) != 1:
                raise TimeoutError(
                    f"another process has held the lock {name!r} for {_SCHEMA_LOCK_WAIT} s"
                )
            try:
                if url.database:
                    quoted = server.dialect.identifier_preparer.quote(url.database)
                    conn.execute(
                        text(f"CREATE DATABASE IF NOT EXISTS {quoted} CHARACTER SET utf8mb4")
                    )
                yield
            finally:
                conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
    finally:
        server.dispose()
