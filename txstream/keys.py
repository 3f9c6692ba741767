"""Every Redis name txstream uses, built in this one place."""

from __future__ import annotations

import re

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


class Keys:
    """Redis names: keys under one prefix (default `txstream:`), the stream and the channel.

    The stream and the channel keep the names they are configured with (STREAM, CHANNEL):
    renaming them would strand what an older version left in them.
    """

    def __init__(
        self, prefix: str, stream: str = "transactions", channel: str = "transactions"
    ) -> None:
        self.prefix = prefix
        self.stream = stream
        self.channel = channel

    def recent(self, user_id: int) -> str:
        """The list of a user's latest transactions, newest first (txstream.recent)."""
        return f"{self.prefix}recent:{user_id}"

    def old_recent(self, user_id: int) -> str:
        """The sorted set that held a user's latest transactions before the lists."""
        return f"{self.prefix}latest:{user_id}"

    @property
    def dead(self) -> str:
        """The list of dead letters: messages that could not be stored, with their reasons."""
        return f"{self.prefix}dead"

    @property
    def dead_count(self) -> str:
        """How many dead letters were ever appended to the list `dead`: with its length, the
        position of each letter, which stays put while the list grows and is trimmed."""
        return f"{self.prefix}dead:count"

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
        """The counter of `who`'s API requests in its current window of a rate limit."""
        return f"{self.prefix}ratelimit:{who}:{amount}/{seconds}s"

    @property
    def token_epoch(self) -> str:
        """A random value that each token revocation changes: the web workers then forget
        the tokens they have cached (txstream.tokens.Cache)."""
        return f"{self.prefix}tokens:epoch"

    def rate(self, bucket: int) -> str:
        """The count of transactions stored in the 10 seconds from epoch second `bucket`
        (the dashboard's ingest rate; txstream.live)."""
        return f"{self.prefix}rate:{bucket}"

    @property
    def counts(self) -> str:
        """The hash of what the subscribers ever did: `stored` and `duplicates`."""
        return f"{self.prefix}counts"

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


def _glob_literal(text: str) -> str:
    """`text` with the characters that SCAN MATCH treats as a pattern escaped."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)
