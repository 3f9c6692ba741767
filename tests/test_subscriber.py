"""The subscriber's batches, without servers: what a message becomes once parsed."""

from __future__ import annotations

import time

import sub_and_store
from sub_and_store import Batch
from txstream.transport import Message


def test_a_batch_accepts_event_times_up_to_now_plus_its_clock_skew():
    now = time.time()
    batch = Batch(clock_skew=3600)
    batch.add(Message(f"1,1.00,{now + 3000:.6f},soon".encode()))
    batch.add(Message(f"1,1.00,{now + 4000:.6f},later".encode()))
    batch.add(Message(b"1,1.00,946684799.999999,before-2000"))
    assert [tx.txn_id for tx in batch.txns] == ["soon"]
    assert [letter["reason"].split(" to ")[0] for letter in batch.dead] == [
        "timestamp out of range (2000-01-01T00:00:00.000000Z"
    ] * 2
    assert all("now + MAX_CLOCK_SKEW" in letter["reason"] for letter in batch.dead)


def test_a_batch_reads_the_clock_once(monkeypatch):
    calls = []

    def latest_accepted(clock_skew: int) -> int:
        calls.append(clock_skew)
        return 2 * 10**15  # 2033-05-18

    monkeypatch.setattr(sub_and_store, "latest_accepted", latest_accepted)
    batch = Batch(clock_skew=60)
    for i in range(3):
        batch.add(Message(f"1,1.00,1570358269,t{i}".encode()))
    assert (calls, len(batch.txns)) == ([60], 3)
