"""Every Redis key txstream uses, built from KEY_PREFIX in this one place."""

from __future__ import annotations


class Keys:
    """Redis key names under one prefix (default `txstream:`)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def recent(self, user_id: int) -> str:
        """The list of a user's latest transactions, newest first."""
        return f"{self.prefix}recent:{user_id}"

    @property
    def dead(self) -> str:
        """The list of dead letters: malformed messages with their reasons."""
        return f"{self.prefix}dead"
