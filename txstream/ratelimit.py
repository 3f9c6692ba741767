"""The API's rate limit: fixed windows counted in Redis, shared by every web worker.

RATE_LIMIT is one or more limits, e.g. `600/minute` or `10/second;100/minute` (the `limits`
package's notation). Each has a counter per client in Redis that lives for the limit's
window from its first request. The same script call also reads the tokens' revocation epoch
(txstream.tokens.Cache), so that a request's token check and its count take one round trip.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import redis
from limits import RateLimitItem, parse_many
from redis.commands.core import Script

from txstream.keys import Keys
from txstream.wrongtype import REPLACE_LUA, log_replaced

# KEYS[1]: the revocation epoch; KEYS[2..]: a counter per limit (all in one hash slot when
# names are tagged: txstream.keys). ARGV[1]: the epoch to set
# when there is none (Redis lost it, or it was never set); ARGV[2..]: each counter's window
# in seconds. Returns the epoch, the keys replaced (txstream.wrongtype: a key of another
# type, or a counter that is no number, is overwritten: SET, as the web app's Redis user
# may not DEL), then each counter's count and its seconds to live.
_HIT = (
    REPLACE_LUA
    + """
local epoch = redis.pcall('GET', KEYS[1])
if unusable(epoch) then
  note(KEYS[1])
  epoch = false
end
if not epoch then
  redis.call('SET', KEYS[1], ARGV[1])
  epoch = ARGV[1]
end
local result = {epoch, replaced}
for i = 2, #KEYS do
  local count = redis.pcall('INCR', KEYS[i])
  if unusable(count) then
    note(KEYS[i])
    redis.call('SET', KEYS[i], 1)
    count = 1
  end
  if count == 1 then
    redis.call('EXPIRE', KEYS[i], ARGV[i])
  end
  result[#result + 1] = count
  result[#result + 1] = redis.call('TTL', KEYS[i])
end
return result
"""
)


class RateLimited(Exception):
    """A client made more requests than a limit allows; `retry_after` is in whole seconds."""

    def __init__(self, limit: RateLimitItem, retry_after: int) -> None:
        super().__init__(f"too many requests: at most {limit}")
        self.limit = limit
        self.retry_after = retry_after


@dataclass(frozen=True)
class Hit:
    """What counting a request found: the revocation epoch, and the first limit exceeded."""

    epoch: bytes
    exceeded: RateLimited | None

    def check(self) -> None:
        """Raise RateLimited if the request went over a limit."""
        if self.exceeded is not None:
            raise self.exceeded


def new_epoch() -> bytes:
    """A revocation epoch never used before (128 random bits)."""
    return secrets.token_hex(16).encode()


class FixedWindows:
    """The counters of RATE_LIMIT in Redis, under `{KEY_PREFIX}ratelimit:`."""

    def __init__(self, keys: Keys, limits: str) -> None:
        self.keys = keys
        self.limits = parse_many(limits)
        self._windows = [limit.get_expiry() for limit in self.limits]
        self._script: Script | None = None

    def hit(self, client: redis.Redis, who: str) -> Hit:
        """Count a request of `who` against every limit; the epoch read in the same call."""
        if self._script is None:  # now, not at start: a cluster's client connects to make it
            self._script = client.register_script(_HIT)
        counters = [
            self.keys.rate_count(who, limit.amount, window)
            for limit, window in zip(self.limits, self._windows, strict=True)
        ]
        epoch, replaced, *counts = self._script(
            keys=[self.keys.token_epoch, *counters],
            args=[new_epoch(), *self._windows],
            client=client,
        )
        log_replaced(replaced)
        exceeded = None
        for limit, window, count, ttl in zip(
            self.limits, self._windows, counts[::2], counts[1::2], strict=True
        ):
            if count > limit.amount:
                wait = min(max(1, ttl), window)
                if exceeded is None or wait > exceeded.retry_after:
                    exceeded = RateLimited(limit, wait)
        return Hit(epoch, exceeded)
