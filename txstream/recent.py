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
from txstream.wire import Transaction, to_json_text

RECENT_SIZE = 5

# One call merges a whole batch. KEYS: the users' lists. ARGV[1]: how many to keep;
# then, for each key in turn, the number of its new items and the items (JSON).
# Items are sorted by their `time` (fixed-width ISO text, so text order is time
# order) and then `txn_id`; the JSON text is stored as given, never re-encoded.
_MERGE = """
local keep = tonumber(ARGV[1])
local pos = 2
for k = 1, #KEYS do
  local count = tonumber(ARGV[pos])
  local items, seen = {}, {}
  local function add(raw)
    local item = cjson.decode(raw)
    if not seen[item.txn_id] then
      seen[item.txn_id] = true
      items[#items + 1] = {item.time, item.txn_id, raw}
    end
  end
  for _, raw in ipairs(redis.call('LRANGE', KEYS[k], 0, -1)) do add(raw) end
  for i = pos + 1, pos + count do add(ARGV[i]) end
  pos = pos + count + 1
  table.sort(items, function(a, b)
    if a[1] ~= b[1] then return a[1] > b[1] end
    return a[2] > b[2]
  end)
  local newest = {}
  for i = 1, math.min(keep, #items) do newest[i] = items[i][3] end
  redis.call('DEL', KEYS[k])
  if #newest > 0 then redis.call('RPUSH', KEYS[k], unpack(newest)) end
end
return #KEYS
"""


class RecentLists:
    """Reads and updates the per-user latest-transactions lists."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._merge = client.register_script(_MERGE)

    def add(self, pipe: redis.client.Pipeline, txns: Iterable[Transaction]) -> None:
        """Queue on `pipe` one merge of `txns` into their users' lists (one script call)."""
        by_user: dict[int, list[str]] = defaultdict(list)
        for tx in txns:
            by_user[tx.user_id].append(to_json_text(tx))
        if not by_user:
            return
        args: list[object] = [RECENT_SIZE]
        for items in by_user.values():
            args += [len(items), *items]
        keys = [self.keys.recent(user_id) for user_id in by_user]
        self._merge(keys=keys, args=args, client=pipe)

    def read(self, user_id: int) -> list[dict]:
        """The user's latest transactions, newest first, as the API shows them."""
        return [json.loads(item) for item in self.client.lrange(self.keys.recent(user_id), 0, -1)]
