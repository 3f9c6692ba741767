"""Settings: defaults, overrides, clear errors, and URLs safe to log."""

from __future__ import annotations

from decimal import Decimal

import pytest

import config


def test_defaults():
    settings = config.load({})
    assert settings == config.Settings(
        redis_url="redis://127.0.0.1:6379/0",
        database_url="mysql+pymysql://root@127.0.0.1:3306/txstream",
        channel="transactions",
        key_prefix="txstream:",
        window_hours=Decimal(6),
        batch_size=2000,
        batch_interval_ms=100,
        log_level="INFO",
    )
    assert settings.window_seconds == 6 * 3600


def test_empty_values_mean_the_defaults():
    env = {"REDIS_URL": "", "DATABASE_URL": "", "WINDOW_HOURS": "", "BATCH_SIZE": "",
           "BATCH_INTERVAL_MS": "", "LOG_LEVEL": ""}  # fmt: skip
    assert config.load(env) == config.load({})


def test_overrides():
    settings = config.load(
        {
            "REDIS_URL": "redis://:pw@cache:6380/2",
            "DATABASE_URL": "sqlite:///demo.sqlite3",
            "CHANNEL": "tx2",
            "KEY_PREFIX": "demo:",
            "WINDOW_HOURS": "1.5",
            "BATCH_SIZE": "50",
            "BATCH_INTERVAL_MS": "20",
            "LOG_LEVEL": "debug",
        }
    )
    assert settings == config.Settings(
        redis_url="redis://:pw@cache:6380/2",
        database_url="sqlite:///demo.sqlite3",
        channel="tx2",
        key_prefix="demo:",
        window_hours=Decimal("1.5"),
        batch_size=50,
        batch_interval_ms=20,
        log_level="DEBUG",
    )
    assert settings.window_seconds == 5400


@pytest.mark.parametrize(("raw", "seconds"), [("", 86400), ("0", 0), ("31622400", 31622400)])
def test_max_clock_skew_in_seconds(raw, seconds):
    assert config.load({"MAX_CLOCK_SKEW": raw}).max_clock_skew == seconds


def test_metrics_port_and_bind():
    assert (config.load({}).metrics_port, config.load({}).metrics_bind) == (9108, "127.0.0.1")
    settings = config.load({"METRICS_PORT": "0", "METRICS_BIND": "0.0.0.0"})  # nosec B104
    assert (settings.metrics_port, settings.metrics_bind) == (0, "0.0.0.0")  # nosec B104


def test_max_content_length_in_bytes_and_public_url():
    settings = config.load({})
    assert (settings.max_content_length, settings.public_url) == (65536, "")
    settings = config.load(
        {"MAX_CONTENT_LENGTH": "1024", "PUBLIC_URL": "https://txstream.bank.example:8443/tx/"}
    )
    assert settings.max_content_length == 1024
    assert settings.public_url == "https://txstream.bank.example:8443/tx"


def test_proxy_hops():
    assert config.load({}).proxy_hops == 0
    assert config.load({"PROXY_HOPS": "2"}).proxy_hops == 2


def test_dead_letters_max():
    assert config.load({}).dead_letters_max == 100_000
    assert config.load({"DEAD_LETTERS_MAX": "10"}).dead_letters_max == 10


def test_session_timeouts_in_seconds():
    defaults = config.load({})
    assert (defaults.session_idle_timeout, defaults.session_lifetime) == (1800, 43200)
    chosen = config.load({"SESSION_IDLE_TIMEOUT": "60", "SESSION_LIFETIME": "600"})
    assert (chosen.session_idle_timeout, chosen.session_lifetime) == (60, 600)
    with pytest.raises(config.ConfigError, match="SESSION_LIFETIME must be a whole number > 0"):
        config.load({"SESSION_LIFETIME": "0"})


@pytest.mark.parametrize(
    ("hours", "seconds"),
    [("1", 3600), ("0.25", 900), ("0.01", 36), ("24", 86400), ("8760", 31536000), ("6.0", 21600)],
)
def test_window_hours_in_whole_seconds(hours, seconds):
    assert config.load({"WINDOW_HOURS": hours}).window_seconds == seconds


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BATCH_SIZE", "0", "BATCH_SIZE must be a whole number > 0 (got '0')"),
        ("BATCH_SIZE", "-5", "BATCH_SIZE must be a whole number > 0 (got '-5')"),
        ("BATCH_SIZE", "1.5", "BATCH_SIZE must be a whole number > 0 (got '1.5')"),
        ("BATCH_SIZE", "ten", "BATCH_SIZE must be a whole number > 0 (got 'ten')"),
        ("BATCH_INTERVAL_MS", "0", "BATCH_INTERVAL_MS must be a whole number > 0 (got '0')"),
        ("BATCH_INTERVAL_MS", "-1", "BATCH_INTERVAL_MS must be a whole number > 0 (got '-1')"),
        ("BATCH_INTERVAL_MS", "1e3", "BATCH_INTERVAL_MS must be a whole number > 0 (got '1e3')"),
        ("WINDOW_HOURS", "0", "WINDOW_HOURS must be a number of hours > 0"),
        ("WINDOW_HOURS", "-6", "WINDOW_HOURS must be a number of hours > 0"),
        ("WINDOW_HOURS", "nan", "WINDOW_HOURS must be a number of hours > 0"),
        ("WINDOW_HOURS", "NaN", "WINDOW_HOURS must be a number of hours > 0"),
        ("WINDOW_HOURS", "inf", "WINDOW_HOURS must be a number of hours > 0"),
        ("WINDOW_HOURS", "8760.0001", "at most 8760"),
        ("WINDOW_HOURS", "8761", "at most 8760"),
        ("WINDOW_HOURS", "0.0001", "in whole seconds"),
        ("WINDOW_HOURS", "1.00001", "in whole seconds"),
        ("WINDOW_HOURS", "six", "(got 'six')"),
        ("LOG_LEVEL", "verbose", "LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR (got 'verbose')"),
        ("CHANNEL", "", "CHANNEL must not be empty"),
        ("MAX_CLOCK_SKEW", "-1", "MAX_CLOCK_SKEW must be a whole number from 0 to 31622400"),
        ("MAX_CLOCK_SKEW", "31622401", "from 0 to 31622400 (got '31622401')"),
        ("MAX_CLOCK_SKEW", "1d", "from 0 to 31622400 (got '1d')"),
        ("DEAD_LETTERS_MAX", "0", "DEAD_LETTERS_MAX must be a whole number > 0 (got '0')"),
        ("METRICS_PORT", "-1", "METRICS_PORT must be a whole number from 0 to 65535"),
        ("METRICS_PORT", "65536", "METRICS_PORT must be a whole number from 0 to 65535"),
        ("METRICS_PORT", "http", "METRICS_PORT must be a whole number from 0 to 65535"),
        ("METRICS_BIND", "", "METRICS_BIND must not be empty"),
        ("READ_MAX_LAG_S", "0", "READ_MAX_LAG_S must be a number of seconds > 0 (got '0')"),
        ("READ_MAX_LAG_S", "-5", "READ_MAX_LAG_S must be a number of seconds > 0 (got '-5')"),
        ("READ_MAX_LAG_S", "nan", "READ_MAX_LAG_S must be a number of seconds > 0"),
        ("READ_MAX_LAG_S", "inf", "READ_MAX_LAG_S must be a number of seconds > 0"),
        ("READ_MAX_LAG_S", "1e999", "READ_MAX_LAG_S must be a number of seconds > 0"),
        ("READ_MAX_LAG_S", "5s", "READ_MAX_LAG_S must be a number of seconds > 0 (got '5s')"),
        ("MAX_CONTENT_LENGTH", "0", "MAX_CONTENT_LENGTH must be a whole number > 0 (got '0')"),
        ("PROXY_HOPS", "-1", "PROXY_HOPS must be a whole number from 0 to 10"),
        ("MAX_CONTENT_LENGTH", "64KiB", "MAX_CONTENT_LENGTH must be a whole number > 0"),
        ("PUBLIC_URL", "txstream.bank.example", "PUBLIC_URL must be an address like https://"),
        ("PUBLIC_URL", "ftp://txstream.bank.example", "PUBLIC_URL must be an address"),
        ("PUBLIC_URL", "https://a.example/?x=1", "PUBLIC_URL must be an address"),
        ("PUBLIC_URL", "https://u:pw@a.example", "PUBLIC_URL must be an address"),
        ("PUBLIC_URL", 'https://a.example/"$(id)', "PUBLIC_URL must be an address"),
        ("PUBLIC_URL", "https://[a.example", "PUBLIC_URL must be an address"),
        ("PUBLIC_URL", "https://a.example:99999", "PUBLIC_URL must be an address"),
        ("DATABASE_READ_URL", "sqlite:///replica.sqlite3", "must name a MariaDB replica"),
        ("DATABASE_READ_URL", "postgresql://u:pw@h/db", "must name a MariaDB replica"),
        ("DATABASE_READ_URL", "replica:3306", "DATABASE_READ_URL is not a SQLAlchemy URL"),
    ],
)
def test_bad_values_are_named_in_the_error(name, value, message):
    with pytest.raises(config.ConfigError) as excinfo:
        config.load({name: value})
    assert message in str(excinfo.value)


def test_reads_go_to_the_database_unless_a_replica_is_named():
    settings = config.load({})
    assert (settings.database_read_url, settings.read_max_lag_s) == ("", 5.0)
    url = "mariadb+pymysql://reader:pw@replica:3306/txstream"
    settings = config.load({"DATABASE_READ_URL": url, "READ_MAX_LAG_S": "0.5"})
    assert (settings.database_read_url, settings.read_max_lag_s) == (url, 0.5)
    assert config.load({"DATABASE_READ_URL": "", "READ_MAX_LAG_S": ""}) == config.load({})


@pytest.mark.parametrize(
    "url", ["sqlite:///r.sqlite3?password=s3cr3t", "postgresql://u:s3cr3t@h/db", "u:s3cr3t@h"]
)
def test_a_bad_replica_url_is_never_repeated_in_the_error(url):
    with pytest.raises(config.ConfigError, match="DATABASE_READ_URL") as excinfo:
        config.load({"DATABASE_READ_URL": url})
    assert "s3cr3t" not in str(excinfo.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("mysql+pymysql://u:secret@h/db", "mysql+pymysql://u:***@h/db"),
        ("mysql+pymysql://root:s3cr3t@127.0.0.1:3306/txstream?charset=utf8mb4",
         "mysql+pymysql://root:***@127.0.0.1:3306/txstream?charset=utf8mb4"),
        ("mysql+pymysql://u:p@ss@h/db", "mysql+pymysql://u:***@h/db"),
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("redis://default:pw@cache/0", "redis://default:***@cache/0"),
    ],
)  # fmt: skip
def test_mask_url_hides_the_password(url, masked):
    assert config.mask_url(url) == masked


@pytest.mark.parametrize(
    "url",
    [
        "mysql+pymysql://root@127.0.0.1:3306/txstream",
        "redis://127.0.0.1:6379/0",
        "redis://cache",
        "sqlite:///demo.sqlite3",
        "sqlite://",
        "sqlite:///var/a:b@c.sqlite3",
        "redis://[::1]:6379/0",
        "mysql+pymysql://root@h/txstream?charset=utf8mb4&ssl_ca=/etc/ca.pem",
        "rediss://cache/0?ssl_cert_reqs=required&ssl_ca_certs=%2Fetc%2Fca.pem&db=2",
        "redis://cache/0?client_name=sub&socket_timeout=5",
    ],
)
def test_mask_url_leaves_urls_without_password(url):
    assert config.mask_url(url) == url


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        # As query parameters: redis-py and SQLAlchemy (PyMySQL) both take them
        ("redis://cache:6379/0?password=s3cr3t", "redis://cache:6379/0?password=***"),
        ("mysql+pymysql://root@h/db?charset=utf8mb4&password=s3cr3t",
         "mysql+pymysql://root@h/db?charset=utf8mb4&password=***"),
        ("mysql+pymysql://root@h/db?passwd=s3cr3t", "mysql+pymysql://root@h/db?passwd=***"),
        ("redis://cache/0?PassWord=s3cr3t&db=1", "redis://cache/0?PassWord=***&db=1"),
        ("redis://cache/0?pass=a&pwd=b", "redis://cache/0?pass=***&pwd=***"),
        ("redis://cache/0?token=a&secret=b&key=c", "redis://cache/0?token=***&secret=***&key=***"),
        ("rediss://cache/0?ssl_password=a&ssl_keyfile=/k.pem",
         "rediss://cache/0?ssl_password=***&ssl_keyfile=***"),
        ("redis://cache/0?api_key=a&access_token=b&client_secret=c&auth=d&credentials=e",
         "redis://cache/0?api_key=***&access_token=***&client_secret=***&auth=***&credentials=***"),
        ("redis://cache/0?p%61ssword=s3cr3t", "redis://cache/0?p%61ssword=***"),  # escaped name
        ("redis://cache/0?password=", "redis://cache/0?password=***"),
        # "#" and ";" do not end a value: SQLAlchemy keeps them in it
        ("redis://cache/0?password=ab#cd;ef&db=1", "redis://cache/0?password=***&db=1"),
        # Both places at once
        ("rediss://u:pw@cache/0?ssl_cert_reqs=required&password=s3cr3t",
         "rediss://u:***@cache/0?ssl_cert_reqs=required&password=***"),
        # Unescaped "/", "?", "#" or "@" in the password: SQLAlchemy reads them as its part
        ("mysql+pymysql://u:pa/ss@h/db", "mysql+pymysql://u:***@h/db"),
        ("mysql+pymysql://u:pa?ss@h/db", "mysql+pymysql://u:***@h/db"),
        ("mysql+pymysql://u:p#a@ss@h/db?charset=utf8mb4",
         "mysql+pymysql://u:***@h/db?charset=utf8mb4"),
        # A user name with "@" in it (Azure: user@server)
        ("mysql+pymysql://me@server:s3cr3t@h/db", "mysql+pymysql://me@server:***@h/db"),
        ("redis://u:p%40ss@cache/0", "redis://u:***@cache/0"),
    ],
)  # fmt: skip
def test_mask_url_hides_every_secret(url, masked):
    assert config.mask_url(url) == masked
