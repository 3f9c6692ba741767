"""Exact money in SQL: DECIMAL on MySQL, exact decimal text on SQLite.

SQLite has no decimal type (its numbers are floats), so there an amount is stored as
text and summed by Python functions registered on each connection. The query code
uses `money_sum`, `money_add`, `money_least` and `money_greatest`, which compile to
plain SQL on MySQL and to those functions on SQLite.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import Numeric, String, event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator

from txstream.wire import MONEY_CONTEXT


class Money(TypeDecorator):
    """A `DECIMAL(precision, 2)` amount, always a `Decimal` in Python."""

    impl = Numeric
    cache_ok = True

    def __init__(self, precision: int = 20) -> None:
        super().__init__(precision=precision, scale=2, asdecimal=True)

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(self.impl.precision + 2))
        return dialect.type_descriptor(self.impl)

    def process_bind_param(self, value, dialect):
        if value is not None and dialect.name == "sqlite":
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
compiles(money_sum, "sqlite")(_sql("dec_sum({0})"))
compiles(money_add, "sqlite")(_sql("dec_add({0}, {1})"))
compiles(money_least, "sqlite")(_sql("dec_least({0}, {1})"))
compiles(money_greatest, "sqlite")(_sql("dec_greatest({0}, {1})"))


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


def install_sqlite_functions(engine: Engine) -> None:
    """Register the decimal functions on every SQLite connection of `engine`."""

    @event.listens_for(engine, "connect")
    def _register(dbapi_connection, _record) -> None:
        dbapi_connection.create_aggregate("dec_sum", 1, _DecimalSum)
        dbapi_connection.create_function("dec_add", 2, _decimal_add, deterministic=True)
        dbapi_connection.create_function("dec_least", 2, _decimal_least, deterministic=True)
        dbapi_connection.create_function("dec_greatest", 2, _decimal_greatest, deterministic=True)
