"""The subscriber: stores every transaction from the Redis channel in MySQL, exactly once.

For each batch (BATCH_SIZE messages, or BATCH_INTERVAL_MS after the first one):
the new transactions and their window totals go to MySQL in one transaction, then
each user's latest-5 list and the dead letters go to Redis. A malformed message is
logged, counted and kept as a dead letter; it never stops the subscriber.

    python sub_and_store.py                # channel `transactions`, settings from env/.env
    python sub_and_store.py --help
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import time
from dataclasses import dataclass, field

import redis
from sqlalchemy.exc import InterfaceError, OperationalError

import config
import models
from txstream.keys import Keys
from txstream.runtime import Backoff, GiveUp, StopFlag, retry
from txstream.store import Store
from txstream.wire import MalformedMessage, Transaction, dead_letter, parse, utcnow

log = logging.getLogger("sub_and_store")

DB_ERRORS = (OperationalError, InterfaceError)  # connection lost, server down, deadlock
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)
MAX_WAIT = 0.2  # seconds: how soon a stop request is noticed


@dataclass
class Batch:
    """Messages received since the last flush."""

    txns: list[Transaction] = field(default_factory=list)
    dead: list[dict] = field(default_factory=list)
    started: float = 0.0  # monotonic time of the first message

    def __len__(self) -> int:
        return len(self.txns) + len(self.dead)

    def add(self, raw: bytes) -> None:
        """Parse `raw` into the batch, or keep it as a dead letter with its reason."""
        if not self:
            self.started = time.monotonic()
        try:
            self.txns.append(parse(raw))
        except MalformedMessage as exc:
            log.warning("malformed message (%s): %r", exc, raw[:200])
            self.dead.append(dead_letter(raw, str(exc), utcnow()))


@dataclass
class Counts:
    """What the subscriber has done so far."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    dead: int = 0
    disconnects: int = 0


class Subscriber:
    """Reads the pub/sub channel and stores what it reads, batch by batch."""

    def __init__(
        self,
        settings: config.Settings,
        client: redis.Redis,
        store: Store,
        stop: StopFlag,
        stats_interval: float = 5.0,
    ) -> None:
        self.settings = settings
        self.client = client
        self.store = store
        self.stop = stop
        self.stats_interval = stats_interval
        self.counts = Counts()

    def run(self, max_messages: int | None = None) -> None:
        """Read and store until stopped (or after `max_messages`), then flush what is left."""
        interval = self.settings.batch_interval_ms / 1000
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        retry("redis", lambda: pubsub.subscribe(self.settings.channel), REDIS_ERRORS, self.stop)
        log.info("subscribed to channel %r; waiting for transactions", self.settings.channel)
        batch = Batch()
        backoff = Backoff()
        next_report = time.monotonic() + self.stats_interval
        last_report = (time.monotonic(), 0)
        try:
            while not self.stop:
                if max_messages is not None and self.counts.received >= max_messages:
                    break
                # Wake for the batch deadline, the next progress line, and a stop
                # request (a signal does not interrupt the wait).
                due = min(batch.started + interval if batch else math.inf, next_report)
                wait = min(due - time.monotonic(), MAX_WAIT)
                try:
                    message = pubsub.get_message(timeout=max(wait, 0.001))
                    backoff = Backoff()
                except REDIS_ERRORS as exc:
                    self._on_disconnect(exc, backoff)
                    message = None
                if message is not None and message["type"] == "message":
                    self.counts.received += 1
                    batch.add(message["data"])
                if batch and (
                    len(batch) >= self.settings.batch_size
                    or time.monotonic() - batch.started >= interval
                ):
                    self.flush(batch)
                    batch = Batch()
                if time.monotonic() >= next_report:
                    last_report = self._report(last_report)
                    next_report = time.monotonic() + self.stats_interval
            if batch:
                log.info("stopping: storing the last %d message(s)", len(batch))
                self.flush(batch)
        finally:
            pubsub.close()
        self._report(last_report)

    def flush(self, batch: Batch) -> None:
        """Store a batch: MySQL first, then Redis (retrying each while its server is down)."""
        committed = retry("database", lambda: self.store.commit(batch.txns), DB_ERRORS, self.stop)
        dead = batch.dead + committed.rejected
        retry(
            "redis", lambda: self.store.update_redis(committed.new, dead), REDIS_ERRORS, self.stop
        )
        self.counts.stored += len(committed.new)
        self.counts.duplicates += committed.duplicates
        self.counts.dead += len(dead)

    def _on_disconnect(self, exc: Exception, backoff: Backoff) -> None:
        # Pub/sub keeps nothing: whatever is published while we are away is lost.
        self.counts.disconnects += 1
        delay = backoff.delay()
        log.error(
            "lost the Redis connection (%s): messages published until it is back are LOST "
            "(pub/sub keeps nothing); reconnecting in %.1f s",
            exc,
            delay,
        )
        self.stop.wait(delay)

    def _report(self, last: tuple[float, int]) -> tuple[float, int]:
        now, stored = time.monotonic(), self.counts.stored
        rate = (stored - last[1]) / max(now - last[0], 1e-9)
        c = self.counts
        log.info(
            "stored=%d duplicates=%d dead=%d received=%d disconnects=%d rate=%.0f tx/s",
            c.stored,
            c.duplicates,
            c.dead,
            c.received,
            c.disconnects,
            rate,
        )
        return now, stored


def parse_args(argv: list[str] | None, settings: config.Settings) -> argparse.Namespace:
    """Command-line flags; each defaults to its setting from the environment or `.env`."""
    parser = argparse.ArgumentParser(
        description="Subscribe to the transactions channel and store every transaction "
        "in MySQL exactly once, with per-user window totals and latest-5 lists in Redis.",
        epilog="Settings come from the environment or .env (see .env.example); flags win.",
    )
    parser.add_argument("--redis-url", default=settings.redis_url, help="default: REDIS_URL")
    parser.add_argument(
        "--database-url",
        default=settings.database_url,
        help="SQLAlchemy URL; default: DATABASE_URL",
    )
    parser.add_argument("--channel", default=settings.channel, help="default: %(default)s")
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
        "--max-messages",
        type=config.positive_int_flag,
        default=None,
        help="exit after this many messages (default: run until Ctrl-C or SIGTERM)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the subscriber until Ctrl-C or SIGTERM; 0 when everything received was stored."""
    try:
        settings = config.load()
    except config.ConfigError as exc:
        print(f"sub_and_store: {exc}", file=sys.stderr)
        return 2
    args = parse_args(argv, settings)
    settings = dataclasses.replace(
        settings,
        redis_url=args.redis_url,
        database_url=args.database_url,
        channel=args.channel,
        batch_size=args.batch_size,
        batch_interval_ms=args.batch_interval_ms,
    )
    config.configure_logging(settings.log_level)
    log.info(
        "starting: redis=%s channel=%r database=%s window=%sh batch=%d msgs/%d ms prefix=%r",
        config.mask_url(settings.redis_url),
        settings.channel,
        config.mask_url(settings.database_url),
        settings.window_hours,
        settings.batch_size,
        settings.batch_interval_ms,
        settings.key_prefix,
    )
    stop = StopFlag().install()
    engine = models.make_engine(settings.database_url)
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=30)
    try:
        retry("database", lambda: models.create_schema(engine), DB_ERRORS, stop)
        store = Store(engine, client, Keys(settings.key_prefix), settings.window_seconds)
        subscriber = Subscriber(settings, client, store, stop, args.stats_interval)
        subscriber.run(args.max_messages)
    except GiveUp as exc:
        log.error("stopped with work not done: %s", exc)
        return 1
    finally:
        client.close()
        engine.dispose()
    log.info("stopped%s", f" on {stop.signal_name}" if stop.signal_name else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
