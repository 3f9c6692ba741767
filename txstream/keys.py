"""Every Redis name txstream uses, built in this one place."""

from __future__ import annotations

import functools
import re

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


class Keys:
    """Redis names: keys under one prefix (default `txstream:`), the stream and the channel.

    The stream and the channel keep the names they are configured with (STREAM, CHANNEL):
    renaming them would strand what an older version left in them.

    Partitions (STREAM_PARTITIONS, and any Redis Cluster): the stream and the channel are
    split in `partitions`, a user's transactions all in the partition `partition_of` gives.
    A Redis Cluster runs a script or a multi-key command only on keys of one hash slot, so
    then (`tagged`) every group of names used together carries one hash tag: a partition's
    stream, channel, recent lists and counters share the partition's tag (its batch is
    written by one script), the dead letters theirs, the rate limits theirs. One server
    with one partition keeps the names of before.
    """

    def __init__(
        self,
        prefix: str,
        stream: str = "transactions",
        channel: str = "transactions",
        partitions: int = 1,
        cluster: bool = False,
    ) -> None:
        self.prefix = prefix
        self.stream = stream
        self.channel = channel
        self.partitions = partitions
        self.tagged = cluster or partitions > 1

    def partition_of(self, user_id: int) -> int:
        """The partition of a user's transactions: each user's stay in order in one."""
        return user_id % self.partitions

    def stream_of(self, partition: int) -> str:
        """The stream of a partition."""
        return f"{self.stream}:{{{self.tag(partition)}}}" if self.tagged else self.stream

    def channel_of(self, partition: int) -> str:
        """The (sharded, on a cluster) pub/sub channel of a partition."""
        return f"{self.channel}:{{{self.tag(partition)}}}" if self.tagged else self.channel

    @property
    def streams(self) -> list[str]:
        """Every partition's stream, by partition."""
        return [self.stream_of(p) for p in range(self.partitions)]

    @property
    def channels(self) -> list[str]:
        """Every partition's channel, by partition."""
        return [self.channel_of(p) for p in range(self.partitions)]

    def tag(self, partition: int) -> str:
        """The hash tag of a partition's names (`partition_tag`)."""
        return partition_tag(partition, self.partitions)

    def _in(self, group: str, name: str) -> str:
        """`name` under the prefix, in hash slot `group` when names are tagged."""
        return f"{self.prefix}{{{group}}}:{name}" if self.tagged else f"{self.prefix}{name}"

    def recent(self, user_id: int) -> str:
        """The list of a user's latest transactions, newest first (txstream.recent): in the
        slot of the user's partition, so the partition's batch script writes it."""
        return self._in(self.tag(self.partition_of(user_id)), f"recent:{user_id}")

    def old_recent(self, user_id: int) -> str:
        """The sorted set that held a user's latest transactions before the lists."""
        return f"{self.prefix}latest:{user_id}"

    @property
    def dead(self) -> str:
        """The list of dead letters: messages that could not be stored, with their reasons."""
        return self._in("dead", "dead")

    @property
    def dead_count(self) -> str:
        """How many dead letters were ever appended to the list `dead`: with its length, the
        position of each letter, which stays put while the list grows and is trimmed."""
        return self._in("dead", "dead:count")

    @property
    def partitions_record(self) -> str:
        """The number of partitions the emitters and subscribers use (STREAM_PARTITIONS),
        set by the first: a user's partition must mean the same to all of them."""
        return f"{self.prefix}partitions"

    @property
    def layout(self) -> str:
        """The version of txstream's Redis layout, so that a change of it is migrated once."""
        return f"{self.prefix}layout"

    def subscriber(self, name: str) -> str:
        """The hash of a subscriber's latest heartbeat (txstream.heartbeats)."""
        return f"{self.prefix}subscriber:{name}"

    @property
    def subscribers(self) -> str:
        """The sorted set listing the subscribers that beat lately, by their last heartbeat
        (epoch seconds): the index of the `subscriber` hashes, read without SCAN."""
        return f"{self.prefix}subscribers"

    def rate_count(self, who: str, amount: int, seconds: int) -> str:
        """The counter of `who`'s API requests in its current window of a rate limit (in the
        slot of `token_epoch`: one script reads both)."""
        return self._in("auth", f"ratelimit:{who}:{amount}/{seconds}s")

    @property
    def token_epoch(self) -> str:
        """A random value that each token revocation changes: the web workers then forget
        the tokens they have cached (txstream.tokens.Cache)."""
        return self._in("auth", "tokens:epoch")

    def rate(self, bucket: int, partition: int = 0) -> str:
        """The count of a partition's transactions stored in the 10 seconds from epoch second
        `bucket` (the dashboard's ingest rate, their sum over partitions; txstream.live)."""
        return self._in(self.tag(partition), f"rate:{bucket}")

    def counts(self, partition: int = 0) -> str:
        """The hash of what the subscribers ever did with a partition's transactions:
        `stored` and `duplicates` (the totals: their sums over partitions)."""
        return self._in(self.tag(partition), "counts")

    def derived(self, partition: int = 0) -> str:
        """The marker of a partition's derived state (its recent lists and `stored` count):
        present once that state is complete, holding the time from which its Redis-only
        counts (duplicates) count, or `all`. Missing: Redis lost it, or it is being rebuilt
        from the database (txstream.rebuild_redis). In the partition's slot, so the marker
        and a recent list are read in one call, and a master that loses them loses both."""
        return self._in(self.tag(partition), "derived")

    def derived_lock(self, partition: int = 0) -> str:
        """Who is rebuilding a partition's derived state now (a name, expiring unless renewed)."""
        return self._in(self.tag(partition), "derived:lock")

    @property
    def dead_since(self) -> str:
        """The time from which `dead_count` counts, or `all` (in the dead letters' slot:
        Redis loses them together; txstream.rebuild_redis)."""
        return self._in("dead", "dead:since")

    def live_top(self, window: int) -> str:
        """The dashboard's top users of a window, cached a few seconds for every worker."""
        return f"{self.prefix}live:top:{window}"

    @property
    def recent_pattern(self) -> str:
        """SCAN pattern of every recent list."""
        return f"{_glob_literal(self.prefix)}recent:*"

    @property
    def old_recent_pattern(self) -> str:
        """SCAN pattern of the sorted sets that held the latest transactions before lists."""
        return f"{_glob_literal(self.prefix)}latest:*"

    def user_of(self, key: bytes | str) -> int | None:
        """The user id in a `recent` or old `latest` key, or None if it is not one."""
        text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        for kind in ("recent:", "latest:"):
            tail = text.removeprefix(self.prefix + kind)
            if tail != text and tail.isascii() and tail.isdigit():
                return int(tail)
        return None


@functools.cache
def partition_tag(partition: int, partitions: int) -> str:
    """A hash tag whose slot lies in the `partition`-th of `partitions` equal slot ranges:
    a cluster's masters own equal ranges when it is created, so the partitions spread
    over them evenly (a tag `{0}`, `{1}`, ... lands where its CRC16 happens to fall)."""
    low = partition * REDIS_CLUSTER_HASH_SLOTS // partitions
    high = (partition + 1) * REDIS_CLUSTER_HASH_SLOTS // partitions
    attempt = 0
    while not low <= key_slot(f"p{partition}.{attempt}".encode()) < high:
        attempt += 1
    return f"p{partition}.{attempt}"


def _glob_literal(text: str) -> str:
    """`text` with the characters that SCAN MATCH treats as a pattern escaped."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)
