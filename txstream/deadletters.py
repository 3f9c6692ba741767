"""Reading the dead letters: the Redis list `dead`, newest first, one page at a time.

The subscriber appends letters at the list's tail and trims its head to the newest
DEAD_LETTERS_MAX, and counts every letter it ever appended (`Keys.dead_count`). So each
letter has a position that never changes: `count - length` is the head's, the tail's is
`count - 1`. A page's cursor is the position of the oldest letter it shows: the next page
shows the letters before it, however many came since or were trimmed meanwhile (once
trimmed, a letter is simply not there). A list's length and an offset could not say which
letter a cursor meant once the list is full: each letter appended then trims another.

Any item may be corrupt (not JSON, wrong types, huge): what it holds is shown as far as it
can be, as text, cut short.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import redis

from txstream.keys import Keys
from txstream.store import DEAD_COUNT_LUA, DEAD_RAW_BYTES

log = logging.getLogger(__name__)

# A letter's raw text is at most the first 4 KiB, bytes that are not UTF-8 escaped as \xNN:
# at most four characters a byte. Anything longer was not written by txstream.
MAX_RAW_CHARS = 4 * DEAD_RAW_BYTES
MAX_TEXT_CHARS = 1000  # of a reason, and of a time that is not one
UNREADABLE = "an unreadable dead letter (not a JSON object as txstream writes them)"

# KEYS: the dead letters and their count (one hash slot on a cluster: txstream.keys). ARGV:
# the position before which to read ('' for the newest), how many. Returns the position of
# the first (oldest) letter returned, the letters oldest first, the key's type, and whether
# older letters are held. One call: no append or trim comes between count and read.
#   A script may touch only the keys it declares on a Redis Cluster. Redis's ACL checks
# declared keys as written to, whatever the script does: the web user's rights
# (deploy/redis.acl) let it declare these two to EVALSHA, and read them only.
_READ_PAGE = (
    DEAD_COUNT_LUA
    + """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'list' then
  return {0, {}, kind, 0}
end
local held = redis.call('LLEN', KEYS[1])
local count = dead_count(held)
local head = count - held
local before = tonumber(ARGV[1]) or count
local last = math.min(before, count) - 1 - head
if last < 0 then
  return {0, {}, kind, 0}
end
local first = math.max(last - tonumber(ARGV[2]) + 1, 0)
return {head + first, redis.call('LRANGE', KEYS[1], first, last), kind, first}
"""
)


class Unreadable(Exception):
    """The dead-letter key holds something that is not a list."""


@dataclass(frozen=True)
class Letter:
    """One dead letter as it can be shown: every field but `reason` and `raw` may be None.
    `kept`: how many bytes of the message `raw` shows (txstream.store.dead_letter)."""

    reason: str
    at: str | None
    size: int | None
    sha256: str | None
    raw: str
    kept: int | None = None

    @property
    def cut(self) -> bool:
        """Whether `raw` shows less than the whole message."""
        return self.kept is not None and self.size is not None and self.kept < self.size

    def to_json(self) -> dict:
        """The API's form, keys in the documented order."""
        return {
            "reason": self.reason,
            "at": self.at,
            "size": self.size,
            "sha256": self.sha256,
            "raw": self.raw,
            "kept": self.kept,
            "cut": self.cut,
        }


class DeadLetters:
    """The dead-letter list of one key prefix."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.keys = keys
        self._read_page = client.register_script(_READ_PAGE)

    def page(self, limit: int, before: int | None = None) -> tuple[list[Letter], int | None]:
        """Up to `limit` letters before position `before` (the newest when None), newest
        first, and the cursor of the next (older) page: None when there is nothing older."""
        position, items, kind, older = self._read_page(
            keys=[self.keys.dead, self.keys.dead_count],
            args=["" if before is None else before, limit],
        )
        if _text(kind) not in ("list", "none"):
            raise Unreadable(f"the dead-letter key {self.keys.dead} holds a {_text(kind)}")
        letters = [letter_of(item) for item in reversed(items)]
        return letters, (position if older > 0 else None)


def letter_of(item: bytes) -> Letter:
    """What an item of the list says, as far as it says it; never raises."""
    text = item.decode("utf-8", "backslashreplace")
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        return Letter(UNREADABLE, None, None, None, text[:MAX_RAW_CHARS])
    reason, size, kept = record.get("reason"), _whole(record.get("size")), record.get("kept")
    if "kept" not in record and size is not None:
        kept = min(size, DEAD_RAW_BYTES)  # a letter of before `kept`: its first 4 KiB
    return Letter(
        reason=_cut(reason, MAX_TEXT_CHARS) if isinstance(reason, str) else UNREADABLE,
        at=_cut(record.get("at"), MAX_TEXT_CHARS),
        size=size,
        sha256=_cut(record.get("sha256"), 64),
        raw=_cut(record.get("raw"), MAX_RAW_CHARS) or text[:MAX_RAW_CHARS],
        kept=_whole(kept),
    )


def _cut(value: Any, most: int) -> str | None:
    return value[:most] if isinstance(value, str) else None


def _whole(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
    return value if ok else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
