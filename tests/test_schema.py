"""schema.sql and models.py create the same tables on a real MariaDB."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import OperationalError

import config
import models
from tests.helpers import TEST_DATABASE_URL, service_unavailable

pytestmark = pytest.mark.services

SCHEMA_SQL = Path(__file__).resolve().parent.parent / "schema.sql"
_RUN_DATABASE = make_url(TEST_DATABASE_URL).database  # this run's: another run has its own
FROM_MODELS = f"{_RUN_DATABASE}_schema_models"
FROM_SQL = f"{_RUN_DATABASE}_schema_sql"

COLUMNS = """
SELECT TABLE_NAME, ORDINAL_POSITION, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT,
       CHARACTER_SET_NAME, COLLATION_NAME, COLUMN_COMMENT, EXTRA
FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = :db
ORDER BY TABLE_NAME, ORDINAL_POSITION
"""
STATISTICS = """
SELECT TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, NON_UNIQUE, SUB_PART, INDEX_TYPE
FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = :db
ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX
"""
TABLES = """
SELECT TABLE_NAME, ENGINE, TABLE_COLLATION, TABLE_COMMENT
FROM information_schema.TABLES WHERE TABLE_SCHEMA = :db
ORDER BY TABLE_NAME
"""


def sql_statements(database: str) -> list[str]:
    """schema.sql's statements, with the database `txstream` renamed to `database`."""
    lines = [
        line for line in SCHEMA_SQL.read_text().splitlines() if not line.lstrip().startswith("--")
    ]
    script = re.sub(r"\btxstream\b", database, "\n".join(lines))
    return [statement.strip() for statement in script.split(";") if statement.strip()]


@pytest.fixture(scope="module")
def server():
    """An engine on the MariaDB server (no database); the two test databases dropped after."""
    engine = models.make_engine(
        make_url(TEST_DATABASE_URL).set(database="").render_as_string(hide_password=False)
    )

    def drop_test_databases():
        with engine.begin() as conn:
            for name in (FROM_MODELS, FROM_SQL):
                conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))

    try:
        drop_test_databases()
    except OperationalError as exc:
        engine.dispose()
        service_unavailable(f"MariaDB at {config.mask_url(TEST_DATABASE_URL)}", exc)
    try:
        yield engine
    finally:
        drop_test_databases()
        engine.dispose()


@pytest.fixture(scope="module")
def databases(server):
    """The two databases: one made by models.create_schema, one by schema.sql."""
    url = make_url(TEST_DATABASE_URL).set(database=FROM_MODELS)
    engine = models.make_engine(url.render_as_string(hide_password=False))
    try:
        models.create_schema(engine)
    finally:
        engine.dispose()
    with server.connect() as conn:
        for statement in sql_statements(FROM_SQL):
            conn.exec_driver_sql(statement)
        conn.commit()
    return FROM_MODELS, FROM_SQL


def test_schema_sql_names_the_txstream_database():
    statements = sql_statements("other_db")
    assert statements[:2] == [
        "CREATE DATABASE IF NOT EXISTS other_db CHARACTER SET utf8mb4",
        "USE other_db",
    ]
    assert len(statements) == 2 + len(models.Base.metadata.tables)  # a CREATE TABLE per model


@pytest.mark.parametrize(
    "query", [COLUMNS, STATISTICS, TABLES], ids=["columns", "indexes", "tables"]
)
def test_schema_sql_equals_models(server, databases, query):
    from_models, from_sql = databases
    with server.connect() as conn:
        expected = conn.execute(text(query), {"db": from_models}).all()
        actual = conn.execute(text(query), {"db": from_sql}).all()
    assert expected, f"models.create_schema made nothing in {from_models}"
    assert {row[0] for row in expected} == {
        "api_tokens",
        "settings",
        "transactions",
        "user_bucket_totals",
        "user_window_totals",
        "web_sessions",
    }
    assert actual == expected


def test_both_databases_use_utf8mb4(server, databases):
    query = text(
        "SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA "
        "WHERE SCHEMA_NAME IN (:a, :b)"
    )
    with server.connect() as conn:
        charsets = conn.scalars(query, {"a": databases[0], "b": databases[1]}).all()
    assert charsets == ["utf8mb4", "utf8mb4"]
