"""Every Redis key txstream uses, built from KEY_PREFIX in this one place."""

from __future__ import annotations


class Keys:
    """Redis key names under one prefix (default `txstream:`)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def recent(self, user_id: int) -> str:
        """The sorted set of a user's latest transactions (txstream.recent)."""
        return f"{self.prefix}latest:{user_id}"

    @property
    def dead(self) -> str:
        """The list of dead letters: malformed messages with their reasons."""
        return f"{self.prefix}dead"
