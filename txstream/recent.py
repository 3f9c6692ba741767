"""Each user's latest transactions, in a Redis list, newest first by transaction time.

Transactions can arrive late or out of order, and two subscribers can write the same
user at once, so a plain LPUSH would be wrong: a Lua script merges the new items into
the list atomically, ordered by (time, txn_id) descending, and keeps the newest.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable

import redis

from txstream.keys import Keys
from txstream.wire import Transaction, to_json

RECENT_SIZE = 5

# KEYS[1]: the list. ARGV[1]: how many to keep. ARGV[2..]: new items as JSON.
# Items are sorted by their `time` (fixed-width ISO text, so text order is time
# order) and then `txn_id`; the JSON text is stored as given, never re-encoded.
_MERGE = """
local keep = tonumber(ARGV[1])
local items, seen = {}, {}
local function add(raw)
  local item = cjson.decode(raw)
  if not seen[item.txn_id] then
    seen[item.txn_id] = true
    items[#items + 1] = {item.time, item.txn_id, raw}
  end
end
for _, raw in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do add(raw) end
for i = 2, #ARGV do add(ARGV[i]) end
table.sort(items, function(a, b)
  if a[1] ~= b[1] then return a[1] > b[1] end
  return a[2] > b[2]
end)
local newest = {}
for i = 1, math.min(keep, #items) do newest[i] = items[i][3] end
redis.call('DEL', KEYS[1])
if #newest > 0 then redis.call('RPUSH', KEYS[1], unpack(newest)) end
return #newest
"""


class RecentLists:
    """Reads and updates the per-user latest-transactions lists."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._merge = client.register_script(_MERGE)

    def add(self, pipe: redis.client.Pipeline, txns: Iterable[Transaction]) -> None:
        """Queue on `pipe` one merge per user of `txns`."""
        by_user: dict[int, list[str]] = defaultdict(list)
        for tx in txns:
            by_user[tx.user_id].append(json.dumps(to_json(tx), separators=(",", ":")))
        for user_id, items in by_user.items():
            self._merge(keys=[self.keys.recent(user_id)], args=[RECENT_SIZE, *items], client=pipe)

    def read(self, user_id: int) -> list[dict]:
        """The user's latest transactions, newest first, as the API shows them."""
        return [json.loads(item) for item in self.client.lrange(self.keys.recent(user_id), 0, -1)]
