"""Every txstream setting, read once from the environment or an optional `.env` file.

All three processes (emitter, subscriber, web app) read their settings here, so a
value means the same thing everywhere. Command-line flags override these.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from urllib.parse import unquote_plus, urlsplit

from dotenv import load_dotenv
from limits import parse_many  # RATE_LIMIT's notation, e.g. 600/minute
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from txstream.keys import Keys

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "mysql+pymysql://root@127.0.0.1:3306/txstream"
# Event times are accepted up to now + this, in seconds: senders' clocks run ahead a little.
DEFAULT_MAX_CLOCK_SKEW = 86_400
MAX_CLOCK_SKEW_LIMIT = 366 * 86_400  # at most: stored times stay far from year 10000
DEFAULT_DEAD_LETTERS_MAX = 100_000  # dead letters kept in Redis, the newest
DEFAULT_READ_MAX_LAG_S = 5.0  # seconds a replica may be behind and still be read

#: The seed's log format: `10/06/2019 06:37:49 PM INFO pub_transactions: ...`
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATEFMT = "%m/%d/%Y %I:%M:%S %p"


TRANSPORTS = ("pubsub", "stream")
MAX_PARTITIONS = 256  # STREAM_PARTITIONS: far more than masters a cluster usually has
MAX_MIN_REPLICAS = 16


class ConfigError(ValueError):
    """A setting has a value txstream cannot use."""


@dataclass(frozen=True)
class Settings:
    """The settings of one txstream process."""

    redis_url: str = DEFAULT_REDIS_URL
    database_url: str = DEFAULT_DATABASE_URL
    # The web app's reads go to this MariaDB replica while it answers and is at most
    # read_max_lag_s behind; "" = no replica, reads go to database_url (txstream.replica).
    database_read_url: str = ""
    read_max_lag_s: float = DEFAULT_READ_MAX_LAG_S  # seconds
    channel: str = "transactions"  # Redis pub/sub channel
    key_prefix: str = "txstream:"  # prefix of every Redis key txstream writes
    window_hours: Decimal = Decimal(6)  # length of the aggregate windows, hours
    batch_size: int = 2000  # messages per database transaction, at most (docs/BENCHMARKS.md)
    batch_interval_ms: int = 100  # flush a partial batch after this long, ms
    log_level: str = "INFO"
    transport: str = "pubsub"  # "pubsub" (the design card) or "stream" (durable)
    stream: str = "transactions"  # Redis stream of the stream transport
    # entries a partition's stream may hold (all unacknowledged: the subscribers trim
    # what every group acknowledged); the emitter waits at the cap; 0 = no cap
    stream_maxlen: int = 1_000_000
    group: str = "store"  # the subscribers' consumer group
    claim_idle_ms: int = 30_000  # take over entries pending this long on another consumer
    max_deliveries: int = 5  # an entry delivered more often is stored alone (or a dead letter)
    pubsub_buffer: int = 100_000  # messages read ahead of the database, at most
    max_clock_skew: int = DEFAULT_MAX_CLOCK_SKEW  # seconds: latest event time is now + this
    dead_letters_max: int = DEFAULT_DEAD_LETTERS_MAX  # the dead-letter list's cap
    auth: bool = True  # the web app asks for a token; AUTH=off for local experiments only
    secret_key: str = field(default="", repr=False)  # signs the sign-in form's cookie
    # A page session ends unused this long, and this long after its sign-in in any case (s)
    session_idle_timeout: int = 30 * 60
    session_lifetime: int = 12 * 3600
    rate_limit: str = "600/minute"  # API requests per token (`limits` notation)
    auth_fail_limit: str = "20/minute"  # failed authentications per client address
    trusted_hosts: tuple[str, ...] = ()  # Host headers the web app answers; () = any
    # The largest request body the web app takes, bytes (its only form, the sign-in's, holds
    # a token, a CSRF token and a path); a longer one gets a 413 before it is read.
    max_content_length: int = 64 * 1024
    # Proxies in front of the web app whose X-Forwarded-For/-Proto it believes (the client's
    # address, for AUTH_FAIL_LIMIT); `make serve` sets 1, its nginx. 0 = the peer's address.
    proxy_hops: int = 0
    public_url: str = ""  # the web app's address, for the API docs' examples; "" = none
    # The subscriber's Prometheus metrics port; 0 = none. 9108: in 9100-9999, where exporters
    # listen (a firewall rule for them covers it), and none of the common ones' (9100, 9104).
    metrics_port: int = 9108
    metrics_bind: str = "127.0.0.1"  # address of the metrics server: this host only
    # Redis Cluster: None = ask the server (INFO cluster), at connection (txstream.redisconn)
    redis_cluster: bool | None = None
    stream_partitions: int = 1  # streams (channels) the transactions are split in, by user
    # Replicas that must hold each chunk before the emitter counts it as sent (WAIT);
    # None = 1 on a cluster, 0 on a single server (nothing to fail over to)
    min_replicas: int | None = None
    replica_wait_ms: int = 1000  # how long the emitter waits for them per chunk, ms

    @property
    def keys(self) -> Keys:
        """Every Redis name of these settings."""
        return Keys(
            self.key_prefix,
            self.stream,
            self.channel,
            self.stream_partitions,
            cluster=bool(self.redis_cluster),
        )

    @property
    def replicas_needed(self) -> int:
        """MIN_REPLICAS, or its default for the kind of Redis."""
        if self.min_replicas is not None:
            return self.min_replicas
        return 1 if self.redis_cluster else 0

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
        database_read_url=_read_url(env.get("DATABASE_READ_URL", "")),
        read_max_lag_s=_max_lag(env.get("READ_MAX_LAG_S"), defaults.read_max_lag_s),
        channel=_text(env, "CHANNEL", defaults.channel),
        key_prefix=env.get("KEY_PREFIX", defaults.key_prefix),
        window_hours=_window_hours(env.get("WINDOW_HOURS"), defaults.window_hours),
        batch_size=_positive_int(env, "BATCH_SIZE", defaults.batch_size),
        batch_interval_ms=_positive_int(env, "BATCH_INTERVAL_MS", defaults.batch_interval_ms),
        log_level=_log_level(env.get("LOG_LEVEL") or defaults.log_level),
        transport=_choice(env, "TRANSPORT", TRANSPORTS, defaults.transport),
        stream=_text(env, "STREAM", defaults.stream),
        stream_maxlen=_whole(env, "STREAM_MAXLEN", defaults.stream_maxlen, minimum=0),
        group=_text(env, "GROUP", defaults.group),
        claim_idle_ms=_positive_int(env, "CLAIM_IDLE_MS", defaults.claim_idle_ms),
        max_deliveries=_positive_int(env, "MAX_DELIVERIES", defaults.max_deliveries),
        pubsub_buffer=_positive_int(env, "PUBSUB_BUFFER", defaults.pubsub_buffer),
        max_clock_skew=_whole(
            env, "MAX_CLOCK_SKEW", defaults.max_clock_skew, 0, maximum=MAX_CLOCK_SKEW_LIMIT
        ),
        dead_letters_max=_positive_int(env, "DEAD_LETTERS_MAX", defaults.dead_letters_max),
        auth=_choice(env, "AUTH", ("on", "off"), "on") == "on",
        secret_key=env.get("SECRET_KEY", ""),
        session_idle_timeout=_positive_int(
            env, "SESSION_IDLE_TIMEOUT", defaults.session_idle_timeout
        ),
        session_lifetime=_positive_int(env, "SESSION_LIFETIME", defaults.session_lifetime),
        rate_limit=_rate_limit(env.get("RATE_LIMIT") or defaults.rate_limit),
        auth_fail_limit=_rate_limit(
            env.get("AUTH_FAIL_LIMIT") or defaults.auth_fail_limit, "AUTH_FAIL_LIMIT"
        ),
        trusted_hosts=tuple(
            h.strip() for h in env.get("TRUSTED_HOSTS", "").split(",") if h.strip()
        ),
        max_content_length=_positive_int(env, "MAX_CONTENT_LENGTH", defaults.max_content_length),
        proxy_hops=_whole(env, "PROXY_HOPS", defaults.proxy_hops, 0, maximum=10),
        public_url=_public_url(env.get("PUBLIC_URL", "")),
        metrics_port=_whole(env, "METRICS_PORT", defaults.metrics_port, 0, maximum=65535),
        metrics_bind=_text(env, "METRICS_BIND", defaults.metrics_bind),
        redis_cluster=_optional_flag(env, "REDIS_CLUSTER"),
        stream_partitions=_whole(
            env, "STREAM_PARTITIONS", defaults.stream_partitions, 1, maximum=MAX_PARTITIONS
        ),
        min_replicas=_whole(env, "MIN_REPLICAS", None, 0, maximum=MAX_MIN_REPLICAS),
        replica_wait_ms=_positive_int(env, "REPLICA_WAIT_MS", defaults.replica_wait_ms),
    )
    if settings.redis_cluster is not None or settings.stream_partitions > 1:
        check_taggable(settings)
    return settings


def is_set(name: str) -> bool:
    """Whether the user chose a value for `name` (environment or `.env`)."""
    load_dotenv(override=False)
    return bool(os.environ.get(name))


# `scheme://user:password@`: the password runs to the last "@". Drivers disagree on where an
# unescaped "/", "?", "#" or "@" in it ends it (SQLAlchemy, urllib), so masking up to the
# last "@" is the one rule that hides it for all of them; at worst it hides a host too.
_USERINFO_SECRET = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#]*):.*@", re.DOTALL)
# Query parameters that hold secrets, by any part of their name, in any case: password,
# passwd, pass, pwd, ssl_password, token, secret, key, api_key, auth, credentials, ...
# Masking a harmless one (ssl_keyfile) costs nothing; missing one would log a secret.
_SECRET_NAME = re.compile(r"pass|pwd|token|secret|key|auth|credential", re.IGNORECASE)


def mask_url(url: str) -> str:
    """`url` with every secret in it (password, secret query parameters) as `***`: safe to log."""
    url = _USERINFO_SECRET.sub(r"\g<head>:***@", url, count=1)
    base, sep, query = url.partition("?")
    if not sep:
        return url
    return base + sep + "&".join(_mask_parameter(p) for p in query.split("&"))


def _mask_parameter(parameter: str) -> str:
    # Split on "&" alone, as both drivers do: a "#" or ";" belongs to the value.
    name, sep, _value = parameter.partition("=")
    if sep and _SECRET_NAME.search(unquote_plus(name)):
        return f"{name}=***"
    return parameter


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


def add_transport_flags(parser: argparse.ArgumentParser, settings: Settings) -> None:
    """The flags that choose Redis and the transport, shared by emitter and subscriber."""
    parser.add_argument("--redis-url", default=settings.redis_url, help="default: REDIS_URL")
    parser.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default=settings.transport,
        help="pubsub (at most once) or stream (durable); default: TRANSPORT or %(default)s",
    )
    parser.add_argument(
        "--channel", default=settings.channel, help="pub/sub channel (default: %(default)s)"
    )
    parser.add_argument(
        "--stream", default=settings.stream, help="stream name (default: %(default)s)"
    )


def with_transport_flags(settings: Settings, args: argparse.Namespace) -> Settings:
    """`settings` with the values of the flags of `add_transport_flags`."""
    return dataclasses.replace(
        settings,
        redis_url=args.redis_url,
        transport=args.transport,
        channel=args.channel,
        stream=args.stream,
    )


def _text(env: dict[str, str], name: str, default: str) -> str:
    value = env.get(name, default)
    if not value:
        raise ConfigError(f"{name} must not be empty")
    return value


def _positive_int(env: dict[str, str], name: str, default: int) -> int:
    return _whole(env, name, default, minimum=1)


def _whole(
    env: dict[str, str], name: str, default: int | None, minimum: int, maximum: int | None = None
) -> int | None:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum or (maximum is not None and value > maximum):
        bound = "> 0" if minimum == 1 else f">= {minimum}"
        if maximum is not None:
            bound = f"from {minimum} to {maximum}"
        raise ConfigError(f"{name} must be a whole number {bound} (got {raw!r})")
    return value


def _optional_flag(env: dict[str, str], name: str) -> bool | None:
    """A 1/0 setting that may be left unset (None: decided at run time)."""
    raw = env.get(name)
    if not raw:
        return None
    if raw not in ("0", "1"):
        raise ConfigError(f"{name} must be 1, 0 or unset (got {raw!r})")
    return raw == "1"


def check_taggable(settings: Settings) -> None:
    """Hash-tagged names (txstream.keys) need a prefix, stream and channel without braces:
    a brace in them would make the hash tag another one."""
    for name, value in (
        ("KEY_PREFIX", settings.key_prefix),
        ("STREAM", settings.stream),
        ("CHANNEL", settings.channel),
    ):
        if "{" in value or "}" in value:
            raise ConfigError(
                f"{name} must not contain {{ or }} with a Redis Cluster or STREAM_PARTITIONS > 1 "
                f"(got {value!r}): the names carry hash tags"
            )


def _choice(env: dict[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = env.get(name) or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)} (got {value!r})")
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


def _read_url(raw: str) -> str:
    # The URL holds a password: the messages never repeat it, masked or not (a URL too
    # broken to parse is too broken to mask).
    example = "e.g. mysql+pymysql://user:password@replica:3306/txstream"
    try:
        backend = make_url(raw).get_backend_name() if raw else ""
    except ArgumentError:
        raise ConfigError(f"DATABASE_READ_URL is not a SQLAlchemy URL ({example})") from None
    if raw and backend not in ("mysql", "mariadb"):
        raise ConfigError(
            f"DATABASE_READ_URL must name a MariaDB replica ({example}), not {backend!r}"
        )
    return raw


def _max_lag(raw: str | None, default: float) -> float:
    if not raw:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"READ_MAX_LAG_S must be a number of seconds > 0 (got {raw!r})")
    return seconds


def _rate_limit(raw: str, name: str = "RATE_LIMIT") -> str:
    try:
        parse_many(raw)
    except ValueError:
        raise ConfigError(
            f"{name} must be a limit like 600/minute or 10/second;100/minute (got {raw!r})"
        ) from None
    return raw


def _public_url(raw: str) -> str:
    """PUBLIC_URL without its trailing slash: http(s)://host[:port][/path], nothing else."""
    url = raw.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when the port is not one
    except ValueError:  # "https://[x", "https://h:99999"
        parts = None
    if url and not (
        parts
        and parts.scheme in ("http", "https")
        and parts.hostname
        and not (parts.query or parts.fragment or parts.username)
        and re.fullmatch(r"[A-Za-z0-9._~:/%\[\]-]+", url)
    ):
        raise ConfigError(
            "PUBLIC_URL must be an address like https://txstream.bank.example "
            f"(got {mask_url(raw)!r})"
        )
    return url


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in logging.getLevelNamesMapping():
        raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR (got {raw!r})")
    return level
