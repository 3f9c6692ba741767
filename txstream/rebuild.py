"""Changing the window: the aggregates built anew for another WINDOW_HOURS, then swapped in.

`flask --app app rebuild-windows --hours H` builds the window and bucket totals of every
stored row into new tables (`user_window_totals_new`, `user_bucket_totals_new`, and
`settings_new` with the new layout) while the web app keeps summing from the old ones,
then swaps the three in at once: on MySQL/MariaDB in one `RENAME TABLE` (atomic), on
SQLite in one transaction (its DDL is transactional). A statement sees either all old or
all new tables, and each sum checks the layout it used against `settings` in that same
statement (txstream.queries), so the web app never sums with a stale one.

No subscriber may write meanwhile: its rows would miss the new totals. The rebuild
refuses to start while a subscriber's heartbeat is live, and it refuses to swap when the
stored rows changed under it (it then drops what it built).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from sqlalchemy import Connection, Engine, MetaData, Table, func, insert, select, text

from models import settings, transactions, user_bucket_totals, user_window_totals
from txstream import redisconn
from txstream.aggregates import BUCKET_SECONDS, WINDOW_SECONDS, Layout, record_layout
from txstream.dialect import MYSQL, family, statements
from txstream.heartbeats import HEARTBEAT_INTERVAL, LIVE_BEATS, live_subscribers
from txstream.keys import Keys
from txstream.store import add_to_aggregates, stored_in_chunks
from txstream.times import utcnow

log = logging.getLogger(__name__)

SWAPPED = (user_window_totals, user_bucket_totals, settings)  # swapped in together
NEW, OLD = "_new", "_old"  # the suffixes of the tables built, and of those swapped out


class RebuildRefused(Exception):
    """The rebuild cannot run or swap now; the text says why and what to do."""


@dataclass(frozen=True, slots=True)
class RowsMark:
    """How many rows are stored, and the highest id: equal marks, unchanged rows (the
    subscribers only ever insert)."""

    count: int
    max_id: int | None


def refuse_if_subscribers_run(client: redis.Redis, keys: Keys) -> None:
    """Raise `RebuildRefused` while a subscriber's heartbeat is live, or Redis cannot tell."""
    try:
        live = [s.name for s in live_subscribers(client, keys, utcnow())]
    except redisconn.ERRORS as exc:
        raise RebuildRefused(
            f"cannot read the subscribers' heartbeats from Redis ({exc}), so cannot tell "
            "whether one is storing rows: run it again once Redis answers"
        ) from None
    if live:
        raise RebuildRefused(
            f"subscribers are running ({', '.join(live)}): the rows they store meanwhile "
            "would be missing from the new totals. Stop every subscriber (SIGTERM or Ctrl-C; "
            "`systemctl stop` under systemd), wait until their heartbeats are older than "
            f"{LIVE_BEATS * HEARTBEAT_INTERVAL:g} s, run this again, then start them with "
            "the new WINDOW_HOURS"
        )


def rows_mark(conn: Connection) -> RowsMark:
    """The stored rows' count and highest id."""
    t = transactions
    return RowsMark(*conn.execute(select(func.count(), func.max(t.c.id))).one())


def new_tables(suffix: str) -> list[Table]:
    """Tables made like the swapped ones, named with `suffix`; their indexes too, since
    SQLite's index names are the database's, not the table's (see `_swap`)."""
    metadata = MetaData()
    tables = [table.to_metadata(metadata, name=table.name + suffix) for table in SWAPPED]
    for table in tables:
        for index in table.indexes:
            index.name = f"{index.name}{suffix}"
    return tables


def rebuild(
    engine: Engine, layout: Layout, mark: RowsMark, done: Callable[[int], None] | None = None
) -> float:
    """Build the aggregates of `layout` beside the old ones, then swap them in; the seconds
    that the swap took.

    `mark` is the stored rows' `rows_mark` when the rebuild began; `done(n)` is called
    after each chunk of `n` rows. Raises `RebuildRefused`, swapping nothing, if the rows
    changed meanwhile.
    """
    built = new_tables(NEW)
    metadata = built[0].metadata
    metadata.drop_all(engine)  # what an interrupted rebuild left
    metadata.create_all(engine)
    try:
        _build(engine, layout, *built, done or (lambda n: None))
        started = time.monotonic()
        _swap(engine, mark)
        swap_seconds = time.monotonic() - started
    except BaseException:
        metadata.drop_all(engine)
        raise
    log.warning("rebuilt the aggregates: %s", layout.describe())
    return swap_seconds


def _build(
    engine: Engine,
    layout: Layout,
    windows: Table,
    buckets: Table,
    settings_new: Table,
    done: Callable[[int], None],
) -> None:
    """Fill the new tables: the totals of every stored row, and the settings with `layout`.

    Each chunk is committed by itself: nobody reads these tables before the swap.
    """
    sql, now = statements(engine.dialect).into(windows.name, buckets.name), utcnow()
    with contextlib.closing(stored_in_chunks(engine)) as chunks:  # its cursor, even on error
        for txns in chunks:
            with engine.begin() as conn:
                add_to_aggregates(conn, sql, txns, layout, now)
            done(len(txns))
    with engine.begin() as conn:
        kept = select(settings).where(settings.c.name.not_in([WINDOW_SECONDS, BUCKET_SECONDS]))
        conn.execute(insert(settings_new).from_select(list(settings.c.keys()), kept))
        record_layout(conn, layout, settings_new)


def _swap(engine: Engine, mark: RowsMark) -> None:
    """Swap the new tables in for the old ones, at once, and drop the old ones."""
    quote = engine.dialect.identifier_preparer.quote
    names = [table.name for table in SWAPPED]
    renames = [(name, name + OLD) for name in names] + [(name + NEW, name) for name in names]
    with engine.begin() as conn:
        if family(engine.dialect) == MYSQL:
            # MySQL commits DDL by itself: the check comes just before the one atomic RENAME.
            _check_unchanged(conn, mark)
            pairs = ", ".join(f"{quote(a)} TO {quote(b)}" for a, b in renames)
            conn.execute(text(f"RENAME TABLE {pairs}"))
        else:  # SQLite: the first rename takes the write lock, so no row comes after the check
            for a, b in renames:
                conn.execute(text(f"ALTER TABLE {quote(a)} RENAME TO {quote(b)}"))
            _check_unchanged(conn, mark)
        new_tables(OLD)[0].metadata.drop_all(conn)
        for table in SWAPPED:  # the swapped-in indexes get their own names back
            for index in table.indexes:
                if family(engine.dialect) == MYSQL:
                    old_name, new_name = quote(index.name + NEW), quote(index.name)
                    conn.execute(
                        text(
                            f"ALTER TABLE {quote(table.name)} RENAME INDEX {old_name} TO {new_name}"
                        )
                    )
                else:
                    conn.execute(text(f"DROP INDEX {quote(index.name + NEW)}"))
                    index.create(conn)


def _check_unchanged(conn: Connection, mark: RowsMark) -> None:
    now = rows_mark(conn)
    if now != mark:
        raise RebuildRefused(
            f"rows were stored during the rebuild ({mark.count} when it began, {now.count} "
            "now): a subscriber ran. Nothing was swapped; stop every subscriber and run it again"
        )
