"""The emitter: publishes fake card transactions to Redis at random intervals.

To the pub/sub channel, or with `--transport stream` (TRANSPORT=stream) to a stream
that keeps them until the subscribers have stored them.

Arrivals form a Poisson process (exponential gaps, mean `--rate` per second); a few
users are far more active than the rest (Zipf-like weights); most amounts are small
purchases, some are large, a few are refunds (negative). Each message is a wire line
`user_id,amount,timestamp,txn_id` and is logged as in the seed:

    10/06/2019 06:37:49 PM INFO pub_transactions: 1,-446.90,1570358269.483609,<uuid>

    python emitter_and_pub.py --rate 2 --users 100
    python emitter_and_pub.py --count 1000 --rate 0 --seed 7    # a reproducible burst
    python emitter_and_pub.py --transport stream                 # durable
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import sys
import time
from bisect import bisect
from collections import defaultdict, deque
from decimal import Decimal
from itertools import accumulate, islice

import config
from txstream.keys import Keys
from txstream.runtime import Backoff, GiveUp, Outage, StopFlag, retry
from txstream.times import utcnow
from txstream.transaction import Transaction
from txstream.transport import (
    ConnectingSink,
    NotAStream,
    NotReplicated,
    PartitionsMismatch,
    Sink,
    StreamFull,
    is_redis_outage,
)
from txstream.wire import format_line

log = logging.getLogger("pub_transactions")

BURST_CHUNK = 1000  # messages per round trip (one script call) with --rate 0
HOLD_CHECK = 1.0  # seconds between asks whether a held partition has its replicas again
ROOM_CHECK = 0.5  # seconds between tries of a partition whose stream is full


class FakeTransactions:
    """An endless source of plausible card transactions, reproducible from a seed."""

    def __init__(self, users: int, rng: random.Random) -> None:
        self.rng = rng
        self.users = list(range(1, users + 1))
        # User k is about 1/k as active as user 1: a few heavy users, a long tail.
        self.cum_weights = list(accumulate(1 / k**1.1 for k in self.users))
        self.total_weight = self.cum_weights[-1]

    def next(self) -> Transaction:
        """A new transaction, timestamped now."""
        rng = self.rng
        # rng.choices(self.users, cum_weights=...)[0], without its per-call set-up
        pick = bisect(self.cum_weights, rng.random() * self.total_weight, 0, len(self.users) - 1)
        user_id = self.users[pick]
        kind = rng.random()
        if kind < 0.05:  # refund
            amount = -rng.lognormvariate(math.log(40), 0.8)
        elif kind < 0.97:  # everyday purchase: median 25, mostly under 100
            amount = rng.lognormvariate(math.log(25), 0.9)
        else:  # occasional large purchase
            amount = rng.lognormvariate(math.log(1500), 0.7)
        cents = max(1, round(abs(amount) * 100)) * (-1 if amount < 0 else 1)
        return Transaction(
            txn_id=uuid4_text(rng.getrandbits(128)),
            user_id=user_id,
            amount=Decimal(cents).scaleb(-2),
            ts=utcnow(),
        )


def uuid4_text(bits: int) -> str:
    """`str(uuid.UUID(int=bits, version=4))`, at a third of the cost: one per transaction."""
    bits = bits & ~(0xC000 << 48 | 0xF000 << 64) | 0x8000 << 48 | 0x4000 << 64
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Emitter:
    """Sends transactions from a `FakeTransactions` at Poisson-distributed times.

    Transactions keep coming while Redis is down, as real ones would: they wait in a
    bounded queue, one queue per partition of the stream (a user's partition:
    `Keys.partition_of`), and go out, in order, once Redis is back. Past `max_pending` in
    all, the oldest of the longest queue are dropped, loudly.

    With replicas required (MIN_REPLICAS), a chunk counts as sent once they hold it. A
    chunk they did not confirm is sent again (the txn_ids make a repeat harmless), and its
    partition is held, warned about, until its master has the replicas again (after a
    failover, once the lost node is back as a replica), as a Kafka producer holds its
    records under min.insync.replicas; the other partitions go on.

    The same for a partition whose stream is full (STREAM_MAXLEN entries that the
    subscribers have not acknowledged: backpressure) and whose stream key holds another
    type (retried with backoff): its lines wait, the other partitions go on.
    """

    def __init__(
        self,
        sink: Sink,
        stop: StopFlag,
        quiet: bool = False,
        max_pending: int = 100_000,
        partitions: int = 1,
    ) -> None:
        self.sink = sink
        self.stop = stop
        self.quiet = quiet
        self.max_pending = max_pending
        self.partition_of = Keys("", partitions=partitions).partition_of
        self.partitioned = partitions > 1
        self.pending: dict[int, deque[str]] = defaultdict(deque)  # by partition, in order
        self.queued = 0  # lines in `pending`
        self.generated = 0
        self.published = 0
        self.dropped = 0
        self.no_listener = 0  # pub/sub only: messages no subscriber received
        self.redis = Outage("redis")
        self.held: dict[int, int] = {}  # partitions whose master lacks replicas: how many needed
        self.full: dict[int, float] = {}  # partitions whose stream is full: since (monotonic)
        self.not_a_stream: dict[int, Backoff] = {}  # partitions whose stream key is no stream
        self._outages: dict[int, Outage] = {}
        self._next_try: dict[int, float] = defaultdict(float)  # monotonic, by partition

    def run(
        self,
        source: FakeTransactions,
        rate: float,
        count: int | None,
        gaps: random.Random | None = None,
    ) -> None:
        """Send until `count` transactions are out (or forever), or until stopped.

        With `rate` 0 there are no pauses: chunks of BURST_CHUNK, one round trip each.
        `gaps` draws the waits; apart from `source`, so a seed fixes the content alone.
        """
        gaps = gaps or random.Random()  # nosec B311 # made-up arrival times, not a secret
        due = time.monotonic()
        while not self.stop:
            more = count is None or self.generated < count
            if not more and not self.queued:
                break
            now = time.monotonic()
            if more and rate == 0 and self._ready_lines(now) < BURST_CHUNK:
                left = BURST_CHUNK if count is None else count - self.generated
                self._generate(source, min(BURST_CHUNK, left))
            while more and rate and due <= now:
                self._generate(source, 1)
                due += gaps.expovariate(rate)
                more = count is None or self.generated < count
            next_try = self._send_ready(now)
            if rate and not self.queued:
                self.stop.wait(min(due - time.monotonic(), 0.2))
            elif self.queued and next_try > time.monotonic():  # each line waits its retry
                wake = due if rate and more else math.inf
                self.stop.wait(min(next_try - time.monotonic(), wake - time.monotonic(), 0.2))
        if self.queued:  # stopped: a last try, for a few seconds, to send what is kept
            retry(self.redis, self._send_all, is_redis_outage, self.stop, grace=5)

    def _ready_lines(self, now: float) -> int:
        """Lines waiting in partitions that may be sent now; BURST_CHUNK when none may (a
        burst waits rather than filling the queue of a partition that cannot send)."""
        ready = [p for p in self.pending if now >= self._next_try[p]]
        if self.pending and not ready:
            return BURST_CHUNK
        return sum(len(self.pending[p]) for p in ready)

    def _generate(self, source: FakeTransactions, n: int) -> None:
        for _ in range(n):
            if self.queued >= self.max_pending:
                longest = max(self.pending.values(), key=len)
                longest.popleft()
                self.queued -= 1
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 10_000 == 0:
                    log.error(
                        "%d transactions DROPPED: more than %d waiting to be sent (--max-pending)",
                        self.dropped,
                        self.max_pending,
                    )
            tx = source.next()
            self.pending[self.partition_of(tx.user_id)].append(format_line(tx))
            self.queued += 1
            self.generated += 1

    def _send_ready(self, now: float) -> float:
        """Send a chunk of each partition whose turn it is; when to try again (monotonic)."""
        for p in [p for p, lines in self.pending.items() if lines and now >= self._next_try[p]]:
            try:
                if self._outage(p).down:  # its master failed: which node serves it now?
                    self.sink.refresh()
                if p in self.held:
                    self._release_when_replicated(p)
                if p not in self.held:
                    self._send_chunk(p)
            except NotReplicated as exc:
                self._hold(p, exc)
            except StreamFull as exc:
                self._wait_for_room(p, exc)
            except NotAStream as exc:
                self._wait_for_a_stream(p, exc)
            except Exception as exc:
                if not is_redis_outage(exc):
                    raise
                of = f" of partition {p}" if self.partitioned else ""
                kept = f"; {len(self.pending[p])} transactions{of} kept"
                self._next_try[p] = now + self._outage(p).failed(exc, kept)
                continue
            self._outage(p).ok()
        waiting = [self._next_try[p] for p, lines in self.pending.items() if lines]
        return min(waiting, default=math.inf)

    def _send_chunk(self, p: int) -> None:
        lines = list(islice(self.pending[p], BURST_CHUNK))
        try:
            receivers = self.sink.send(lines, p)
        except StreamFull as exc:
            self._took(p, lines[: exc.sent], [1] * exc.sent)
            raise
        self._took(p, lines, receivers)
        if p in self.not_a_stream:
            del self.not_a_stream[p]
            log.warning("partition %d has its stream again: sending its transactions", p)
        if p in self.full and not self.pending[p]:
            waited = time.monotonic() - self.full.pop(p)
            log.warning(
                "partition %d's stream has room again: its transactions that waited %.1f s "
                "are sent",
                p,
                waited,
            )

    def _took(self, p: int, lines: list[str], receivers: list[int]) -> None:
        """Remove the `lines` Redis took from partition `p`'s queue."""
        for line, count in zip(lines, receivers, strict=True):
            self.pending[p].popleft()
            self.queued -= 1
            self._sent(line, count)

    def _wait_for_room(self, p: int, exc: StreamFull) -> None:
        """Keep partition `p`'s lines until the subscribers have made room: try again
        every ROOM_CHECK s; warn once, until its queue is sent."""
        self._next_try[p] = time.monotonic() + ROOM_CHECK
        if p not in self.full:
            self.full[p] = time.monotonic()
            log.warning(
                "WAITING for the subscribers: %s; the %d transactions of partition %d are "
                "kept until the subscribers have stored some (tried again every %.1f s)",
                exc,
                len(self.pending[p]),
                p,
                ROOM_CHECK,
            )

    def _wait_for_a_stream(self, p: int, exc: NotAStream) -> None:
        """Keep partition `p`'s lines while its stream key holds another type: say what to
        do, once, then try again with backoff."""
        if p not in self.not_a_stream:
            self.not_a_stream[p] = Backoff()
            log.error(
                "%s: the %d transactions of partition %d are kept, and sent again with "
                "backoff. Keep what the key holds if it matters, then delete it (DEL %s): "
                "the emitter makes the stream again, and the subscribers their group",
                exc,
                len(self.pending[p]),
                p,
                exc.key,
            )
        self._next_try[p] = time.monotonic() + self.not_a_stream[p].delay()

    def _hold(self, p: int, exc: NotReplicated) -> None:
        """Keep partition `p`'s lines (the unconfirmed chunk too) until it has replicas."""
        self._next_try[p] = time.monotonic() + HOLD_CHECK
        if p not in self.held:
            self.held[p] = exc.needed
            log.warning(
                "HOLDING partition %d: %s (MIN_REPLICAS); its %d transactions wait until its "
                "master has the replicas again, and the unconfirmed chunk is sent again then "
                "(MIN_REPLICAS=0 sends without replicas, at the risk of losing what a "
                "failover loses)",
                p,
                exc,
                len(self.pending[p]),
            )

    def _release_when_replicated(self, p: int) -> None:
        """Release a held partition once its master has the replicas needed again."""
        have = self.sink.replicas(p)
        if have < self.held[p]:
            raise NotReplicated(p, have, self.held[p])
        del self.held[p]
        log.warning(
            "partition %d has %d replica(s) again: sending its %d held transactions",
            p,
            have,
            len(self.pending[p]),
        )

    def _outage(self, p: int) -> Outage:
        if p not in self._outages:
            self._outages[p] = Outage(f"redis (partition {p})" if self.partitioned else "redis")
        return self._outages[p]

    def _send_all(self) -> None:
        """Send every line kept, but those of a partition whose stream cannot take them."""
        for p in list(self.pending):
            try:
                while self.pending[p]:
                    self._send_chunk(p)
            except (StreamFull, NotAStream) as exc:
                log.error(
                    "partition %d: %s; its %d transactions are not sent",
                    p,
                    exc,
                    len(self.pending[p]),
                )

    def _sent(self, line: str, receivers: int) -> None:
        self.published += 1
        if receivers == 0:
            if self.no_listener == 0:
                log.warning(
                    "no subscriber is listening on the channel: pub/sub keeps nothing, so "
                    "these transactions are lost; start sub_and_store.py first, or use "
                    "--transport stream"
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
    parser.add_argument(
        "--seed", type=int, default=None, help="random seed: the same transactions every run"
    )
    config.add_transport_flags(parser, settings)
    parser.add_argument(
        "--max-pending",
        type=config.positive_int_flag,
        default=100_000,
        help="transactions kept while Redis is down or the stream is full; beyond, the "
        "oldest are dropped (default: %(default)s)",
    )
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
    settings = config.with_transport_flags(settings, args)
    config.configure_logging(settings.log_level)
    stop = StopFlag().install()
    sink = ConnectingSink(settings, socket_connect_timeout=5, socket_timeout=30)
    log.info(
        "publishing to %s on %s: rate=%s tx/s, users=%d, count=%s, seed=%s",
        sink.describe(),
        config.mask_url(settings.redis_url),
        args.rate or "max",
        args.users,
        args.count or "unlimited",
        args.seed,
    )
    emitter = Emitter(
        sink,
        stop,
        quiet=args.quiet,
        max_pending=args.max_pending,
        partitions=settings.stream_partitions,
    )
    started = time.monotonic()
    try:
        # bandit B311: made-up transactions and gaps, replayed from a seed
        source = FakeTransactions(args.users, random.Random(args.seed))  # nosec B311
        emitter.run(source, args.rate, args.count, gaps=random.Random(args.seed))  # nosec B311
    except GiveUp as exc:
        log.error("stopped before Redis was back: %s", exc)
    except (config.ConfigError, PartitionsMismatch) as exc:
        log.error("cannot send: %s", exc)
        return 2
    finally:
        sink.close()
    elapsed = time.monotonic() - started
    unsent = emitter.queued + emitter.dropped
    log.info(
        "published %d transactions in %.1f s (%.0f tx/s) to %s; %d had no subscriber, %d not sent",
        emitter.published,
        elapsed,
        emitter.published / max(elapsed, 1e-9),
        sink.describe(),
        emitter.no_listener,
        unsent,
    )
    return 1 if unsent else 0


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
