"""The whole system in a real browser, for the browser tests and docs/screenshots.py.

`running_system` starts the subscriber and the web app (gunicorn, as `make serve` runs it)
on a database and a Redis key prefix of the caller's, with AUTH on, a token made for the
occasion and a SECRET_KEY; `System.publish` sends wire lines with the project's own sink.
`chromium` launches Debian's Chromium (CHROMIUM, default /usr/bin/chromium) through
Playwright: Playwright's own browser download is not used.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import redis
from sqlalchemy import Engine

from txstream import tokens
from txstream.processes import Script, web_app
from txstream.testing import ServerMissing, stream_env, stream_name, wait_for_log
from txstream.transport import StreamSink

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
DESKTOP = {"width": 1280, "height": 800}  # the viewport of the tests and the screenshots
# A console message that is only the browser reporting what the CSP blocked: not a fault.
CSP_REPORT = ("Content Security Policy", "Content-Security-Policy")


def chromium_path() -> str:
    """The Chromium executable; `ServerMissing` when it is not installed."""
    path = shutil.which(CHROMIUM)
    if path is None:
        raise ServerMissing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    return path


@contextlib.contextmanager
def chromium(headless: bool = True):
    """A Playwright Browser running Debian's Chromium; closed on the way out."""
    from playwright.sync_api import sync_playwright  # a dev dependency only

    path = chromium_path()
    # Chromium's sandbox needs user namespaces that root (CI's containers) does not get.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=headless, args=args)
        try:
            yield browser
        finally:
            browser.close()


def sign_in(page, base_url: str, token: str) -> None:
    """Sign in through /login with `token`, as a person would."""
    page.goto(f"{base_url}/login")
    page.fill("#token", token)
    page.click("form.login button[type=submit]")
    page.wait_for_load_state()


def fatal_console_messages(messages: Sequence) -> list[str]:
    """Console errors that are not CSP reports (of Playwright ConsoleMessages), with the
    URL each is about."""
    return [
        f"{m.text} ({m.location.get('url')})"
        for m in messages
        if m.type == "error" and not any(word in m.text for word in CSP_REPORT)
    ]


@dataclass
class System:
    """The subscriber and the web app, running; `url` is the web app's."""

    url: str
    token: str
    sink: StreamSink
    subscriber: Script
    web: Script
    env: dict[str, str] = field(repr=False)

    def publish(self, *lines: str) -> None:
        """Send wire lines (well-formed or not) as the emitter does."""
        self.sink.send(list(lines))


@contextlib.contextmanager
def running_system(
    engine: Engine, redis_url: str, key_prefix: str, **extra_env: str
) -> Iterator[System]:
    """The subscriber and the web app on `engine`'s database and this Redis key prefix
    (stream transport, WINDOW_HOURS=6, AUTH on); both stopped and the token revoked after."""
    database_url = engine.url.render_as_string(hide_password=False)
    env = stream_env(redis_url, database_url, key_prefix, **extra_env)
    env |= {"AUTH": "on", "SECRET_KEY": secrets.token_hex(32), "LOG_LEVEL": "INFO"}
    env |= {"WEB_WORKERS": "1", "WEB_THREADS": "4", "RATE_LIMIT": "100000/minute"}
    token_name = f"browser-{secrets.token_hex(4)}"
    token = tokens.create(engine, token_name)
    client = redis.Redis.from_url(redis_url)
    subscriber = Script("sub_and_store.py", env=env)
    try:
        wait_for_log(subscriber, r"reading .*; waiting for transactions")
        with web_app(env) as (web, url):
            sink = StreamSink(client, stream_name(key_prefix), 0)
            yield System(url, token, sink, subscriber, web, env)
    finally:
        subscriber.kill()
        client.close()
        tokens.revoke(engine, token_name)


# What a chart element drew: a canvas's painted pixels, or an SVG's visible shapes.
_DRAWING = """(element) => {
  if (element instanceof HTMLCanvasElement) {
    const pixels = element.getContext('2d').getImageData(0, 0, element.width, element.height);
    let painted = 0;
    for (let i = 3; i < pixels.data.length; i += 4) if (pixels.data[i] !== 0) painted++;
    return {kind: 'canvas', shapes: 0, painted};
  }
  const svg = element.tagName.toLowerCase() === 'svg' ? element : element.querySelector('svg');
  if (!svg) return {kind: 'none', shapes: 0, painted: 0};
  const shapes = [...svg.querySelectorAll('path, rect, circle, line, polyline, polygon')]
    .filter((shape) => { const box = shape.getBBox(); return box.width > 0 || box.height > 0; });
  return {kind: 'svg', shapes: shapes.length, painted: 0};
}"""


def chart_drawing(page, selector: str) -> dict:
    """What the chart at `selector` (a canvas, an SVG, or an element holding an SVG) drew:
    {"kind": "canvas"|"svg"|"none", "shapes": visible SVG shapes, "painted": canvas pixels
    not transparent}. For the dashboard's and the user page's charts: compare with the
    data they were given (e.g. one bar per point, nothing painted without data)."""
    return page.locator(selector).evaluate(_DRAWING)
