"""The emitter: publishes fake card transactions to a Redis channel at random intervals.

Arrivals form a Poisson process (exponential gaps, mean `--rate` per second); a few
users are far more active than the rest (Zipf-like weights); most amounts are small
purchases, some are large, a few are refunds (negative). Each message is a wire line
`user_id,amount,timestamp,txn_id` and is logged as in the seed:

    10/06/2019 06:37:49 PM INFO pub_transactions: 1,-446.90,1570358269.483609,<uuid>

    python emitter_and_pub.py --rate 2 --users 100
    python emitter_and_pub.py --count 1000 --rate 0 --seed 7    # a reproducible burst
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import sys
import time
import uuid
from decimal import Decimal
from itertools import accumulate

import redis

import config
from txstream.runtime import GiveUp, StopFlag, retry
from txstream.wire import Transaction, format_line, utcnow

log = logging.getLogger("pub_transactions")

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)
BURST_CHUNK = 1000  # messages per pipeline round trip with --rate 0


class FakeTransactions:
    """An endless source of plausible card transactions, reproducible from a seed."""

    def __init__(self, users: int, rng: random.Random) -> None:
        self.rng = rng
        self.users = list(range(1, users + 1))
        # User k is about 1/k as active as user 1: a few heavy users, a long tail.
        self.cum_weights = list(accumulate(1 / k**1.1 for k in self.users))

    def next(self) -> Transaction:
        """A new transaction, timestamped now."""
        rng = self.rng
        user_id = rng.choices(self.users, cum_weights=self.cum_weights)[0]
        kind = rng.random()
        if kind < 0.05:  # refund
            amount = -rng.lognormvariate(math.log(40), 0.8)
        elif kind < 0.97:  # everyday purchase: median 25, mostly under 100
            amount = rng.lognormvariate(math.log(25), 0.9)
        else:  # occasional large purchase
            amount = rng.lognormvariate(math.log(1500), 0.7)
        cents = max(1, round(abs(amount) * 100)) * (-1 if amount < 0 else 1)
        return Transaction(
            txn_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            user_id=user_id,
            amount=Decimal(cents).scaleb(-2),
            ts=utcnow(),
        )


class Emitter:
    """Publishes transactions from a `FakeTransactions` at Poisson-distributed times."""

    def __init__(self, client: redis.Redis, channel: str, stop: StopFlag, quiet: bool = False):
        self.client = client
        self.channel = channel
        self.stop = stop
        self.quiet = quiet
        self.published = 0
        self.no_listener = 0  # messages no subscriber received: pub/sub drops them

    def run(self, source: FakeTransactions, rate: float, count: int | None) -> None:
        """Publish until `count` messages are out (or forever), or until stopped.

        With `rate` 0 there are no pauses: messages go out in pipelined chunks.
        """
        due = time.monotonic()
        while not self.stop and (count is None or self.published < count):
            if rate == 0:
                size = BURST_CHUNK if count is None else min(BURST_CHUNK, count - self.published)
            else:
                size = 1
                due += source.rng.expovariate(rate)
                if self.stop.wait(due - time.monotonic()):
                    break
            self._send([format_line(source.next()) for _ in range(size)])

    def _send(self, lines: list[str]) -> None:
        def publish_all() -> list[int]:
            with self.client.pipeline(transaction=False) as pipe:
                for line in lines:
                    pipe.publish(self.channel, line)
                return pipe.execute()

        receivers = retry("redis", publish_all, REDIS_ERRORS, self.stop)
        for line, count in zip(lines, receivers, strict=True):
            self._published(line, count)

    def _published(self, line: str, receivers: int) -> None:
        self.published += 1
        if receivers == 0:
            if self.no_listener == 0:
                log.warning(
                    "no subscriber is listening on channel %r: pub/sub keeps nothing, so "
                    "these transactions are lost; start sub_and_store.py first",
                    self.channel,
                )
            self.no_listener += 1
        if not self.quiet:
            log.info("%s", line)


def parse_args(argv: list[str] | None, settings: config.Settings) -> argparse.Namespace:
    """Command-line flags; Redis URL and channel default to the environment or `.env`."""
    parser = argparse.ArgumentParser(
        description="Publish fake credit-card transactions to a Redis channel at random "
        "(Poisson) intervals, one `user_id,amount,timestamp,txn_id` line each.",
        epilog="Settings come from the environment or .env (see .env.example); flags win.",
    )
    parser.add_argument(
        "--rate",
        type=_non_negative_float,
        default=1.0,
        help="mean transactions per second; 0 = as fast as possible (default: %(default)s)",
    )
    parser.add_argument(
        "--users",
        type=config.positive_int_flag,
        default=100,
        help="user population (default: %(default)s)",
    )
    parser.add_argument(
        "--count",
        type=config.positive_int_flag,
        default=None,
        help="stop after this many (default: run until Ctrl-C)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed, for reproducible runs")
    parser.add_argument("--channel", default=settings.channel, help="default: %(default)s")
    parser.add_argument("--redis-url", default=settings.redis_url, help="default: REDIS_URL")
    parser.add_argument("--quiet", action="store_true", help="do not log every transaction")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Publish transactions until `--count` or Ctrl-C; print a one-line summary."""
    try:
        settings = config.load()
    except config.ConfigError as exc:
        print(f"emitter_and_pub: {exc}", file=sys.stderr)
        return 2
    args = parse_args(argv, settings)
    config.configure_logging(settings.log_level)
    log.info(
        "publishing to channel %r on %s: rate=%s tx/s, users=%d, count=%s, seed=%s",
        args.channel,
        config.mask_url(args.redis_url),
        args.rate or "max",
        args.users,
        args.count or "unlimited",
        args.seed,
    )
    stop = StopFlag().install()
    client = redis.Redis.from_url(args.redis_url, socket_connect_timeout=5, socket_timeout=30)
    emitter = Emitter(client, args.channel, stop, quiet=args.quiet)
    started = time.monotonic()
    status = 0
    try:
        emitter.run(FakeTransactions(args.users, random.Random(args.seed)), args.rate, args.count)
    except GiveUp as exc:
        log.error("stopped with a transaction not sent: %s", exc)
        status = 1
    finally:
        client.close()
    elapsed = time.monotonic() - started
    log.info(
        "published %d transactions in %.1f s (%.0f tx/s) to channel %r; %d had no subscriber",
        emitter.published,
        elapsed,
        emitter.published / max(elapsed, 1e-9),
        args.channel,
        emitter.no_listener,
    )
    return status


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
