"""Where the real test servers are, and what to do when one does not answer."""

from __future__ import annotations

import os

import pytest

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TEST_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "mysql+pymysql://root@127.0.0.1:3306/txstream_test"
)


def service_unavailable(what: str, error: Exception) -> None:
    """Skip the test, or fail it when the services are required (CI)."""
    message = f"{what} is not answering: {error}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (REQUIRE_SERVICES=1)")
    pytest.skip(message)
