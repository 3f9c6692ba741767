"""What differs between the databases txstream runs on: MySQL/MariaDB, and SQLite (the demo).

Every decision by database is made here, by `family`: MariaDB's own dialect (`mariadb://`,
`mariadb+pymysql://`) is in the MySQL family. Everything else is the same on both.

Money: exact DECIMAL on MySQL. SQLite has no decimal type (its numbers are floats), so
there an amount is stored as text and summed by Python functions registered on each
connection; `money_sum`, `money_add`, `money_least` and `money_greatest` compile to plain
SQL on MySQL and to those functions on SQLite.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, replace
from decimal import Decimal

from sqlalchemy import Numeric, String, event
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator

from txstream.money import MONEY_CONTEXT

MYSQL = "mysql"
SQLITE = "sqlite"
MYSQL_NAMES = ("mysql", "mariadb")  # SQLAlchemy's dialect names in the MySQL family
# The execution option of a SQLite connection that says how its transactions begin
# (default "BEGIN"; "BEGIN IMMEDIATE" takes the write lock at once).
SQLITE_BEGIN = "txstream_sqlite_begin"


class UnsupportedDatabase(ValueError):
    """A database txstream does not run on."""


def family(dialect: Dialect | str) -> str:
    """`MYSQL` or `SQLITE`: the family of a dialect (or of a dialect name)."""
    name = dialect if isinstance(dialect, str) else dialect.name
    if name in MYSQL_NAMES:
        return MYSQL
    if name == SQLITE:
        return SQLITE
    raise UnsupportedDatabase(f"txstream runs on MySQL, MariaDB or SQLite, not {name!r}")


# MySQL/MariaDB errors that say the server cannot serve now but will: connection refused,
# lost or killed, too many connections, shutting down, read-only (a failover), lock waits and
# deadlocks, login refused (a password being rotated).
_MYSQL_TRANSIENT = {1040, 1045, 1053, 1205, 1213, 1290, 1927, 2002, 2003, 2006, 2013, 2055, 4031}


def is_transient(exc: BaseException) -> bool:
    """Whether a database error means "try again later", not "this batch cannot be stored"."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, InterfaceError):
        return True
    if not isinstance(exc, OperationalError):
        return False
    code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
    if isinstance(code, int):  # MySQL's error number
        return code in _MYSQL_TRANSIENT
    return "locked" in str(exc.orig) or "busy" in str(exc.orig)  # SQLite


@dataclass(frozen=True)
class StoreStatements:
    """The statements of the storing algorithm (txstream.store) that differ by family.

    Each `...ROWS` statement takes its rows as `{rows}`: a VALUES list of SQL literals.
    """

    insert_ignore: str  # INSERT of rows whose txn_id is stored already: skipped, no error
    warning_count: str | None  # the warnings of the statement before (None: never any)
    add_to_windows: str  # upsert of window totals: added to the stored ones
    add_to_buckets: str  # upsert of bucket totals: added to the stored ones

    def into(self, windows: str, buckets: str) -> StoreStatements:
        """These statements, adding to the tables `windows` and `buckets` (made like
        user_window_totals and user_bucket_totals) instead: a rebuild's new tables."""
        return replace(
            self,
            add_to_windows=self.add_to_windows.replace(_WINDOWS_INTO, f"INTO {windows} ", 1),
            add_to_buckets=self.add_to_buckets.replace(_BUCKETS_INTO, f"INTO {buckets} ", 1),
        )


_INSERT = (
    "INSERT{verb} INTO transactions (txn_id, user_id, amount, ts, received_at) VALUES {{rows}}"
)
_WINDOWS_INTO, _BUCKETS_INTO = "INTO user_window_totals ", "INTO user_bucket_totals "
_WINDOWS = (
    f"INSERT {_WINDOWS_INTO}"
    "(user_id, window_start, tx_count, amount_sum, amount_min, amount_max, updated_at) "
    "VALUES {{rows}} {merge}"
)
_BUCKETS = (
    f"INSERT {_BUCKETS_INTO}(user_id, bucket_start, tx_count, amount_sum) "
    "VALUES {{rows}} {merge}"
)
STATEMENTS = {
    MYSQL: StoreStatements(
        insert_ignore=_INSERT.format(verb=" IGNORE"),
        warning_count="SELECT @@warning_count",
        add_to_windows=_WINDOWS.format(
            merge="ON DUPLICATE KEY UPDATE "
            "tx_count = tx_count + VALUES(tx_count), "
            "amount_sum = amount_sum + VALUES(amount_sum), "
            "amount_min = LEAST(amount_min, VALUES(amount_min)), "
            "amount_max = GREATEST(amount_max, VALUES(amount_max)), "
            "updated_at = VALUES(updated_at)"
        ),
        add_to_buckets=_BUCKETS.format(
            merge="ON DUPLICATE KEY UPDATE "
            "tx_count = tx_count + VALUES(tx_count), "
            "amount_sum = amount_sum + VALUES(amount_sum)"
        ),
    ),
    SQLITE: StoreStatements(
        insert_ignore=_INSERT.format(verb=" OR IGNORE"),
        warning_count=None,  # SQLite stores what it is given; values are validated before
        add_to_windows=_WINDOWS.format(
            merge="ON CONFLICT (user_id, window_start) DO UPDATE SET "
            "tx_count = tx_count + excluded.tx_count, "
            "amount_sum = dec_add(amount_sum, excluded.amount_sum), "
            "amount_min = dec_least(amount_min, excluded.amount_min), "
            "amount_max = dec_greatest(amount_max, excluded.amount_max), "
            "updated_at = excluded.updated_at"
        ),
        add_to_buckets=_BUCKETS.format(
            merge="ON CONFLICT (user_id, bucket_start) DO UPDATE SET "
            "tx_count = tx_count + excluded.tx_count, "
            "amount_sum = dec_add(amount_sum, excluded.amount_sum)"
        ),
    ),
}
PLAIN_INSERT = _INSERT.format(verb="")  # the same on both: raises on a stored txn_id or a bad value


def statements(dialect: Dialect) -> StoreStatements:
    """The storing statements of `dialect`'s family."""
    return STATEMENTS[family(dialect)]


class Money(TypeDecorator):
    """A `DECIMAL(precision, 2)` amount, always a `Decimal` in Python."""

    impl = Numeric
    cache_ok = True

    def __init__(self, precision: int = 20) -> None:
        super().__init__(precision=precision, scale=2, asdecimal=True)

    def load_dialect_impl(self, dialect):
        if dialect.name == SQLITE:  # any other dialect, even SQL printed for people: DECIMAL
            return dialect.type_descriptor(String(self.impl.precision + 2))
        return dialect.type_descriptor(self.impl)

    def process_bind_param(self, value, dialect):
        if value is not None and dialect.name == SQLITE:
            return str(value)
        return value

    def process_result_value(self, value, dialect):
        return None if value is None else Decimal(value)


class _MoneyFunction(FunctionElement):
    type = Money(30)
    inherit_cache = True


class money_sum(_MoneyFunction):  # noqa: N801 - SQL function names are lower case
    """SUM() of an amount column, exact on every database."""

    inherit_cache = True


class money_add(_MoneyFunction):  # noqa: N801
    """a + b of two amounts."""

    inherit_cache = True


class money_least(_MoneyFunction):  # noqa: N801
    """The smaller of two amounts."""

    inherit_cache = True


class money_greatest(_MoneyFunction):  # noqa: N801
    """The larger of two amounts."""

    inherit_cache = True


def _sql(template: str):
    def render(element, compiler, **kw):
        return template.format(*(compiler.process(c, **kw) for c in element.clauses))

    return render


compiles(money_sum)(_sql("SUM({0})"))
compiles(money_add)(_sql("({0} + {1})"))
compiles(money_least)(_sql("LEAST({0}, {1})"))
compiles(money_greatest)(_sql("GREATEST({0}, {1})"))
compiles(money_sum, SQLITE)(_sql("dec_sum({0})"))
compiles(money_add, SQLITE)(_sql("dec_add({0}, {1})"))
compiles(money_least, SQLITE)(_sql("dec_least({0}, {1})"))
compiles(money_greatest, SQLITE)(_sql("dec_greatest({0}, {1})"))


class _DecimalSum:
    """SQLite aggregate: the exact sum of decimal texts (NULL for no rows, like SUM)."""

    def __init__(self) -> None:
        self.total: Decimal | None = None

    def step(self, value: str | None) -> None:
        if value is not None:
            self.total = MONEY_CONTEXT.add(self.total or Decimal(0), Decimal(value))

    def finalize(self) -> str | None:
        return None if self.total is None else str(self.total)


def _decimal_add(a: str, b: str) -> str:
    return str(MONEY_CONTEXT.add(Decimal(a), Decimal(b)))


def _decimal_least(a: str, b: str) -> str:
    return a if Decimal(a) <= Decimal(b) else b


def _decimal_greatest(a: str, b: str) -> str:
    return a if Decimal(a) >= Decimal(b) else b


def _use_wal(cursor: sqlite3.Cursor, timeout: float = 30) -> None:
    """Put the database file in WAL mode, which it keeps.

    Processes that open a new file at once all try to switch it; SQLite answers the
    losers "database is locked" at once, without waiting (its busy timeout does not apply),
    so they try again until one has switched it.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")  # once WAL, a no-op without locks
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def configure_sqlite(engine: Engine) -> None:
    """Make every SQLite connection of `engine` work as txstream needs.

    The decimal functions; WAL, so that the web app reads while the subscriber writes (the
    demo's three processes); and transactions that SQLAlchemy begins itself: the sqlite3
    module's own implicit BEGIN would leave SAVEPOINTs outside any transaction, so that
    releasing one would commit (SQLAlchemy's documented recipe); a connection's
    `SQLITE_BEGIN` option says which BEGIN.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # no implicit BEGIN or COMMIT
        dbapi_connection.create_aggregate("dec_sum", 1, _DecimalSum)
        dbapi_connection.create_function("dec_add", 2, _decimal_add, deterministic=True)
        dbapi_connection.create_function("dec_least", 2, _decimal_least, deterministic=True)
        dbapi_connection.create_function("dec_greatest", 2, _decimal_greatest, deterministic=True)
        cursor = dbapi_connection.cursor()
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get(SQLITE_BEGIN, "BEGIN"))
