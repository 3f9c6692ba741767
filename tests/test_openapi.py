"""The OpenAPI document and the docs page: open, complete, and true to the app's routes and rules.

tests/test_contract.py runs schemathesis with it against the live app.
"""

from __future__ import annotations

import html
import json
import random
import re
import tomllib
from datetime import timedelta
from decimal import Decimal

import pytest
import schemathesis

from tests.helpers import BIGGEST, assert_no_inline_code, line, seed
from tests.test_api import BAD_HOURS
from txstream import openapi, params, queries
from txstream.access import OPEN_ENDPOINTS
from txstream.keys import Keys
from txstream.processes import ROOT
from txstream.store import dead_letter
from txstream.transaction import MAX_USER_ID

HOW = ["GET"]  # what the document describes; Flask adds HEAD and OPTIONS by itself


def spec_of(app) -> dict:
    return openapi.document(app.config["WINDOW_HOURS"])


def documented_routes(app) -> dict[str, str]:
    """The app's routes of the API, `/api/users/{user_id}/sum` style, and their endpoints."""
    routes = {}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/") or rule.endpoint.startswith("api."):
            assert sorted(rule.methods - {"HEAD", "OPTIONS"}) == HOW, rule
            routes[re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)] = rule.endpoint
    return routes


def test_the_document_describes_every_route_of_the_api_and_no_other(app):
    spec = spec_of(app)
    assert set(spec["paths"]) == set(documented_routes(app))
    for methods in spec["paths"].values():
        assert [method.upper() for method in methods] == HOW


def test_exactly_the_open_endpoints_need_no_token(app):
    spec = spec_of(app)
    assert spec["components"]["securitySchemes"]["bearer"] == {
        **spec["components"]["securitySchemes"]["bearer"],
        "type": "http",
        "scheme": "bearer",
    }
    assert spec["security"] == [{"bearer": []}]
    for path, endpoint in documented_routes(app).items():
        operation = spec["paths"][path]["get"]
        is_open = operation.get("security") == []
        assert is_open == (endpoint in OPEN_ENDPOINTS), path
        assert ("401" in operation["responses"]) == (not is_open), path
    assert {"/api/openapi.json", "/api/docs", "/healthz"} == {
        path for path, methods in spec["paths"].items() if methods["get"].get("security") == []
    }


def test_the_document_is_valid_openapi_3_1(app):
    spec = spec_of(app)
    assert spec["openapi"].startswith("3.1.")
    with open(ROOT / "pyproject.toml", "rb") as file:
        assert spec["info"]["version"] == tomllib.load(file)["project"]["version"]
    schemathesis.openapi.from_dict(spec).validate()  # against the OpenAPI 3.1 schema


def test_parameters_state_the_rules_of_txstream_params(app):
    parameters = spec_of(app)["components"]["parameters"]
    limit, before = parameters["limit"]["schema"], parameters["before"]["schema"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (
        1,
        params.MAX_LIMIT,
        params.DEFAULT_LIMIT,
    )
    assert before["maxLength"] == queries.MAX_CURSOR_CHARS
    assert f"<= {params.MAX_HOURS}" in parameters["hours"]["description"]
    assert parameters["hours"]["schema"]["default"] == str(app.config["WINDOW_HOURS"])
    user_id = parameters["user_id"]["schema"]
    assert (user_id["minimum"], user_id["maximum"]) == (1, MAX_USER_ID)


def _accepts(parse, text: str) -> bool:
    try:
        parse(text)
    except params.InvalidParameter:
        return False
    return True


def _hours_candidates() -> set[str]:
    """Near misses of every rule of `hours`: lengths, zeros, 8760, microsecond fractions."""
    rng = random.Random(9)
    found = set(BAD_HOURS) | {"6", "1.5", "8760", "8760.0000000000", "0.0000000025"}
    for _ in range(30_000):
        whole = "0" * rng.randint(0, 10) + rng.choice(
            ["", "1", "42", "999", "8759", "8760", "8761"]
        )
        if rng.random() < 0.7:
            digits = "0" * rng.randint(0, 9) + "".join(
                rng.choices("0123456789", k=rng.randint(0, 11))
            )
            digits = digits[: rng.randint(0, 12)]
            whole += "." + digits[:-2] + rng.choice(["", "00", "25", "50", "75", "05", "20", "5"])
        found.add(whole)
    return found


def test_the_hours_pattern_accepts_exactly_what_the_app_accepts():
    pattern = re.compile(openapi.HOURS_PATTERN)
    candidates = _hours_candidates()
    accepted = {text for text in candidates if _accepts(lambda t: params.parse_hours(t, 6), text)}
    assert 2_000 < len(accepted) < len(candidates) - 2_000  # both kinds, plenty of each
    assert {text for text in candidates if pattern.fullmatch(text)} == accepted


@pytest.mark.parametrize(
    "name, parse, good, bad",
    [
        ("limit", params.parse_limit, [1, 2, 499, params.MAX_LIMIT], [0, params.MAX_LIMIT + 1]),
        ("user_id", params.parse_user_id, [1, MAX_USER_ID], [0, -1, MAX_USER_ID + 1]),
    ],
)
def test_integer_parameters_take_what_the_app_takes(app, name, parse, good, bad):
    schema = spec_of(app)["components"]["parameters"][name]["schema"]
    assert schema["type"] == "integer"
    for number in good + bad:
        in_range = schema["minimum"] <= number <= schema["maximum"]
        assert in_range == (number in good) == _accepts(parse, str(number)), number


def _assert_keys_follow(spec: dict, schema: dict, value) -> None:
    """`value` has the keys of `schema`, in its order, all the way down."""
    schema = openapi.resolve(spec, schema)
    if "properties" in schema:
        assert list(value) == list(schema["properties"]) == schema["required"]
        assert schema["additionalProperties"] is False
        for key, item in value.items():
            _assert_keys_follow(spec, schema["properties"][key], item)
    elif schema.get("type") == "array":
        assert value, "an empty list shows nothing"
        for item in value:
            _assert_keys_follow(spec, schema["items"], item)


@pytest.mark.parametrize(
    "url, path, status",
    [
        ("/api/users/1/sum", "/api/users/{user_id}/sum", 200),
        ("/api/users/1/transactions?limit=1", "/api/users/{user_id}/transactions", 200),
        ("/api/users/1/recent", "/api/users/{user_id}/recent", 200),
        ("/api/users/1/windows", "/api/users/{user_id}/windows", 200),
        ("/api/transactions?limit=2", "/api/transactions", 200),
        ("/api/dead-letters?limit=2", "/api/dead-letters", 200),
        ("/healthz", "/healthz", 200),
        ("/api/transactions?limit=0", "/api/transactions", 400),
        ("/api/users/1/sum?hours=0", "/api/users/{user_id}/sum", 400),
        ("/api/dead-letters?before=x", "/api/dead-letters", 400),
    ],
)
def test_responses_have_the_documented_keys_in_the_documented_order(app, client, url, path, status):
    now = app.config["CLOCK"]()
    seed(app, line(1, BIGGEST, now, "a"), line(1, "-0.50", now - timedelta(hours=7), "b"))
    letter = json.dumps(dead_letter("1,2", "why", now))
    app.config["REDIS"].rpush(Keys(app.config["KEY_PREFIX"]).dead, letter)
    response = client.get(url)
    assert response.status_code == status
    spec = spec_of(app)
    documented = openapi.resolve(spec, spec["paths"][path]["get"]["responses"][str(status)])
    _assert_keys_follow(spec, documented["content"]["application/json"]["schema"], response.json)


def test_the_document_and_the_docs_page_need_no_token(anonymous, app):
    document = anonymous.get("/api/openapi.json")
    assert document.status_code == 200 and document.is_json
    assert document.get_json() == spec_of(app)
    assert anonymous.get("/api/docs").status_code == 200
    assert anonymous.get("/api/transactions").status_code == 401


def test_the_docs_page_shows_every_path_and_loads_nothing_from_elsewhere(anonymous, app):
    response = anonymous.get("/api/docs")
    page = response.get_data(as_text=True)
    assert response.mimetype == "text/html"
    for path in spec_of(app)["paths"]:
        assert f"GET {path}</code>" in page
    for parameter in spec_of(app)["components"]["parameters"].values():
        assert f"<code>{parameter['name']}</code>" in page
    example = 'curl -H "Authorization: Bearer $TOKEN" "$TXSTREAM_URL/api/users/1/sum?hours=6"'
    assert example in html.unescape(page)
    assert_no_inline_code(page)
    for url in re.findall(r'(?:src|href|action)="([^"]*)"', page):
        assert url.startswith(("/", "#")) and not url.startswith("//"), url
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]


def test_the_docs_page_names_no_host_but_public_url(app, anonymous):
    page = anonymous.get("/api/docs", headers={"Host": "evil.example"}).get_data(as_text=True)
    assert "evil.example" not in page
    app.config["PUBLIC_URL"] = "https://txstream.bank.example"
    page = anonymous.get("/api/docs", headers={"Host": "evil.example"}).get_data(as_text=True)
    assert "evil.example" not in page and "$TXSTREAM_URL" not in page
    assert "https://txstream.bank.example/api/transactions" in page


def test_a_changed_window_changes_the_documented_default(app, client):
    app.config["WINDOW_HOURS"] = Decimal("0.25")
    hours = client.get("/api/openapi.json").get_json()["components"]["parameters"]["hours"]
    assert hours["schema"]["default"] == "0.25"
