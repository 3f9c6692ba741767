"""Every txstream setting, read once from the environment or an optional `.env` file.

All three processes (emitter, subscriber, web app) read their settings here, so a
value means the same thing everywhere. Command-line flags override these.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit, urlunsplit

from dotenv import load_dotenv

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "mysql+pymysql://root@127.0.0.1:3306/txstream"

#: The seed's log format: `10/06/2019 06:37:49 PM INFO pub_transactions: ...`
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATEFMT = "%m/%d/%Y %I:%M:%S %p"


class ConfigError(ValueError):
    """A setting has a value txstream cannot use."""


@dataclass(frozen=True)
class Settings:
    """The settings of one txstream process."""

    redis_url: str = DEFAULT_REDIS_URL
    database_url: str = DEFAULT_DATABASE_URL
    channel: str = "transactions"  # Redis pub/sub channel
    key_prefix: str = "txstream:"  # prefix of every Redis key txstream writes
    window_hours: Decimal = Decimal(6)  # length of the aggregate windows, hours
    batch_size: int = 500  # messages per database transaction, at most
    batch_interval_ms: int = 100  # flush a partial batch after this long, ms
    log_level: str = "INFO"

    @property
    def window_seconds(self) -> int:
        """The window length in whole seconds."""
        return int(self.window_hours * 3600)


def load(env: dict[str, str] | None = None) -> Settings:
    """Read the settings from `env` (default: the process environment plus `.env`)."""
    if env is None:
        load_dotenv(override=False)
        env = dict(os.environ)
    defaults = Settings()
    settings = Settings(
        redis_url=env.get("REDIS_URL") or defaults.redis_url,
        database_url=env.get("DATABASE_URL") or defaults.database_url,
        channel=_text(env, "CHANNEL", defaults.channel),
        key_prefix=env.get("KEY_PREFIX", defaults.key_prefix),
        window_hours=_window_hours(env.get("WINDOW_HOURS"), defaults.window_hours),
        batch_size=_positive_int(env, "BATCH_SIZE", defaults.batch_size),
        batch_interval_ms=_positive_int(env, "BATCH_INTERVAL_MS", defaults.batch_interval_ms),
        log_level=_log_level(env.get("LOG_LEVEL") or defaults.log_level),
    )
    return settings


def is_set(name: str) -> bool:
    """Whether the user chose a value for `name` (environment or `.env`)."""
    load_dotenv(override=False)
    return bool(os.environ.get(name))


def mask_url(url: str) -> str:
    """`url` with its password replaced by `***`, safe to log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def configure_logging(level: str) -> None:
    """Log to stderr in the seed's format."""
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt=LOG_DATEFMT, force=True)


def positive_int_flag(text: str) -> int:
    """argparse type of a flag that takes a whole number > 0."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a whole number > 0, got {text!r}")
    return value


def _text(env: dict[str, str], name: str, default: str) -> str:
    value = env.get(name, default)
    if not value:
        raise ConfigError(f"{name} must not be empty")
    return value


def _positive_int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number > 0 (got {raw!r})") from None
    if value <= 0:
        raise ConfigError(f"{name} must be a whole number > 0 (got {raw!r})")
    return value


def _window_hours(raw: str | None, default: Decimal) -> Decimal:
    if not raw:
        return default
    try:
        hours = Decimal(raw)
    except InvalidOperation:
        hours = Decimal("NaN")
    if not hours.is_finite() or hours <= 0 or hours > 8760 or (hours * 3600) % 1:
        raise ConfigError(
            f"WINDOW_HOURS must be a number of hours > 0, at most 8760, "
            f"in whole seconds (got {raw!r})"
        )
    return hours


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in logging.getLevelNamesMapping():
        raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR (got {raw!r})")
    return level
