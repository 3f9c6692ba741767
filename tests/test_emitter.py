"""The emitter's fake transactions and its publishing, on fakeredis."""

from __future__ import annotations

import logging
import random
import statistics
import uuid
from collections import Counter

import pytest

from emitter_and_pub import Emitter, FakeTransactions, uuid4_text
from txstream.processes import Script, wait_until
from txstream.runtime import StopFlag
from txstream.transport import PubSubSink
from txstream.wire import format_line, parse


def sample(n: int, seed: int = 7, users: int = 100):
    source = FakeTransactions(users, random.Random(seed))
    return [source.next() for _ in range(n)]


def test_transactions_are_valid_wire_lines():
    for tx in sample(2000):
        assert parse(format_line(tx)) == tx


def test_a_seed_reproduces_the_same_transactions():
    def key(tx):
        return tx.txn_id, tx.user_id, tx.amount

    assert list(map(key, sample(300, seed=3))) == list(map(key, sample(300, seed=3)))
    assert list(map(key, sample(300, seed=3))) != list(map(key, sample(300, seed=4)))


def test_amounts_look_like_card_spending():
    amounts = [tx.amount for tx in sample(5000)]
    purchases = [a for a in amounts if a > 0]
    refunds = [a for a in amounts if a < 0]
    assert 10 < statistics.median(purchases) < 60  # mostly small purchases
    assert any(a > 1000 for a in purchases)  # occasional large ones
    assert 0.02 < len(refunds) / len(amounts) < 0.10  # some refunds
    assert all(abs(a) >= 0.01 and a.as_tuple().exponent == -2 for a in amounts)


def test_a_few_users_are_far_more_active_than_most():
    activity = Counter(tx.user_id for tx in sample(5000, users=100))
    assert activity[1] > 10 * statistics.median(activity.values())
    assert set(activity) <= set(range(1, 101))


def test_burst_publishes_exactly_count_messages(fake_redis):
    pubsub = fake_redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("ch")
    emitter = Emitter(PubSubSink(fake_redis, "ch"), StopFlag(), quiet=True)
    emitter.run(FakeTransactions(10, random.Random(1)), rate=0, count=2500)
    received = []

    def all_received():
        while (message := pubsub.get_message()) is not None:
            received.append(parse(message["data"]))
        return len(received) >= 2500

    wait_until(all_received, 10, "2500 messages")
    assert emitter.published == 2500
    assert len({tx.txn_id for tx in received}) == 2500
    assert emitter.no_listener == 0


class CountingStop(StopFlag):
    """A stop flag that counts the emitter's pauses."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0

    def wait(self, seconds: float) -> bool:
        self.waits += 1
        return super().wait(seconds)


@pytest.mark.parametrize("partitions", [1, 3])
def test_a_burst_never_pauses_while_redis_takes_it(fake_redis, partitions):
    """--rate 0 sends chunk after chunk: a pause between them (0.2 s each) made a burst
    fourteen times slower once."""
    stop = CountingStop()
    channels = [f"ch{p}" for p in range(partitions)]
    emitter = Emitter(PubSubSink(fake_redis, channels), stop, quiet=True, partitions=partitions)
    emitter.run(FakeTransactions(100, random.Random(1)), rate=0, count=5500)
    assert emitter.published == 5500
    assert stop.waits == 0


def test_warns_once_when_no_subscriber_listens(fake_redis, caplog):
    emitter = Emitter(PubSubSink(fake_redis, "nobody-listens"), StopFlag(), quiet=True)
    with caplog.at_level(logging.WARNING):
        emitter.run(FakeTransactions(10, random.Random(1)), rate=0, count=20)
    assert emitter.no_listener == 20
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "no subscriber is listening" in caplog.records[0].message


def test_rate_mode_logs_each_message_in_the_seed_format(fake_redis, caplog):
    fake_redis.pubsub().subscribe("ch")
    emitter = Emitter(PubSubSink(fake_redis, "ch"), StopFlag())
    with caplog.at_level(logging.INFO, logger="pub_transactions"):
        emitter.run(FakeTransactions(10, random.Random(1)), rate=1000, count=5)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(lines) == 5
    assert all(parse(line) for line in lines)


def test_a_set_stop_flag_ends_the_run():
    stop = StopFlag()
    stop.set()
    emitter = Emitter(PubSubSink(None, "ch"), stop)  # never publishes, so needs no client
    emitter.run(FakeTransactions(10, random.Random(1)), rate=1, count=None)
    assert emitter.published == 0


def test_scripts_explain_themselves():
    for name in ("emitter_and_pub.py", "sub_and_store.py"):
        script = Script(name, "--help", env={})
        assert script.wait() == 0
        assert "usage:" in script.output and "--channel" in script.output


def test_bad_flags_get_a_clear_error():
    script = Script("emitter_and_pub.py", "--count", "0", env={})
    assert script.wait() == 2
    assert "--count: must be a whole number > 0" in script.output


@pytest.mark.parametrize("bits", [0, 2**128 - 1, 0x0123456789ABCDEF0123456789ABCDEF, 12345])
def test_uuid4_text_is_the_text_of_a_version_4_uuid(bits):
    assert uuid4_text(bits) == str(uuid.UUID(int=bits, version=4))
