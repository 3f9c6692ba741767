"""The dead letters in the console: the API and the page, paged newest first, whatever the
list holds."""

from __future__ import annotations

import hashlib
import html
import json
import operator
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from markupsafe import escape

from tests.helpers import assert_no_inline_code, signed_in_client
from tests.test_access import make_app
from txstream.deadletters import letter_of
from txstream.keys import Keys
from txstream.store import (
    CUT,
    DEAD_LETTER_BYTES,
    DEAD_RAW_BYTES,
    Committed,
    Store,
    dead_letter,
)

HOSTILE = ["<script>alert(1)</script>", '<img src=x onerror="alert(2)">']


@pytest.fixture
def app(backend, key_prefix):
    """The web app, with tokens required, on each backend."""
    return make_app(backend, key_prefix)


def keep(app, *raws: str, most: int = 100_000) -> None:
    """Dead letters as the subscriber keeps them (its batch script), one per raw message."""
    keys = Keys(app.config["KEY_PREFIX"])
    store = Store(app.config["ENGINE"], app.config["REDIS"], keys, 3600, dead_letters_max=most)
    store.write_redis(Committed(), [dead_letter(raw, f"bad {raw}") for raw in raws])


def get_page(client, **params) -> tuple[list[str], str | None]:
    """The raw messages of a page of /api/dead-letters, and its `next`."""
    response = client.get("/api/dead-letters", query_string=params)
    assert response.status_code == 200, response.json
    return [item["raw"] for item in response.json["items"]], response.json["next"]


def test_the_api_pages_through_the_dead_letters_newest_first(app):
    keep(app, *(f"d{i}" for i in range(7)))
    client = signed_in_client(app)
    first, cursor = get_page(client, limit=3)
    second, cursor = get_page(client, limit=3, before=cursor)
    third, cursor = get_page(client, limit=3, before=cursor)
    assert (first, second, third, cursor) == (["d6", "d5", "d4"], ["d3", "d2", "d1"], ["d0"], None)
    (item,) = client.get("/api/dead-letters", query_string={"limit": 1}).json["items"]
    assert list(item) == ["reason", "at", "size", "sha256", "raw", "kept", "cut"]
    assert item["reason"] == "bad d6" and item["size"] == 2 and len(item["sha256"]) == 64
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT.*Z", item["at"])


def test_a_cursor_stays_right_while_letters_are_appended_and_trimmed(app):
    keep(app, *(f"d{i}" for i in range(5)), most=5)
    client = signed_in_client(app)
    first, cursor = get_page(client, limit=1)
    keep(app, "d5", most=5)  # the list is full: d0 is trimmed
    second, cursor = get_page(client, limit=2, before=cursor)
    third, last = get_page(client, limit=2, before=cursor)
    assert (first, second, third, last) == (["d4"], ["d3", "d2"], ["d1"], None)
    keep(app, "d6", "d7", most=5)  # d1 and d2 are trimmed too
    assert get_page(client, limit=2, before=cursor) == ([], None)
    assert get_page(client, limit=10)[0] == ["d7", "d6", "d5", "d4", "d3"]


def test_a_list_kept_before_the_count_pages_too(app):
    """Dead letters appended before their count was kept: counted from the list's length."""
    letters = [json.dumps(dead_letter(f"old{i}", "why")) for i in range(3)]
    app.config["REDIS"].rpush(Keys(app.config["KEY_PREFIX"]).dead, *letters)
    client = signed_in_client(app)
    first, cursor = get_page(client, limit=2)
    keep(app, "new")
    assert (first, get_page(client, before=cursor)) == (["old2", "old1"], (["old0"], None))
    assert get_page(client)[0] == ["new", "old2", "old1", "old0"]


CORRUPT = [
    (b"not json", "not json"),
    (b"[1, 2]", "[1, 2]"),
    (b"\xff\xfe", "\\xff\\xfe"),
    (json.dumps({"reason": 5, "size": "x", "at": [], "raw": {"a": 1}}).encode(), None),
    (json.dumps({"reason": "r", "size": True, "sha256": 7, "raw": "x" * 100_000}).encode(), None),
    (b"y" * 1_000_000, None),
]


def test_corrupt_or_hostile_items_are_shown_as_far_as_they_can_be(app):
    app.config["REDIS"].rpush(Keys(app.config["KEY_PREFIX"]).dead, *(i for i, _ in CORRUPT))
    client = signed_in_client(app)
    response = client.get("/api/dead-letters")
    assert response.status_code == 200
    items = response.json["items"][::-1]
    assert [item["raw"] for item, (_, raw) in zip(items, CORRUPT, strict=True) if raw] == [
        raw for _, raw in CORRUPT if raw
    ]
    assert all(item["reason"] and len(item["raw"]) <= 4 * 4096 for item in items)
    assert items[3]["raw"].startswith('{"reason": 5') and items[3]["size"] is None
    assert items[4]["reason"] == "r" and items[4]["size"] is None and items[4]["sha256"] is None
    assert client.get("/dead-letters").status_code == 200


def _repeated(pieces: list) -> st.SearchStrategy:
    """A piece repeated up to 6,000 times: the worst cases of escaping, long."""
    return st.builds(operator.mul, st.sampled_from(pieces), st.integers(0, 6000))


@given(
    st.one_of(
        st.binary(max_size=10_000), _repeated([b"\xff", b"\x01", b"\\", b'"', "😀".encode()])
    ),
    st.one_of(st.text(max_size=2000), _repeated(["\x01", "😀", "x"])),
)
def test_a_dead_letter_is_at_most_6_kib_whatever_came(raw, reason):
    letter = dead_letter(raw, reason)
    kept = letter["kept"]
    assert len(json.dumps(letter).encode()) <= DEAD_LETTER_BYTES  # as written to Redis
    assert letter["size"] == len(raw) and letter["sha256"] == hashlib.sha256(raw).hexdigest()
    assert 0 <= kept <= min(len(raw), DEAD_RAW_BYTES)
    assert letter["raw"] == raw[:kept].decode("utf-8", "backslashreplace")
    if len(json.dumps(raw[:DEAD_RAW_BYTES].decode("utf-8", "backslashreplace"))) < 4500:
        assert kept == min(len(raw), DEAD_RAW_BYTES)  # cut only when it must be
    cut = letter["reason"].removesuffix(CUT)
    assert letter["reason"] == reason or (reason.startswith(cut) and len(cut) < len(reason))
    shown = letter_of(json.dumps(letter).encode())
    assert (shown.kept, shown.cut) == (kept, kept < len(raw))


def test_a_cut_letter_is_shown_as_cut(app):
    keys = Keys(app.config["KEY_PREFIX"])
    store = Store(app.config["ENGINE"], app.config["REDIS"], keys, 3600)
    store.write_redis(
        Committed(), [dead_letter(b"\xff" * 4097, "not UTF-8"), dead_letter("a", "b")]
    )
    client = signed_in_client(app)
    whole, cut = client.get("/api/dead-letters").json["items"]
    assert (whole["kept"], whole["size"], whole["cut"]) == (1, 1, False)
    assert (cut["size"], cut["cut"]) == (4097, True) and 1000 < cut["kept"] < 4097
    assert cut["raw"] == "\\xff" * cut["kept"]
    page = client.get("/dead-letters").get_data(as_text=True)
    assert page.count("Cut: the first") == 1
    assert f"Cut: the first {cut['kept']} of 4097 bytes." in page


def test_a_letter_of_before_kept_shows_its_first_4_kib(app):
    """Letters written before `kept` kept the first 4 KiB: cut when longer."""
    old = {"raw": "x" * 4096, "size": 5000, "sha256": "0" * 64, "reason": "r", "at": "t"}
    app.config["REDIS"].rpush(Keys(app.config["KEY_PREFIX"]).dead, json.dumps(old))
    (item,) = signed_in_client(app).get("/api/dead-letters").json["items"]
    assert (item["kept"], item["cut"]) == (4096, True)


@pytest.mark.parametrize("before", ["", "x", "-1", "1.5", "1" * 17, "0x10"])
def test_a_bad_cursor_is_a_400(app, before):
    response = signed_in_client(app).get("/api/dead-letters", query_string={"before": before})
    assert response.status_code == 400 and "before" in response.json["error"]
    page = signed_in_client(app).get("/dead-letters", query_string={"before": before})
    assert page.status_code == 400 and page.mimetype == "text/html"


def test_a_dead_letter_key_of_another_type_is_a_503_not_a_500(app):
    app.config["REDIS"].set(Keys(app.config["KEY_PREFIX"]).dead, "not a list")
    response = signed_in_client(app).get("/api/dead-letters")
    assert response.status_code == 503 and "holds a string" in response.json["error"]


def test_the_page_shows_hostile_payloads_as_text(app):
    keep(app, *HOSTILE)
    response = signed_in_client(app).get("/dead-letters")
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    for payload in HOSTILE:
        assert f'<pre class="raw">{escape(payload)}</pre>' in page
        assert escape(f"bad {payload}") in page
    assert_no_inline_code(page)  # the site's own scripts only
    assert "<img" not in page
    assert page.index("onerror") < page.index("alert(1)")  # newest first


def test_the_page_pages_and_is_linked_from_every_page(app):
    from txstream.pages import PAGE_SIZE

    keep(app, *(f"d{i:03d}" for i in range(PAGE_SIZE + 1)))
    client = signed_in_client(app)
    first = client.get("/dead-letters").get_data(as_text=True)
    assert "d050" in first and "d001" in first and "d000" not in first
    older = html.unescape(re.search(r'<a rel="next" href="([^"]+)">Older</a>', first)[1])
    second = client.get(older).get_data(as_text=True)
    assert "d000" in second and "d001" not in second and 'rel="next"' not in second
    assert '<a href="/dead-letters">Dead letters</a>' in client.get("/").get_data(as_text=True)


def test_the_page_needs_a_session(app):
    keep(app, "secret")
    response = app.test_client().get("/dead-letters")
    assert response.status_code == 302 and "secret" not in response.get_data(as_text=True)
