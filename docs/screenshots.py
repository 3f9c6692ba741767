"""Screenshots of the pages for the README: docs/screenshot-<page>.png at a desktop width.

Starts the subscriber and the web app (gunicorn, AUTH on) on a database of its own
(dropped first, and at the end) and a fresh Redis key prefix, runs the emitter for a few
seconds and publishes a few malformed lines (dead letters), signs in with a token made
for the occasion, and saves the dashboard `/`, a user page, /dead-letters and /system as
Debian's Chromium shows them (txstream.browsing). `make screenshots` runs it.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

import redis
from sqlalchemy import make_url, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models  # noqa: E402
from txstream.browsing import DESKTOP, chromium, running_system, sign_in  # noqa: E402
from txstream.keys import Keys  # noqa: E402
from txstream.processes import Script, wait_until  # noqa: E402
from txstream.testing import count_rows, emitted, emitter_args  # noqa: E402

DOCS = Path(__file__).resolve().parent
USERS, SEED = 12, 11  # the demo data: few users, so that a user page has a history
MALFORMED = (
    "42,12.345,1714996800,too-many-decimals",
    "not a transaction at all",
    '<img src=x onerror="alert(1)">',
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default="mysql+pymysql://root@127.0.0.1:3306/txstream_screenshots",
        help="a database for the demo data, DROPPED before and after (default: %(default)s)",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--seconds", type=int, default=5, help="of the emitter (default 5)")
    parser.add_argument("--rate", type=int, default=40, help="tx/s of the emitter (default 40)")
    parser.add_argument("--out", type=Path, default=DOCS, help="folder of the PNGs (docs/)")
    args = parser.parse_args()

    url = make_url(args.database_url)
    server = models.make_engine(url.set(database="").render_as_string(hide_password=False))
    drop = text(f"DROP DATABASE IF EXISTS `{url.database}`")
    with server.begin() as conn:
        conn.execute(drop)
    engine = models.make_engine(args.database_url)
    models.create_schema(engine)
    prefix = f"txstream-screenshots:{secrets.token_hex(6)}:"
    client = redis.Redis.from_url(args.redis_url)
    try:
        with running_system(engine, args.redis_url, prefix) as system:
            count = args.seconds * args.rate
            print(f"emitting {count} transactions in {args.seconds} s")
            emitter = Script(*emitter_args(count, USERS, SEED, args.rate), env=system.env)
            emitter.wait_ok(args.seconds + 60)
            system.publish(*MALFORMED)
            wait_until(lambda: count_rows(engine) >= count, 60, f"{count} rows stored")
            dead = Keys(prefix).dead
            wait_until(lambda: client.llen(dead) >= len(MALFORMED), 30, "the dead letters")
            user_id = emitted(count, USERS, SEED)[-1].user_id
            pages = {
                "dashboard": "/",
                "user": f"/users/{user_id}",
                "dead-letters": "/dead-letters",
                "system": "/system",
            }
            with chromium() as browser:
                page = browser.new_page(viewport=DESKTOP)
                sign_in(page, system.url, system.token)
                for name, path in pages.items():
                    page.goto(system.url + path)
                    if name == "dashboard":  # drawn by its script from its first poll
                        page.locator("#rate-chart rect").first.wait_for(state="attached")
                    target = args.out / f"screenshot-{name}.png"
                    page.screenshot(path=str(target), full_page=True)
                    print(f"wrote {target} ({path})")
    finally:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()
        engine.dispose()
        with server.begin() as conn:
            conn.execute(drop)
        server.dispose()


if __name__ == "__main__":
    main()
