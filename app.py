"""The web app: a JSON API and pages over the stored transactions and the Redis lists.

flask --app app run                  # serve on http://127.0.0.1:5000
flask --app app init-db              # create the database and tables named by DATABASE_URL
flask --app app create-token NAME    # an API token (printed once); list-tokens, revoke-token
flask --app app rebuild-windows --hours H   # change the window (subscribers stopped)
flask --app app rebuild-redis        # Redis's recent lists and counts, from the database
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import click
import redis
from flask import Flask, Response, current_app, request
from flask.cli import with_appcontext
from redis.cluster import RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterException
from sqlalchemy import Engine, inspect
from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, ServiceUnavailable
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import RequestRedirect

import config
import models
from txstream import (
    access,
    api,
    metrics,
    pages,
    queries,
    rebuild,
    rebuild_redis,
    redisconn,
    replica,
    tokens,
)
from txstream.aggregates import BadLayout, KnownLayout, Layout, LayoutMismatch, recorded_layout
from txstream.headers import SECURITY_HEADERS
from txstream.store import ensure_layout
from txstream.times import format_time, utcnow
from txstream.wrongtype import WrongType, is_wrong_type

log = logging.getLogger(__name__)


def create_app(test_config: dict | None = None, check_window: bool = True) -> Flask:
    """Build the app from the settings (`config.load()`), then `test_config` on top.

    Besides Flask's own keys, `test_config` may set ENGINE (a SQLAlchemy engine),
    DATABASE_READ_URL and READ_MAX_LAG_S (the replica that reads go to: txstream.replica),
    REDIS (a redis client), KEY_PREFIX, TRANSPORT, STREAM, GROUP, WINDOW_HOURS (a Decimal),
    CLOCK (returns the current naive-UTC datetime), AUTH, SECRET_KEY, SESSION_IDLE_TIMEOUT,
    SESSION_LIFETIME, RATE_LIMIT and
    AUTH_FAIL_LIMIT. Only the aggregates' layout is read at once (`_check_window`, unless
    `check_window` is False), and Redis is asked whether it is a cluster (`_connect_redis`);
    nothing else connects until a request needs it. KEYS holds the names of every Redis key,
    for every blueprint. Raises `config.ConfigError` when the settings cannot work.
    """
    settings = config.load()
    app = Flask(__name__)
    # Keys in the order txstream writes them: a recent list's items are byte for byte what
    # the API returns for them (txstream.transaction).
    app.json.sort_keys = False
    app.config.from_mapping(
        DATABASE_URL=settings.database_url,
        DATABASE_READ_URL=settings.database_read_url,  # txstream.replica
        READ_MAX_LAG_S=settings.read_max_lag_s,
        REDIS_URL=settings.redis_url,
        KEY_PREFIX=settings.key_prefix,
        TRANSPORT=settings.transport,  # the System page shows the stream only with "stream"
        STREAM=settings.stream,
        GROUP=settings.group,
        WINDOW_HOURS=settings.window_hours,
        CLOCK=utcnow,
        ENGINE=None,
        REDIS=None,
        KEYS=None,  # set by _connect_redis: they depend on whether Redis is a cluster
        LAYOUT=KnownLayout(),  # the aggregates' lengths, read from the database
        AUTH=settings.auth,
        SECRET_KEY=settings.secret_key or None,
        SESSION_IDLE_TIMEOUT=settings.session_idle_timeout,  # txstream.access
        SESSION_LIFETIME=settings.session_lifetime,
        RATE_LIMIT=settings.rate_limit,
        AUTH_FAIL_LIMIT=settings.auth_fail_limit,
        TRUSTED_HOSTS=list(settings.trusted_hosts) or None,
        # A longer body gets a 413 (_refuse_long_bodies)
        MAX_CONTENT_LENGTH=settings.max_content_length,
        PUBLIC_URL=settings.public_url,  # the API docs' examples name it; else no host
    )
    if test_config is None:
        # A no-op when the host (pytest, gunicorn) has configured logging already.
        logging.basicConfig(
            level=settings.log_level, format=config.LOG_FORMAT, datefmt=config.LOG_DATEFMT
        )
    else:
        app.config.update(test_config)
    if app.config["AUTH"] and not app.config["SECRET_KEY"]:
        raise config.ConfigError(
            "SECRET_KEY must be set: it signs the sign-in form's cookie (make one with "
            "`python -c 'import secrets; print(secrets.token_hex(32))'`), or set AUTH=off "
            "for a local experiment without tokens"
        )
    if app.config["ENGINE"] is None:
        app.config["ENGINE"] = models.make_engine(app.config["DATABASE_URL"], reads_only=True)
    redis_location = _connect_redis(app, settings)
    log.info(
        "web app: Redis %s, database %s, reads %s, tokens %s",
        redis_location,
        _masked_url(app.config["ENGINE"]),
        _reads_from(app),
        "required" if app.config["AUTH"] else "OFF",
    )
    if not app.config["AUTH"]:
        log.warning("AUTH=off: anyone who reaches this app reads every user's transactions")
    if check_window:
        _check_window(app)

    if settings.proxy_hops:  # behind nginx (`make serve`): the client's address, not nginx's
        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
    metrics.init_app(app)  # first: it times the requests that access.init_app refuses too
    app.before_request(_refuse_long_bodies)
    app.before_request(_relative_redirects)
    access.init_app(app)
    replica.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    app.register_error_handler(HTTPException, _http_error)
    for outage in (
        redis.ConnectionError,
        redis.TimeoutError,
        RedisClusterException,  # the cluster client's: no node answers
        ClusterDownError,  # a slot without a master, for a moment after a failover
        OperationalError,
        InterfaceError,
    ):
        app.register_error_handler(outage, _unavailable)
    app.register_error_handler(WrongType, _wrong_type)
    app.register_error_handler(redis.ResponseError, _refused)
    app.after_request(_security_headers)
    for command in (
        init_db_command,
        create_token_command,
        list_tokens_command,
        revoke_token_command,
        rebuild_windows_command,
        rebuild_redis_command,
    ):
        app.cli.add_command(command)
    return app


def _connect_redis(app: Flask, settings: config.Settings) -> str:
    """Connect to Redis (unless test_config gave a client) and set KEYS; where Redis is.

    Whether Redis is a cluster decides the client and the keys' names: REDIS_CLUSTER, or
    else the server is asked. The app must start while Redis is down (it answers 503
    until Redis is back): then it goes by REDIS_CLUSTER, or takes Redis for one server.
    """
    web = dataclasses.replace(
        settings,
        redis_url=app.config["REDIS_URL"],
        key_prefix=app.config["KEY_PREFIX"],
        stream=app.config["STREAM"],
    )
    given = app.config["REDIS"]
    if given is not None:
        if web.redis_cluster is None:
            web = dataclasses.replace(web, redis_cluster=isinstance(given, RedisCluster))
        location = "the client given in test_config"
    else:
        web = _resolved(web)
        app.config["REDIS"] = _client(web)
        location = config.mask_url(web.redis_url)
    if web.keys.tagged:
        config.check_taggable(web)
    app.config["KEYS"] = web.keys
    kind = "a cluster" if web.redis_cluster else "one server"
    return f"{location} ({kind}, STREAM_PARTITIONS={web.stream_partitions})"


def _resolved(settings: config.Settings) -> config.Settings:
    """`settings` with `redis_cluster` decided (txstream.redisconn.resolve): one server
    when Redis cannot be asked now and REDIS_CLUSTER does not say."""
    try:
        return redisconn.resolve(settings)
    except redisconn.ERRORS as exc:
        log.warning(
            "web app: cannot ask Redis at %s whether it is a cluster (%s); taking it for one "
            "server. Set REDIS_CLUSTER=1 if it is a Redis Cluster (REDIS_CLUSTER=0 if not), "
            "so that the web app need not ask",
            config.mask_url(settings.redis_url),
            exc,
        )
        return dataclasses.replace(settings, redis_cluster=False)


def _client(settings: config.Settings) -> redisconn.AnyRedis | redisconn.Deferred:
    """The app's Redis client; a cluster's made at its first use (redisconn.Deferred)."""
    options = {"socket_connect_timeout": 2, "socket_timeout": 5}
    if settings.redis_cluster:
        return redisconn.Deferred(lambda: redisconn.connect(settings, **options))
    return redisconn.connect(settings, **options)


def _check_window(app: Flask) -> None:
    """Raise `config.ConfigError` if the database records another window than WINDOW_HOURS.

    The app must start while the database is down: then it only logs. (Its sums use the
    recorded layout whatever WINDOW_HOURS says; refusing here keeps the configuration honest:
    WINDOW_HOURS is the default `hours` of a sum, and what an operator reads.)
    """
    wanted = _layout(app.config["WINDOW_HOURS"])
    try:
        with app.config["ENGINE"].connect() as conn:
            recorded = recorded_layout(conn)
    except (OperationalError, InterfaceError, ProgrammingError, BadLayout) as exc:
        log.warning("web app: cannot read the aggregates' layout now, starting anyway: %s", exc)
        return
    if recorded is not None and recorded != wanted:
        raise config.ConfigError(str(LayoutMismatch.between(recorded, wanted)))


def _reads_from(app: Flask) -> str:
    url = app.config["DATABASE_READ_URL"]
    if not url:
        return "from the database"
    lag = app.config["READ_MAX_LAG_S"]
    return f"from the replica {config.mask_url(url)} while at most {lag:g} s behind"


def _layout(window_hours) -> Layout:
    return Layout.for_window(int(window_hours * 3600))


def _refuse_long_bodies() -> None:
    """A body longer than MAX_CONTENT_LENGTH: 413, whatever the route. A declared one is
    refused unread (Werkzeug alone would refuse it only when a route reads the body). A
    chunked one is read here, at most a byte past the limit, and handed on as a body of
    known length: Werkzeug alone would cut it at the limit and parse what it had read."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    environ = request.environ
    if (request.content_length or 0) > limit:
        raise RequestEntityTooLarge(f"a request body may be {limit} bytes at most")
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower() and environ.get(
        "wsgi.input_terminated"  # the server dechunks it (gunicorn); else Werkzeug reads none
    ):
        body = _read_at_most(environ["wsgi.input"], limit + 1)
        if len(body) > limit:
            raise RequestEntityTooLarge(f"a request body may be {limit} bytes at most")
        del environ["HTTP_TRANSFER_ENCODING"]
        environ.update({"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))})


def _read_at_most(stream, size: int) -> bytes:
    """Up to `size` bytes of `stream`: fewer only at its end."""
    parts, left = [], size
    while left > 0 and (part := stream.read(left)):
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _relative_redirects() -> None:
    """Werkzeug's own redirects (`/users//1` to `/users/1`) name the request's Host: they
    name none here, so that no Host header can send a browser (or a cache) elsewhere."""
    exc = request.routing_exception
    if isinstance(exc, RequestRedirect):
        target = urlsplit(exc.new_url)
        exc.new_url = urlunsplit(("", "", "/" + target.path.lstrip("/"), target.query, ""))


def _http_error(exc: HTTPException):
    # Unknown paths never reach a blueprint, so the path decides: JSON under /api.
    if api.owns(request.path):
        return api.http_error(exc)
    return pages.http_error(exc)


def _unavailable(exc: Exception):
    """Redis or the database is down: 503, never 500; what failed is logged."""
    log.error("%s %s: a dependency is unavailable: %s", request.method, request.path, exc)
    return _503("a database or Redis is unavailable; try again shortly")


def _wrong_type(exc: WrongType):
    """A Redis key that the answer needs holds another type (txstream.wrongtype): 503
    naming the key, never 500."""
    log.error("%s %s: %s", request.method, request.path, exc)
    return _503(f"Redis refused a read: {exc}")


def _refused(exc: redis.ResponseError):
    """Redis refused a command: a WRONGTYPE that no reader expected is a 503 all the same
    (a key holds another type: `_wrong_type`); anything else is a bug, a 500."""
    if not is_wrong_type(exc):
        raise exc
    log.error("%s %s: Redis refused a read: %s", request.method, request.path, exc)
    return _503("Redis refused a read: a key holds another type than txstream writes there")


def _503(message: str):
    response = _http_error(ServiceUnavailable(message))
    response.headers["Retry-After"] = "5"
    return response


def _security_headers(response: Response) -> Response:
    """What every response says to browsers (txstream.headers); the API's are not cached."""
    headers = response.headers
    for name, value in SECURITY_HEADERS.items():
        headers.setdefault(name, value)
    if api.owns(request.path):
        headers["Cache-Control"] = "no-store"
    return response


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the database and the tables named by DATABASE_URL, if missing."""
    engine = current_app.config["ENGINE"]
    where = _masked_url(engine)
    before = _table_names(engine)
    layout = _layout(current_app.config["WINDOW_HOURS"])
    try:
        with _writer() as writer:
            models.create_schema(writer)
            ensure_layout(writer, layout)
    except OperationalError as exc:
        raise click.ClickException(f"cannot create the schema in {where}: {exc.orig}") from None
    except LayoutMismatch as exc:
        raise click.ClickException(str(exc)) from None
    created = sorted((_table_names(engine) - before) & set(models.Base.metadata.tables))
    if created:
        click.echo(f"Created tables {', '.join(created)} in {where}")
    else:
        click.echo(f"All tables exist already in {where}; nothing to create")
    click.echo(f"Aggregates: {layout.describe()}")


@click.command("create-token")
@click.argument("name")
@with_appcontext
def create_token_command(name: str) -> None:
    """Make an API token called NAME and print it, once (its last line)."""
    with _writer() as engine:
        try:
            models.create_schema(engine)
            token = tokens.create(engine, name)
        except tokens.TokenError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"Created token {name!r}. It is shown only now; keep it like a password:")
    click.echo(token)


@click.command("list-tokens")
@with_appcontext
def list_tokens_command() -> None:
    """List the tokens: name, created, last used (never the tokens themselves)."""
    for info in tokens.listed(current_app.config["ENGINE"]):
        used = format_time(info.last_used_at) if info.last_used_at else "never"
        click.echo(f"{info.name}\tcreated {format_time(info.created_at)}\tlast used {used}")


@click.command("revoke-token")
@click.argument("name")
@with_appcontext
def revoke_token_command(name: str) -> None:
    """Revoke the token called NAME: it fails from its next request on, in every web worker.

    The database forgets it first; then Redis tells the web workers to drop the tokens they
    have cached. If Redis cannot be told, the command fails, saying so: run it again once
    Redis answers (it tells Redis even when the token is gone already).
    """
    with _writer() as engine:
        revoked = tokens.revoke(engine, name)
    try:
        tokens.announce_revocation(current_app.config["REDIS"], current_app.config["KEYS"])
    except redisconn.ERRORS as exc:
        done = f"Revoked token {name!r} in the database" if revoked else f"No token {name!r}"
        raise click.ClickException(
            f"{done}, but Redis could not be told ({exc}). Web workers running now may keep "
            "accepting the token from their caches until Redis answers again and this "
            "command is run again (or they restart): run it again as soon as Redis is back."
        ) from None
    if not revoked:
        raise click.ClickException(f"there is no token called {name!r}")
    click.echo(f"Revoked token {name!r}")


@click.command("rebuild-windows")
@click.option(
    "--hours",
    metavar="H",
    help="the new window length in hours, as WINDOW_HOURS takes it (default: WINDOW_HOURS)",
)
@with_appcontext
def rebuild_windows_command(hours: str | None) -> None:
    """Rebuild the window and bucket totals for windows of H hours, from the stored rows.

    Stop every subscriber first: the command refuses to run while one's heartbeat is live.
    The web app keeps serving from the old totals meanwhile; the new ones are swapped in at
    once. Then start the subscribers with WINDOW_HOURS=H (and the web app too).
    """
    try:
        window_hours = config.load({"WINDOW_HOURS": hours}).window_hours if hours else None
    except config.ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--hours") from None
    layout = _layout(window_hours or current_app.config["WINDOW_HOURS"])
    try:
        rebuild.refuse_if_subscribers_run(current_app.config["REDIS"], current_app.config["KEYS"])
        with _writer() as engine:
            with engine.connect() as conn:
                mark = rebuild.rows_mark(conn)
            click.echo(f"Rebuilding the aggregates of {mark.count} rows: {layout.describe()}")
            with click.progressbar(length=mark.count, label="rows", show_pos=True) as bar:
                swap_seconds = rebuild.rebuild(engine, layout, mark, bar.update)
    except rebuild.RebuildRefused as exc:
        raise click.ClickException(str(exc)) from None
    except (OperationalError, ProgrammingError) as exc:  # ProgrammingError: no table (init-db)
        raise click.ClickException(f"the database failed: {exc.orig}") from None
    click.echo(
        f"Done: {mark.count} of {mark.count} rows; aggregates of {layout.describe()}, "
        f"swapped in at once ({swap_seconds:.3f} s)"
    )
    hours_set = f"{layout.window_seconds / 3600:g}"
    click.echo(f"Start the subscribers and web apps with WINDOW_HOURS={hours_set}")


@click.command("rebuild-redis")
@with_appcontext
def rebuild_redis_command() -> None:
    """Rebuild Redis's recent lists and stored count from the database, now.

    The subscribers do it by themselves within seconds of Redis losing its data; run this
    after restoring Redis from an old snapshot. The web app reads the latest transactions
    from the database meanwhile. Redis must let it write the lists: use the subscriber's
    Redis user (or an admin) in REDIS_URL.
    """
    engine, keys = current_app.config["ENGINE"], current_app.config["KEYS"]
    owner = f"rebuild-redis-{socket.gethostname()}-{os.getpid()}"
    rebuild = rebuild_redis.RedisRebuild(engine, current_app.config["REDIS"], keys, owner)
    try:
        users = queries.read(engine, rebuild_redis.count_users)
        click.echo(f"Rebuilding the recent lists of {users} users and the stored count")
        with click.progressbar(length=users, label="users", show_pos=True) as bar:
            done = rebuild.rebuild(force=True, done=bar.update)
    except rebuild_redis.LostLock as exc:
        raise click.ClickException(f"Redis lost the rebuild's lock ({exc}): run it again") from None
    except (OperationalError, ProgrammingError) as exc:  # ProgrammingError: no table (init-db)
        raise click.ClickException(f"the database failed: {exc.orig}") from None
    except redisconn.ERRORS as exc:
        raise click.ClickException(f"Redis failed: {exc}") from None
    if done.partitions:
        click.echo(
            f"Done: the recent lists of {done.users} users, {done.rows} rows counted "
            f"(partitions {', '.join(map(str, done.partitions))})"
        )
    if done.held:
        held = ", ".join(f"{p} by {name}" for p, name in sorted(done.held.items()))
        raise click.ClickException(
            f"partitions being rebuilt by another now, left to it: {held}. Their markers "
            "tell when they are done (see README, What Redis holds)"
        )


@contextlib.contextmanager
def _writer() -> Iterator[Engine]:
    """An engine that writes, for the commands (the app's own only reads)."""
    engine = models.make_engine(current_app.config["ENGINE"].url.render_as_string(False))
    try:
        yield engine
    finally:
        engine.dispose()


def _table_names(engine: Engine) -> set[str]:
    try:
        return set(inspect(engine).get_table_names())
    except OperationalError:
        # The MySQL database does not exist yet; create_schema will create it, or say
        # why it cannot.
        return set()


def _masked_url(engine: Engine) -> str:
    """The engine's URL with every secret in it masked (query parameters too)."""
    return config.mask_url(engine.url.render_as_string(hide_password=False))


def running_a_command(argv: list[str]) -> bool:
    """Whether `argv` runs a `flask` command other than `run` (init-db, rebuild-windows):
    those work whatever WINDOW_HOURS says, since changing it is one of their jobs."""
    program = Path(argv[0])
    is_flask = program.name == "flask" or program.parts[-2:] == ("flask", "__main__.py")
    return is_flask and "run" not in argv[1:]


try:
    app = create_app(check_window=not running_a_command(sys.argv))
except config.ConfigError as exc:
    sys.exit(f"app: {exc}")
