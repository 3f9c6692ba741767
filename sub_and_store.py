"""The subscriber: stores every transaction it reads from Redis in MySQL, exactly once.

It reads the pub/sub channel or, with TRANSPORT=stream, the stream as a consumer of
the group `store`. For each batch (BATCH_SIZE messages, or BATCH_INTERVAL_MS after
the first one): the new transactions and their window totals go to MySQL in one
transaction; then, in one Redis transaction, each user's recent list, the dead
letters and the stream acknowledgements (txstream.store). A malformed message is
logged, counted and kept as a dead letter. A batch the database refuses for another
reason than an outage is logged with its traceback and stays in the stream (pub/sub:
becomes dead letters); an entry delivered more than MAX_DELIVERIES times is then stored
alone, a dead letter only if refused. Stream entries deleted before they were stored are
logged and counted as lost (txstream.transport). Nothing stops the subscriber but a signal.
Prometheus metrics (README, "Metrics") are served on METRICS_BIND:METRICS_PORT.

    python sub_and_store.py                      # settings from the environment or .env
    python sub_and_store.py --transport stream   # durable: see README
    python sub_and_store.py --help
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import config
import models
from txstream.aggregates import Layout, LayoutMismatch
from txstream.dialect import UnsupportedDatabase, is_transient
from txstream.heartbeats import Heartbeat
from txstream.metrics import SubscriberMetrics
from txstream.rebuild_redis import Rebuilder, RedisRebuild
from txstream.recent import RecentLists
from txstream.redisconn import connect, resolve
from txstream.runtime import GiveUp, Outage, StopFlag, retry, short_error, with_traceback
from txstream.store import Committed, Prepared, Store, dead_letter, ensure_layout
from txstream.times import utcnow
from txstream.transaction import Transaction
from txstream.transport import (
    Message,
    PartitionsMismatch,
    Source,
    agree_on_partitions,
    is_redis_outage,
    make_source,
)
from txstream.wire import MalformedMessage, latest_accepted, parse

log = logging.getLogger("sub_and_store")

MAX_WAIT = 0.2  # seconds: how soon a stop request is noticed


@dataclass
class Batch:
    """Messages received since the last flush."""

    clock_skew: int = config.DEFAULT_MAX_CLOCK_SKEW  # seconds: MAX_CLOCK_SKEW
    messages: list[Message] = field(default_factory=list)  # all of them, to acknowledge
    txns: list[Transaction] = field(default_factory=list)
    parsed: list[Message] = field(default_factory=list)  # the messages of `txns`
    dead: list[dict] = field(default_factory=list)
    started: float = 0.0  # monotonic time of the first message
    latest: int = 0  # the latest event time accepted, epoch us: set at the first message

    def __len__(self) -> int:
        return len(self.messages)

    def add(self, message: Message) -> None:
        """Parse `message` into the batch, or keep it as a dead letter with its reason."""
        if not self.messages:  # the clock is read once per batch: parsing is the hot path
            self.started = time.monotonic()
            self.latest = latest_accepted(self.clock_skew)
        self.messages.append(message)
        try:
            if message.problem:
                raise MalformedMessage(message.problem)
            self.txns.append(parse(message.raw, message.missing_id, self.latest))
            self.parsed.append(message)
        except MalformedMessage as exc:
            log.warning("dead letter (%s): %r", exc, message.raw[:200])
            self.dead.append(dead_letter(message.raw, str(exc), whole=message.whole))

    @property
    def over_delivered(self) -> int:
        """How often its message was handed out, when it is one tried alone after
        MAX_DELIVERIES (`Message.over_delivered`); else 0."""
        return max((m.over_delivered for m in self.messages), default=0)

    @property
    def entry_ids(self) -> dict[int, list[str]]:
        """The stream entry ids of its messages, by partition (none from pub/sub)."""
        ids: dict[int, list[str]] = {}
        for m in self.messages:
            if m.entry_id:
                ids.setdefault(m.partition, []).append(m.entry_id)
        return ids


@dataclass
class Counts:
    """What the subscriber has done so far."""

    received: int = 0
    stored: int = 0  # counted at the commit, as are duplicates
    duplicates: int = 0
    dead: int = 0  # counted once written to Redis
    pending: int = 0  # in batches that failed: left in the stream, to be delivered again
    last_commit: datetime | None = None  # when the last batch was committed


class Subscriber:
    """Reads transactions from a `Source` and stores them, batch by batch."""

    def __init__(
        self,
        settings: config.Settings,
        source: Source,
        store: Store,
        stop: StopFlag,
        stats_interval: float = 5.0,
    ) -> None:
        self.settings = settings
        self.source = source
        self.store = store
        self.stop = stop
        self.stats_interval = stats_interval
        self.counts = Counts()
        self.redis = Outage("redis")
        self.database = Outage("database")
        self.metrics = SubscriberMetrics(self.counts, (self.redis, self.database), source)
        self._db_stage = ThreadPoolExecutor(1, thread_name_prefix="db")
        self._redis_stage = ThreadPoolExecutor(1, thread_name_prefix="redis")

    def run(self, max_messages: int | None = None) -> None:
        """Read and store until stopped (or after `max_messages`), then store what is left."""
        recent = RecentLists(self.store.client, self.store.keys)
        try:  # nothing is in hand yet, so a stop request ends the wait at once
            retry(self.redis, self.source.start, is_redis_outage, self.stop, grace=0)
            retry(self.redis, recent.migrate, is_redis_outage, self.stop, grace=0)
        except GiveUp:
            log.info("stopped before Redis answered")
            return
        heartbeat = Heartbeat(
            self.store.client,
            self.store.keys,
            self.source.name,
            self.settings.transport,
            lambda: (self.counts.stored, self.counts.last_commit),
            chores=self.source.tidy,
        )
        heartbeat.start()
        # Redis's derived state, rebuilt from the database if Redis lost it (now too).
        store = self.store
        rebuilder = Rebuilder(RedisRebuild(store.engine, store.client, store.keys, heartbeat.name))
        rebuilder.start()
        log.info("reading %s; waiting for transactions", self.source.describe())
        try:
            self._read_and_store(max_messages)
        finally:
            self._db_stage.shutdown()
            self._redis_stage.shutdown()
            rebuilder.stop()
            heartbeat.stop()

    def _read_and_store(self, max_messages: int | None) -> None:
        """The main loop: while one batch fills, the one before is committed to the database
        and the one before that is written to Redis, each stage in a thread of its own.

        A stage takes batches in the order they were read, so every acknowledgement still
        follows its batch's commit; at most three batches are in hand.
        """
        interval = self.settings.batch_interval_ms / 1000
        batch, flushing = Batch(self.settings.max_clock_skew), None
        next_report = time.monotonic() + self.stats_interval
        last_report = (time.monotonic(), 0)
        while not self.stop:
            if max_messages is not None and self.counts.received >= max_messages:
                break
            # Wake for the batch deadline, the next progress line, and a stop request.
            due = min(batch.started + interval if batch else math.inf, next_report)
            wait = min(due - time.monotonic(), MAX_WAIT)
            room = self.settings.batch_size - len(batch)
            if max_messages is not None:
                room = min(room, max_messages - self.counts.received)
            try:
                messages = self.source.read(room, wait)
            except Exception as exc:  # the top of the loop: whatever it is, back off
                if not is_redis_outage(exc):
                    log.error("reading failed: %s", with_traceback(exc))
                self.stop.wait(self.redis.failed(exc))
                continue
            self.redis.ok()
            for message in messages:
                if message.over_delivered:
                    flushing = self._hand_over(flushing, self._alone(message))
                else:
                    batch.add(message)
            self.counts.received += len(messages)
            if batch and (
                len(batch) >= self.settings.batch_size
                or time.monotonic() - batch.started >= interval
            ):
                flushing = self._hand_over(flushing, batch)
                batch = Batch(self.settings.max_clock_skew)
            if time.monotonic() >= next_report:
                last_report = self._report(last_report)
                next_report = time.monotonic() + self.stats_interval
        for message in self.source.stop_reading():
            batch.add(message)
            self.counts.received += 1
        if flushing is not None:
            flushing.result().result()  # committed, then written to Redis
        if batch:
            log.info("stopping: storing the last %d message(s)", len(batch))
            self.flush(batch)
        self._report(last_report)

    def _alone(self, message: Message) -> Batch:
        """A batch of one message handed out more than MAX_DELIVERIES times: tried apart
        from the others, so that an entry the database refuses holds up no other. Stored
        before, it is a duplicate; refused, a dead letter (`_not_stored`)."""
        log.warning(
            "entry %s of partition %d was delivered %d times (MAX_DELIVERIES=%d): storing it alone",
            message.entry_id,
            message.partition,
            message.over_delivered,
            self.settings.max_deliveries,
        )
        batch = Batch(self.settings.max_clock_skew)
        batch.add(message)
        return batch

    def _hand_over(self, flushing: Future | None, batch: Batch) -> Future:
        """Prepare `batch`'s statements while the batch before it is in the database stage;
        wait for that one (raising its errors); pass `batch` on."""
        prepared = self.store.prepare(batch.txns) if batch.txns else None
        redis_stage = flushing.result() if flushing is not None else None
        return self._db_stage.submit(self._commit_then_pass_on, batch, prepared, redis_stage)

    def _commit_then_pass_on(
        self, batch: Batch, prepared: Prepared | None, redis_stage: Future | None
    ) -> Future:
        """The database stage: commit `batch`, then queue its Redis writes behind the last."""
        committed = self._commit(batch, prepared)
        if redis_stage is not None:
            redis_stage.result()
        return self._redis_stage.submit(self._write_redis, batch, committed)

    def flush(self, batch: Batch) -> None:
        """Store a batch: the database first; then one Redis transaction with the acks.

        Each step is retried while its server is down. Nothing is acknowledged before
        the commit, so a crash here means redelivery, and the txn_ids make that harmless.
        """
        self._write_redis(batch, self._commit(batch))

    def _commit(self, batch: Batch, prepared: Prepared | None = None) -> Committed | None:
        """The batch committed; None when it failed and stays in the stream."""
        self.metrics.batch_size.observe(len(batch))

        def commit() -> Committed:
            started = time.perf_counter()
            committed = self.store.commit(batch.txns, prepared)
            self.metrics.commit_seconds.observe(time.perf_counter() - started)
            return committed

        try:
            committed = retry(self.database, commit, is_transient, self.stop)
        except GiveUp:
            raise
        except Exception as exc:  # the top of a stage: a batch is never silently lost
            return self._not_stored(batch, exc)
        self.counts.stored += len(committed.new)  # in the database now, whatever Redis does
        self.counts.duplicates += committed.duplicates
        self.counts.last_commit = utcnow()
        return committed

    def _not_stored(self, batch: Batch, exc: Exception) -> Committed | None:
        """A batch the database refused for another reason than an outage.

        From the stream it stays pending: delivered again, and after MAX_DELIVERIES tried
        alone. From pub/sub, where nothing is delivered again, and when refused alone, its
        lines become dead letters with the error as their reason.
        """
        log.error("could not store a batch of %d messages: %s", len(batch), with_traceback(exc))
        tries = batch.over_delivered
        if self.source.durable and not tries:
            log.error(
                "its %d messages stay pending in the stream; they are delivered again, and "
                "stored one by one after %d deliveries",
                len(batch),
                self.settings.max_deliveries,
            )
            self.counts.pending += len(batch)
            return None
        reason = f"not stored: {type(exc).__name__}: {short_error(exc)}"
        if tries:
            reason = (
                f"delivered {tries} times (MAX_DELIVERIES={self.settings.max_deliveries}), {reason}"
            )
        return Committed(rejected=[dead_letter(m.raw, reason) for m in batch.parsed])

    def _write_redis(self, batch: Batch, committed: Committed | None) -> None:
        """The Redis stage: recent lists, dead letters and acknowledgements, in one call."""
        if committed is None:  # left pending: nothing to write, nothing to acknowledge
            return
        dead = batch.dead + committed.rejected
        try:
            retry(
                self.redis,
                lambda: self.store.write_redis(committed, batch.dead, batch.entry_ids),
                is_redis_outage,
                self.stop,
            )
        except GiveUp:
            raise
        except Exception as exc:  # the top of a stage: a batch is never silently lost
            log.error("could not write a batch to Redis: %s", with_traceback(exc))
            if self.source.durable:
                log.error("its %d entries stay pending: delivered again", len(batch))
                self.counts.pending += len(batch)
            else:
                for letter in dead:
                    log.error("dead letter NOT KEPT in Redis: %s", letter)
            return
        self.counts.dead += len(dead)

    def _report(self, last: tuple[float, int]) -> tuple[float, int]:
        now, stored = time.monotonic(), self.counts.stored
        rate = (stored - last[1]) / max(now - last[0], 1e-9)
        c = self.counts
        log.info(
            "stored=%d duplicates=%d dead=%d received=%d disconnects=%d rate=%.0f tx/s "
            "claimed=%d pending_again=%d lost=%d",
            c.stored,
            c.duplicates,
            c.dead,
            c.received,
            self.source.disconnects + self.redis.count,
            rate,
            self.source.claimed,
            c.pending,
            self.source.lost,
        )
        return now, stored


def parse_args(argv: list[str] | None, settings: config.Settings) -> argparse.Namespace:
    """Command-line flags; each defaults to its setting from the environment or `.env`."""
    parser = argparse.ArgumentParser(
        description="Subscribe to the transactions channel and store every transaction "
        "in MySQL exactly once, with per-user window totals, and recent lists in Redis.",
        epilog="Settings come from the environment or .env (see .env.example); flags win.",
    )
    config.add_transport_flags(parser, settings)
    parser.add_argument(
        "--database-url",
        default=settings.database_url,
        help="SQLAlchemy URL; default: DATABASE_URL",
    )
    parser.add_argument(
        "--batch-size",
        type=config.positive_int_flag,
        default=settings.batch_size,
        help="messages per database transaction, at most (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-interval-ms",
        type=config.positive_int_flag,
        default=settings.batch_interval_ms,
        help="flush a partial batch after this many ms (default: %(default)s)",
    )
    parser.add_argument(
        "--stats-interval",
        type=float,
        default=5.0,
        help="seconds between progress lines (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics-port",
        type=port_flag,
        default=settings.metrics_port,
        help="serve Prometheus metrics on this port; 0: none (default: METRICS_PORT or "
        "%(default)s)",
    )
    parser.add_argument(
        "--metrics-bind",
        default=settings.metrics_bind,
        help="the metrics server's address (default: METRICS_BIND or %(default)s)",
    )
    parser.add_argument(
        "--max-messages",
        type=config.positive_int_flag,
        default=None,
        help="exit after this many messages (default: run until Ctrl-C or SIGTERM)",
    )
    return parser.parse_args(argv)


def port_flag(text: str) -> int:
    """argparse type of a TCP port, or 0."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    """Run the subscriber until Ctrl-C or SIGTERM; 0 when everything received was stored."""
    try:
        settings = config.load()
    except config.ConfigError as exc:
        print(f"sub_and_store: {exc}", file=sys.stderr)
        return 2
    args = parse_args(argv, settings)
    settings = dataclasses.replace(
        config.with_transport_flags(settings, args),
        database_url=args.database_url,
        batch_size=args.batch_size,
        batch_interval_ms=args.batch_interval_ms,
        metrics_port=args.metrics_port,
        metrics_bind=args.metrics_bind,
    )
    config.configure_logging(settings.log_level)
    try:
        engine = models.make_engine(settings.database_url)
    except UnsupportedDatabase as exc:
        print(f"sub_and_store: DATABASE_URL: {exc}", file=sys.stderr)
        return 2
    log.info(
        "starting: redis=%s transport=%s partitions=%d database=%s window=%sh "
        "batch=%d msgs/%d ms prefix=%r",
        config.mask_url(settings.redis_url),
        settings.transport,
        settings.stream_partitions,
        config.mask_url(settings.database_url),
        settings.window_hours,
        settings.batch_size,
        settings.batch_interval_ms,
        settings.key_prefix,
    )
    stop = StopFlag().install()

    def prepare_database() -> None:
        models.create_schema(engine)
        ensure_layout(engine, Layout.for_window(settings.window_seconds))

    try:  # the database first: its layout is checked before Redis is needed
        retry(Outage("database"), prepare_database, is_transient, stop, grace=0)
    except GiveUp:
        log.info("stopped before the database answered")
        engine.dispose()
        return 0
    except LayoutMismatch as exc:
        log.error("cannot store: %s", exc)
        engine.dispose()
        return 2
    try:
        settings = retry(Outage("redis"), lambda: resolve(settings), is_redis_outage, stop, 0)
        client = connect(
            settings,
            socket_connect_timeout=5,
            socket_timeout=30,  # well above the blocking reads' 0.2 s
            client_name=f"sub_and_store-{os.getpid()}",  # who is who in CLIENT LIST
        )
        retry(
            Outage("redis"),
            lambda: agree_on_partitions(client, settings.keys),
            is_redis_outage,
            stop,
            grace=0,
        )
    except GiveUp:
        log.info("stopped before Redis answered")
        engine.dispose()
        return 0
    except (config.ConfigError, PartitionsMismatch) as exc:
        log.error("cannot read: %s", exc)
        engine.dispose()
        return 2
    source = make_source(settings, client)
    store = Store(
        engine,
        client,
        settings.keys,
        settings.window_seconds,
        source.group,
        settings.dead_letters_max,
    )
    subscriber = Subscriber(settings, source, store, stop, args.stats_interval)
    metrics_client = None
    if source.group is not None:
        # A client of its own, quick to give up: a scrape must not wait on a stalled Redis.
        metrics_client = connect(settings, socket_connect_timeout=2, socket_timeout=2)
        subscriber.metrics.watch_backlog(metrics_client, settings.keys.streams, source.group)
    metrics_server = None
    if settings.metrics_port:
        where = f"{settings.metrics_bind}:{settings.metrics_port}"
        try:
            metrics_server = subscriber.metrics.serve(settings.metrics_bind, settings.metrics_port)
        except OSError as exc:
            log.error(
                "cannot serve metrics on %s: %s. Another process (a second subscriber?) has "
                "the port: give each subscriber a METRICS_PORT (--metrics-port) of its own, "
                "or 0 for no metrics",
                where,
                exc,
            )
            client.close()
            engine.dispose()
            return 2
        log.info("metrics on http://%s/metrics", where)

    try:
        subscriber.run(args.max_messages)
    except GiveUp as exc:
        c = subscriber.counts
        unsaved = c.received - c.stored - c.duplicates - c.dead - c.pending
        where = "they stay in the stream" if source.durable else "they are LOST"
        log.error("stopped with %d messages not stored (%s): %s", unsaved, where, exc)
        return 1
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        if metrics_client is not None:
            metrics_client.close()
        client.close()
        engine.dispose()
    log.info("stopped%s", f" on {stop.signal_name}" if stop.signal_name else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
