"""The API's contract: its OpenAPI 3.1 document, served at /api/openapi.json and /api/docs.

Built here from the constants the app checks against (txstream.params and friends), so
that the rules it states are the app's own; tests/test_openapi.py keeps it equal to the
app's routes and rules, and tests/test_contract.py runs schemathesis against it.
"""

from __future__ import annotations

import functools
from decimal import Decimal

from config import MAX_PARTITIONS
from txstream.deadletters import MAX_RAW_CHARS, MAX_TEXT_CHARS
from txstream.heartbeats import HEARTBEAT_INTERVAL, LIVE_BEATS, SHOWN_CHARS, SHOWN_SUBSCRIBERS
from txstream.live import LIVE_LIMIT, RATE_BUCKETS, TOP_USERS
from txstream.params import DEFAULT_LIMIT, MAX_HOURS, MAX_LIMIT, POSITION_DIGITS
from txstream.queries import MAX_CURSOR_CHARS
from txstream.recent import RECENT_SIZE
from txstream.replica import HEADER, REASONS
from txstream.transaction import MAX_USER_ID

VERSION = "0.1.0"  # pyproject.toml's (a test compares them)

# `hours` as one regular expression: exactly what params.parse_hours accepts (a test
# compares the two), written without look-around so that every JSON Schema validator
# can use it. A plain decimal of 1-10 digits, optionally a point and 1-10 more; > 0 and
# <= 8760; whole microseconds: padded to 10 decimals, the last two are 00, 25, 50 or 75
# (1 microsecond is 1/3,600,000,000 hour).
_FRACTION = r"[0-9]{1,8}(?:[05]0?|[27]5)?"
# The same, not all zeros: a 9th or 10th digit that is not 0, or else a digit before.
_NONZERO_UP_TO_8 = "|".join(f"{'0' * k}[1-9][0-9]{{0,{7 - k}}}" for k in range(7)) + "|0{7}[1-9]"
_NONZERO_FRACTION = rf"[0-9]{{1,8}}(?:5|50|[27]5)|(?:{_NONZERO_UP_TO_8})0{{0,2}}"
_ONE_TO_8759 = (
    r"0{0,9}[1-9]|0{0,8}[1-9][0-9]|0{0,7}[1-9][0-9]{2}"
    r"|0{0,6}(?:[1-7][0-9]{3}|8[0-6][0-9]{2}|87[0-5][0-9])"
)
HOURS_PATTERN = (
    rf"^(?:(?:{_ONE_TO_8759})(?:\.{_FRACTION})?"  # 1 <= hours < 8760
    rf"|0{{1,10}}\.(?:{_NONZERO_FRACTION})"  # 0 < hours < 1
    r"|0{0,6}8760(?:\.0{1,10})?)$"  # 8760 exactly
)
_POSITION = f"^[0-9]{{1,{POSITION_DIGITS}}}$"  # a dead letter's position (params)
CURSOR_FORMAT = "txstream-cursor"  # a name of this API's own: what `next` holds
LIVE_POSITION_FORMAT = "txstream-live-position"  # what /api/live's `position` holds


def _ref(kind: str, name: str) -> dict:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _object(**properties: dict) -> dict:
    """A JSON object with exactly these keys, in this order (the order the app writes)."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _page(item: str, order: str, cursor: dict) -> dict:
    """A page of a list: up to MAX_LIMIT items of schema `item`, and the next page's cursor."""
    return _object(
        items={
            "type": "array",
            "items": _ref("schemas", item),
            "maxItems": MAX_LIMIT,
            "description": order,
        },
        next={
            "type": ["string", "null"],
            **cursor,
            "description": "The `before` of the next (older) page; null on the last page",
        },
    )


_TIME = {
    "type": "string",
    "format": "date-time",
    "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$",
    "description": "ISO-8601 UTC with microseconds, e.g. 2026-11-28T23:55:08.323301Z",
}
_USER_ID = {"type": "integer", "minimum": 1, "maximum": MAX_USER_ID}
# A field of a heartbeat as stored in Redis, which anyone with write access could forge.
_SHOWN = {"type": "string", "maxLength": SHOWN_CHARS}
_COUNT_OR_NULL = {"type": ["integer", "null"], "minimum": 0}
_SCHEMAS = {
    "Error": _object(error={"type": "string", "description": "What is wrong, in words"}),
    "Amount": {
        "type": "string",
        "pattern": r"^-?[0-9]{1,18}\.[0-9]{2}$",
        "description": "One transaction's amount: a decimal string, exactly two decimals",
    },
    "Total": {
        "type": "string",
        "pattern": r"^-?[0-9]+\.[0-9]{2}$",
        "description": "An exact sum of amounts: a decimal string, exactly two decimals",
    },
    "Time": _TIME,
    "Transaction": _object(
        time=_ref("schemas", "Time"),
        txn_id={"type": "string", "pattern": r"^[A-Za-z0-9._:-]{1,64}$"},
        user_id=_USER_ID,
        amount=_ref("schemas", "Amount"),
        ts={"type": "number", "exclusiveMinimum": 0, "description": "Unix epoch seconds"},
    ),
    "TransactionPage": _page(
        "Transaction",
        "Newest first: by ts, then txn_id, descending",
        {"format": CURSOR_FORMAT, "maxLength": MAX_CURSOR_CHARS, "pattern": "^[A-Za-z0-9_-]+$"},
    ),
    "Recent": _object(
        items={
            "type": "array",
            "items": _ref("schemas", "Transaction"),
            "maxItems": RECENT_SIZE,
            "description": "Newest first by (time, txn_id), as the user's Redis list holds them",
        },
    ),
    "Sum": _object(
        user_id=_USER_ID,
        hours={"type": "number", "exclusiveMinimum": 0, "maximum": MAX_HOURS},
        **{"from": _ref("schemas", "Time")},
        to=_ref("schemas", "Time"),
        count={"type": "integer", "minimum": 0},
        sum=_ref("schemas", "Total"),
    ),
    "Window": _object(
        user_id=_USER_ID,
        window_start=_ref("schemas", "Time"),
        window_end=_ref("schemas", "Time"),
        tx_count={"type": "integer", "minimum": 1},
        amount_sum=_ref("schemas", "Total"),
        amount_min=_ref("schemas", "Amount"),
        amount_max=_ref("schemas", "Amount"),
        updated_at=_ref("schemas", "Time"),
    ),
    "Windows": _object(
        items={
            "type": "array",
            "items": _ref("schemas", "Window"),
            "maxItems": MAX_LIMIT,
            "description": "Newest window first",
        },
    ),
    "DeadLetter": _object(
        reason={
            "type": "string",
            "maxLength": MAX_TEXT_CHARS,
            "description": "Why the message could not be stored",
        },
        at={
            "type": ["string", "null"],
            "maxLength": MAX_TEXT_CHARS,
            "description": "When, as the subscriber wrote it (ISO-8601 UTC); null if unreadable",
        },
        size={
            "type": ["integer", "null"],
            "minimum": 0,
            "description": "The whole message's size in bytes; null if unreadable",
        },
        sha256={
            "type": ["string", "null"],
            "maxLength": 64,
            "description": "The whole message's SHA-256, hex; null if unreadable",
        },
        raw={
            "type": "string",
            "maxLength": MAX_RAW_CHARS,
            "description": (
                "The message's first `kept` bytes as text, bytes that are not UTF-8 as "
                "\\xNN; for an item of the list that is not a dead letter, the item itself"
            ),
        },
        kept={
            **_COUNT_OR_NULL,
            "description": "How many bytes of the message `raw` shows; null if unreadable",
        },
        cut={
            "type": "boolean",
            "description": "Whether `raw` shows less than the whole message (`kept` < `size`)",
        },
    ),
    "DeadLetterPage": _page("DeadLetter", "Newest first", {"pattern": _POSITION}),
    "Health": _object(
        redis={"enum": ["ok", "down"]},
        database={"enum": ["ok", "down"]},
    ),
    "Subscriber": _object(
        name=_SHOWN,
        host=_SHOWN,
        pid=_COUNT_OR_NULL,
        transport=_SHOWN,
        started_at=_SHOWN,
        heartbeat_at=_SHOWN,
        stored=_COUNT_OR_NULL,
        rate={"type": ["number", "null"], "minimum": 0, "description": "tx/s, last interval"},
        last_commit_at={**_SHOWN, "description": "Empty before its first commit"},
        live={
            "type": "boolean",
            "description": f"Its heartbeat is at most {LIVE_BEATS * HEARTBEAT_INTERVAL:g} s old",
        },
    ),
    "Stream": _object(
        name={"type": "string", "description": "STREAM (its partitions: `partitions`)"},
        length={"type": "integer", "minimum": 0, "description": "Of all partitions"},
        group={"type": "string"},
        group_exists={"type": "boolean", "description": "In every partition"},
        lag={
            **_COUNT_OR_NULL,
            "description": "Entries not yet delivered to the group; null: a partition cannot tell",
        },
        pending={
            **_COUNT_OR_NULL,
            "description": "Delivered, not yet acknowledged; null: a partition has no group",
        },
        lost={
            **_COUNT_OR_NULL,
            "description": "Entries deleted from the stream (trimmed) before they were stored, "
            "as the subscribers found them; null: a partition's count cannot be read",
        },
        consumers={
            "type": "array",
            "items": _object(
                name=_SHOWN,
                pending={"type": "integer", "minimum": 0, "description": "In all partitions"},
                idle_ms={"type": "integer", "minimum": 0, "description": "The least"},
            ),
        },
        partitions={
            "type": "array",
            "items": _object(
                name={"type": "string"},
                length={"type": "integer", "minimum": 0},
                group_exists={"type": "boolean"},
                lag=_COUNT_OR_NULL,
                pending=_COUNT_OR_NULL,
                lost=_COUNT_OR_NULL,
            ),
            "minItems": 1,
            "maxItems": MAX_PARTITIONS,
            "description": "Each partition's stream (STREAM_PARTITIONS), by partition",
        },
    ),
    "System": _object(
        redis={"enum": ["ok", "down"]},
        database={"enum": ["ok", "down"]},
        transport={"enum": ["pubsub", "stream"]},
        subscribers={
            "type": ["array", "null"],
            "items": _ref("schemas", "Subscriber"),
            "maxItems": SHOWN_SUBSCRIBERS,
            "description": (
                f"Those with a heartbeat kept in Redis, latest first, at most "
                f"{SHOWN_SUBSCRIBERS}; null: Redis down"
            ),
        },
        more_subscribers={
            **_COUNT_OR_NULL,
            "description": "How many more the index lists than are shown; null: Redis down",
        },
        stream={
            "oneOf": [_ref("schemas", "Stream"), {"type": "null"}],
            "description": "null with TRANSPORT=pubsub, or while Redis is down",
        },
        dead_letters={
            **_COUNT_OR_NULL,
            "description": "null while Redis is down, or while its key holds another type",
        },
        window={
            "oneOf": [
                _object(
                    window_seconds={"type": "integer", "minimum": 1},
                    bucket_seconds={"type": "integer", "minimum": 1},
                ),
                {"type": "null"},
            ],
            "description": "The aggregates' recorded layout; null: none yet, or database down",
        },
        replica={
            "oneOf": [
                _object(
                    reads_from={"enum": ["replica", "primary"]},
                    lag_s={
                        **_COUNT_OR_NULL,
                        "description": "Seconds behind the primary; null: unknown",
                    },
                    reason={
                        "oneOf": [{"enum": list(REASONS)}, {"type": "null"}],
                        "description": "Why reads go to the primary; null: they do not",
                    },
                ),
                {"type": "null"},
            ],
            "description": (
                "Where the reads go (DATABASE_READ_URL), as last checked; null: no replica. "
                "`database` is the primary's health"
            ),
        },
    ),
}

_CURSOR = {
    "type": "string",
    "format": CURSOR_FORMAT,
    "minLength": 1,
    "maxLength": MAX_CURSOR_CHARS,
    "pattern": "^[A-Za-z0-9_-]+$",
}
_LIVE_POSITION = {**_CURSOR, "format": LIVE_POSITION_FORMAT}
_COUNT = {"type": "integer", "minimum": 0}
_SINCE = {
    "oneOf": [_ref("schemas", "Time"), {"type": "null"}],
    "description": "Counted since then (Redis, which alone keeps it, lost it); null: all time",
}
_TOP_USER = _object(user_id=_USER_ID, count=_COUNT, sum=_ref("schemas", "Total"))
_TOP_LIST = {"type": "array", "items": _TOP_USER, "maxItems": TOP_USERS}
_SCHEMAS["Live"] = _object(
    items={
        "type": "array",
        "items": _ref("schemas", "Transaction"),
        "maxItems": LIVE_LIMIT,
        "description": (
            "The newest transactions stored after `after`, newest stored first, whatever "
            "their event time. An item of an earlier answer may come again (while a "
            "transaction stored just before it may still commit): skip the ones you show"
        ),
    },
    position={
        **_LIVE_POSITION,
        "description": (
            "The `after` of the next poll: an opaque place in the order the transactions are stored"
        ),
    },
    rate=_object(
        bucket_seconds={"type": "integer", "minimum": 1},
        series={
            "type": "array",
            "items": _object(at=_ref("schemas", "Time"), stored=_COUNT),
            "minItems": RATE_BUCKETS,
            "maxItems": RATE_BUCKETS,
            "description": "Transactions stored per bucket (commit time), oldest first",
        },
    ),
    top=_object(
        window_start=_ref("schemas", "Time"),
        by_sum={**_TOP_LIST, "description": "The largest absolute sums of the window"},
        by_count={**_TOP_LIST, "description": "The most transactions in the window"},
    ),
    counts=_object(
        stored=_COUNT,
        duplicates=_COUNT,
        dead_letters=_COUNT,
        since=_object(
            duplicates=_SINCE,
            dead_letters=_SINCE,
        ),
        rebuilding={
            "type": "boolean",
            "description": (
                "Redis is rebuilding what it lost from the database: `stored` lacks the "
                "rows stored before the loss until it is done"
            ),
        },
    ),
    subscribers={**_COUNT, "description": "Subscribers with a recent heartbeat"},
    health=_object(
        redis={"type": "string", "enum": ["ok"]}, database={"type": "string", "enum": ["ok"]}
    ),
)

_PARAMETERS = {
    "user_id": {
        "name": "user_id",
        "in": "path",
        "required": True,
        "description": f"A user id: 1 to 19 ASCII digits, 1 to {MAX_USER_ID} (2^63-1)",
        "schema": {**_USER_ID, "format": "int64"},
        "example": 1,
    },
    "hours": {
        "name": "hours",
        "in": "query",
        "required": False,
        "description": (
            f"The length of the span ending now: a plain decimal number of hours > 0 and "
            f"<= {MAX_HOURS}, in whole microseconds (e.g. 6 or 1.5; no sign, exponent or "
            f"spaces); default WINDOW_HOURS"
        ),
        "schema": {"type": "string", "pattern": HOURS_PATTERN},
        "example": "6",
    },
    "limit": {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": f"How many items, at most: a whole number from 1 to {MAX_LIMIT}",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        "example": 2,
    },
    "before": {
        "name": "before",
        "in": "query",
        "required": False,
        "description": (
            "The `next` of the previous page, as it came: an opaque cursor, valid only as "
            "this API made it (anything else is a 400). Absent: the newest page"
        ),
        "schema": _CURSOR,
    },
    "after": {
        "name": "after",
        "in": "query",
        "required": False,
        "description": (
            "The `position` of the previous answer, as it came (anything else is a 400). "
            "Absent: the newest transactions stored"
        ),
        "schema": _LIVE_POSITION,
    },
    "dead_before": {
        "name": "before",
        "in": "query",
        "required": False,
        "description": (
            "The `next` of the previous page: the position of the oldest dead letter it "
            "showed; this page has those before it. Letters appended since do not move it; "
            "trimmed ones are gone. Absent: the newest page"
        ),
        "schema": {"type": "string", "pattern": _POSITION},
    },
}

_REPLICA_LAG = {
    "description": (
        "Present only when the answer was read from the MariaDB replica (DATABASE_READ_URL): "
        "how far it was behind the primary, in whole seconds (its Seconds_Behind_Master, "
        "read at most about a second before), at most READ_MAX_LAG_S. Absent: read from "
        "the primary"
    ),
    "required": False,
    "schema": {"type": "integer", "minimum": 0},
}
_RETRY_AFTER = {
    "description": "Seconds to wait before trying again",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}
_RESPONSES = {
    "BadRequest": {
        "description": (
            "A parameter breaks its rule (the text names it and says why), or the Host "
            "header is not one of TRUSTED_HOSTS"
        ),
        "content": _json(_ref("schemas", "Error")),
    },
    "Unauthorized": {
        "description": "No bearer token, or not a valid one (never made, or revoked)",
        "headers": {
            "WWW-Authenticate": {
                "description": (
                    'Bearer realm="txstream", and error="invalid_token" if a token was sent'
                ),
                "required": True,
                "schema": {"type": "string", "pattern": "^Bearer "},
            }
        },
        "content": _json(_ref("schemas", "Error")),
    },
    "NotFound": {
        "description": "No such endpoint (e.g. an empty user id)",
        "content": _json(_ref("schemas", "Error")),
    },
    "MethodNotAllowed": {
        "description": "Any method but GET (and HEAD, OPTIONS) on an endpoint",
        "headers": {
            "Allow": {
                "description": "The methods the endpoint takes",
                "required": True,
                "schema": {"type": "string"},
            }
        },
        "content": _json(_ref("schemas", "Error")),
    },
    "TooManyRequests": {
        "description": "This token (or, without one, this address) made more than RATE_LIMIT",
        "headers": {"Retry-After": _RETRY_AFTER},
        "content": _json(_ref("schemas", "Error")),
    },
    "Unavailable": {
        "description": "The database or Redis is down; try again shortly",
        "headers": {"Retry-After": _RETRY_AFTER},
        "content": _json(_ref("schemas", "Error")),
    },
}

_DESCRIPTION = f"""\
Card transactions as txstream stores them. Amounts are JSON strings with exactly two
decimals (never floats); times are ISO-8601 UTC with microseconds; `ts` is epoch seconds.
Objects have their keys in the order listed here.

Every request under /api needs `Authorization: Bearer <token>` (made with `flask --app app
create-token NAME`), or else the session of the pages (/login), for GET and HEAD from the same
site; this document and /api/docs need neither, and /healthz is open too. Every
error is a JSON object `{{"error": "..."}}`: 400 for a bad parameter, 401 (with
WWW-Authenticate) without a valid token, 404 for an unknown path under /api, 405 (with
Allow) for a method other than GET (or HEAD, OPTIONS), 429 (with Retry-After) past the
rate limit, 503 (with Retry-After) while the database or Redis is down. Query parameters
not listed here are ignored.

With a replica configured, the answers read from the database may come from it; those
carry its lag in whole seconds in the header {HEADER}.

Lists are paged by cursor: pass a page's `next` as `before` to get the older page; `limit`
is 1 to {MAX_LIMIT}, {DEFAULT_LIMIT} by default."""


def _operation(
    operation_id: str,
    summary: str,
    ok: str,
    content: dict,
    parameters: tuple[str, ...] = (),
    open_: bool = False,
    replica_read: bool = False,
) -> dict:
    """A GET path: its 200, and the errors that can answer it. `replica_read`: its 200 may
    be read from the replica, and then says so (X-Replica-Lag)."""
    operation: dict = {"operationId": operation_id, "summary": summary}
    if open_:
        operation["security"] = []  # no token needed
    if parameters:
        operation["parameters"] = [_ref("parameters", name) for name in parameters]
    responses: dict = {"200": {"description": ok, "content": content}}
    if replica_read:
        responses["200"]["headers"] = {HEADER: _REPLICA_LAG}
    responses["400"] = _ref("responses", "BadRequest")
    if not open_:
        responses["401"] = _ref("responses", "Unauthorized")
    if "user_id" in parameters:
        responses["404"] = _ref("responses", "NotFound")
    responses["429"] = _ref("responses", "TooManyRequests")
    if not open_:
        responses["503"] = _ref("responses", "Unavailable")
    operation["responses"] = responses
    return {"get": operation}


_HEALTH = {
    "get": {
        "operationId": "health",
        "summary": "Whether Redis and the database answer (not rate limited)",
        "security": [],
        "responses": {
            "200": {"description": "Both answer", "content": _json(_ref("schemas", "Health"))},
            "400": _ref("responses", "BadRequest"),
            "503": {
                "description": "One of them (or both) is down: named by `down`",
                "content": _json(_ref("schemas", "Health")),
            },
        },
    }
}


@functools.cache
def document(window_hours: Decimal) -> dict:
    """The OpenAPI 3.1 document of the API; `hours` defaults to `window_hours`."""
    hours = _PARAMETERS["hours"]
    parameters = {
        **_PARAMETERS,
        "hours": {**hours, "schema": {**hours["schema"], "default": str(window_hours)}},
    }
    user_id, page = ("user_id",), ("limit", "before")
    return {
        "openapi": "3.1.0",
        "info": {"title": "txstream", "version": VERSION, "description": _DESCRIPTION},
        "security": [{"bearer": []}],
        "paths": {
            "/api/users/{user_id}/sum": _operation(
                "userSum",
                "Count and exact sum of the user's transactions with now - hours < ts <= now",
                "The count and the sum",
                _json(_ref("schemas", "Sum")),
                user_id + ("hours",),
                replica_read=True,
            ),
            "/api/users/{user_id}/transactions": _operation(
                "userTransactions",
                "The user's transactions, newest first, one page at a time",
                "A page",
                _json(_ref("schemas", "TransactionPage")),
                user_id + page,
                replica_read=True,
            ),
            "/api/users/{user_id}/recent": _operation(
                "userRecent",
                f"The user's latest {RECENT_SIZE} transactions, read from its Redis list "
                "(from the database while Redis rebuilds what it lost)",
                "The user's recent list (empty for an unknown user)",
                _json(_ref("schemas", "Recent")),
                user_id,
                replica_read=True,
            ),
            "/api/users/{user_id}/windows": _operation(
                "userWindows",
                "The user's stored window totals, newest window first",
                "The window totals",
                _json(_ref("schemas", "Windows")),
                user_id + ("limit",),
                replica_read=True,
            ),
            "/api/transactions": _operation(
                "allTransactions",
                "The transactions of all users, newest first, one page at a time",
                "A page",
                _json(_ref("schemas", "TransactionPage")),
                page,
                replica_read=True,
            ),
            "/api/system": _operation(
                "system",
                "Subscribers, stream, dead letters, layout and health, for operators; "
                "200 even while Redis or the database is down (it says which)",
                "The system's state",
                _json(_ref("schemas", "System")),
            ),
            "/api/live": _operation(
                "live",
                "What the dashboard polls: the transactions stored after `after`, the "
                "ingest rate over 15 minutes, the current window's top users, counts and "
                "health",
                "The dashboard's data",
                _json(_ref("schemas", "Live")),
                ("after",),
                replica_read=True,
            ),
            "/api/dead-letters": _operation(
                "deadLetters",
                "The messages that could not be stored, with their reasons, newest first",
                "A page",
                _json(_ref("schemas", "DeadLetterPage")),
                ("limit", "dead_before"),
            ),
            "/healthz": _HEALTH,
            "/api/openapi.json": _operation(
                "openapi",
                "This API's OpenAPI 3.1 document",
                "The document",
                _json({"type": "object"}),
                open_=True,
            ),
            "/api/docs": _operation(
                "docs",
                "The same document as a web page",
                "The page",
                {"text/html": {"schema": {"type": "string"}}},
                open_=True,
            ),
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token made with `flask --app app create-token NAME`",
                }
            },
            "parameters": parameters,
            "schemas": _SCHEMAS,
            "responses": _RESPONSES,
        },
    }


def resolve(spec: dict, node: dict) -> dict:
    """`node`, or what its `$ref` points at within `spec`."""
    while "$ref" in node:
        for part in node["$ref"].removeprefix("#/").split("/"):
            spec = spec[part]
        node = spec
    return node


def rule(schema: dict) -> str:
    """A schema's rules in a few words, for the docs page (e.g. `integer, >= 1, <= 500`)."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[1]
    if "oneOf" in schema:
        return " or ".join(rule(choice) for choice in schema["oneOf"])
    if schema.get("type") == "array":
        most = f", at most {schema['maxItems']}" if "maxItems" in schema else ""
        return f"array of {rule(schema['items'])}{most}"
    kind = schema.get("type", "")
    words = [" or ".join(kind) if isinstance(kind, list) else kind]
    if "enum" in schema:
        words.append("one of " + ", ".join(schema["enum"]))
    for keyword, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<=")):
        if keyword in schema:
            words.append(f"{sign} {schema[keyword]}")
    if "maxLength" in schema:
        words.append(f"{schema.get('minLength', 0)} to {schema['maxLength']} characters")
    for keyword in ("format", "pattern", "default"):
        if keyword in schema:
            words.append(f"{keyword} {schema[keyword]}")
    return ", ".join(word for word in words if word)


def operations(spec: dict) -> list[dict]:
    """Each operation of `spec` with its parameters and responses resolved, for the docs page."""
    found = []
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            parameters = [resolve(spec, p) for p in operation.get("parameters", [])]
            query = "&".join(
                f"{p['name']}={p['example']}"
                for p in parameters
                if p["in"] == "query" and "example" in p
            )
            example = path
            for p in parameters:
                if p["in"] == "path":
                    example = example.replace(f"{{{p['name']}}}", str(p["example"]))
            if query:
                example += f"?{query}"
            found.append(
                {
                    "method": method.upper(),
                    "path": path,
                    "operation": operation,
                    "token": operation.get("security", spec["security"]) != [],
                    "parameters": parameters,
                    "responses": {
                        status: resolve(spec, response)
                        for status, response in operation["responses"].items()
                    },
                    "example": example,
                }
            )
    return found
