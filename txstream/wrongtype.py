"""Redis keys that hold another type than txstream writes there (someone else set them).

Everything txstream keeps in Redis but the stream is derived, so the writer that owns a
key replaces one of another type (or with a value it cannot add to): the batch script its
counters, recent lists and dead letters, the heartbeat its hash and the index, the rate
limiter its counters and the revocation epoch, the dashboard its cache. Each replacement is
logged once, as an ERROR naming the key and what it held. Readers never fail on one: they
serve what is right without it where they can, or raise `WrongType`, which the web app
answers with a 503 naming the key.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis

log = logging.getLogger(__name__)

# Lua, for the scripts of the writers: `note(key[, kind])` records a key about to be
# replaced and its type in `replaced` (the script returns it, for `log_replaced`); `unusable(reply)`
# tells whether a redis.pcall reply is an error that replacing its key mends (WRONGTYPE, or
# a value that is no whole number: "not an integer", "overflow"), and raises any other
# (OOM, NOPERM); `mending(key, command...)` runs the command, and when its key is unusable
# deletes it and runs it again. No extra command when nothing is wrong.
REPLACE_LUA = """
local replaced = {}
local function note(key, kind)
  replaced[#replaced + 1] = key
  replaced[#replaced + 1] = kind or redis.call('TYPE', key)['ok']
end
local function unusable(reply)
  if type(reply) ~= 'table' or not reply['err'] then return false end
  local err = tostring(reply['err'])  -- tostring: fakeredis's tests give no Lua string
  for _, mended in ipairs({'WRONGTYPE ', 'not an integer', 'overflow'}) do
    if string.find(err, mended, 1, true) then return true end
  end
  error(reply)
end
local function mending(key, ...)
  local reply = redis.pcall(...)
  if unusable(reply) then
    note(key)
    redis.call('DEL', key)
    reply = redis.call(...)
  end
  return reply
end
"""


class WrongType(Exception):
    """A key that a reader needs holds another type than txstream writes there."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"Redis key {key} holds another type than txstream writes there: its writer "
            "replaces it when it next writes it (or an operator deletes it)"
        )
        self.key = key


def is_wrong_type(reply: object) -> bool:
    """Whether a reply (or an exception) is Redis's WRONGTYPE error."""
    return isinstance(reply, redis.ResponseError) and str(reply).startswith("WRONGTYPE")


def log_replaced(replaced: Sequence[bytes | str]) -> None:
    """Log what a script replaced: `REPLACE_LUA`'s list of keys and their types."""
    for key, kind in zip(replaced[::2], replaced[1::2], strict=True):
        log.error(
            "replaced Redis key %s: it held a %s that txstream cannot use", _text(key), _text(kind)
        )


def replacing(client: redis.Redis, key: str) -> None:
    """Log that `key`, of another type, is replaced (the caller overwrites it next)."""
    log_replaced([key, client.type(key)])


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
