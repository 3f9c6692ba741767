"""The key API tests of tests/test_api.py, run again on the real MariaDB and Redis.

The imported tests are collected here too, and here their `app` is the one below: the
same app as in conftest, with the real servers swapped in, reaching MariaDB through each
of SQLAlchemy's URLs for it (`mysql+pymysql://` and `mariadb+pymysql://`), with the web
app's own engine.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

import models
from tests.test_api import (  # noqa: F401 - collected and run here
    test_healthz_503_names_what_is_down,
    test_healthz_ok,
    test_pages_return_every_row_once_newest_first,
    test_recent_lists_the_latest_five_newest_first,
    test_sum_counts_start_exclusive_end_inclusive,
    test_sum_is_exact_for_large_amounts,
    test_sum_of_a_user_without_transactions_is_zero,
    test_sum_takes_fractional_hours,
    test_user_sum_query_returns_exact_decimals,
    test_windows_newest_first_with_string_amounts,
)
from txstream import queries
from txstream.keys import Keys

pytestmark = pytest.mark.services


@pytest.fixture(params=["mysql+pymysql", "mariadb+pymysql"])
def app(request, app, mysql_engine, redis_client, key_prefix):
    """The test app on the real MariaDB (empty tables) and Redis (keys of its own)."""
    url = mysql_engine.url.set(drivername=request.param).render_as_string(hide_password=False)
    engine = models.make_engine(url, reads_only=True)
    app.config.update(
        ENGINE=engine, REDIS=redis_client, KEY_PREFIX=key_prefix, KEYS=Keys(key_prefix)
    )
    app.config["SEED_ENGINE"] = mysql_engine  # the tests' writes: `engine` only reads
    yield app
    engine.dispose()


@pytest.mark.parametrize("in_a_range", [False, True])
@pytest.mark.parametrize("user_id", [None, 1])
def test_pages_read_an_index_range(app, user_id, in_a_range):
    now = app.config["CLOCK"]()
    before = queries.Position(now, "x")
    since, until = (now - timedelta(days=1), now) if in_a_range else (None, None)
    with app.config["ENGINE"].connect() as conn:
        statement = queries._page_statement(
            user_id is not None, True, since is not None, until is not None
        )
        query = statement.params(queries._page_params(51, user_id, before, since, until))
        compiled = query.compile(conn, compile_kwargs={"literal_binds": True})
        plan = conn.execute(text(f"EXPLAIN {compiled}")).mappings().one()

    assert plan["key"] == ("ix_transactions_ts" if user_id is None else "ix_transactions_user_ts")
    assert plan["type"] == "range"
    assert "filesort" not in (plan["Extra"] or "")
