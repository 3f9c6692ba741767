"""The naive baseline of bench/ingest.py: one INSERT and one COMMIT per message.

This is the seed's design, kept only to measure against; it is not a txstream mode.
It reads the stream from its start (no consumer group, no aggregates, no Redis lists)
and stops after `--count` messages.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pymysql
import redis
from sqlalchemy import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from txstream.times import utcnow  # noqa: E402
from txstream.wire import parse  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--database-url", required=True, help="mysql+pymysql://... URL")
    parser.add_argument("--stream", required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    url = make_url(args.database_url)
    db = pymysql.connect(
        host=url.host,
        port=url.port or 3306,
        user=url.username,
        password=url.password or "",
        database=url.database,
    )
    client = redis.Redis.from_url(args.redis_url)
    print("naive subscriber: reading", flush=True)
    last_id, stored = "0", 0
    with db.cursor() as cursor:
        while stored < args.count:
            for _, entries in client.xread({args.stream: last_id}, count=100, block=100) or []:
                for entry_id, fields in entries:
                    last_id = entry_id
                    tx = parse(fields[b"line"])
                    cursor.execute(
                        "INSERT INTO transactions (txn_id, user_id, amount, ts, received_at) "
                        "VALUES (%s, %s, %s, %s, %s)",
                        (tx.txn_id, tx.user_id, tx.amount, tx.ts, utcnow()),
                    )
                    db.commit()
                    stored += 1
    print(f"naive subscriber: stored {stored}", flush=True)


if __name__ == "__main__":
    main()
