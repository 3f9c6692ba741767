"""The web app: a JSON API and pages over the stored transactions and the Redis lists.

flask --app app run       # serve on http://127.0.0.1:5000
flask --app app init-db   # create the database and tables named by DATABASE_URL
"""

from __future__ import annotations

import logging

import click
import redis
from flask import Flask, current_app, request
from flask.cli import with_appcontext
from sqlalchemy import Engine, inspect
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

import config
import models
from txstream import api, pages
from txstream.times import utcnow

log = logging.getLogger(__name__)


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app from the settings (`config.load()`), then `test_config` on top.

    Besides Flask's own keys, `test_config` may set ENGINE (a SQLAlchemy engine),
    REDIS (a redis client), KEY_PREFIX, WINDOW_HOURS (a Decimal) and CLOCK (returns
    the current naive-UTC datetime). Nothing connects until a request needs it.
    """
    settings = config.load()
    app = Flask(__name__)
    # Keys in the order txstream writes them: a recent list's items are byte for byte what
    # the API returns for them (txstream.transaction).
    app.json.sort_keys = False
    app.config.from_mapping(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        KEY_PREFIX=settings.key_prefix,
        WINDOW_HOURS=settings.window_hours,
        CLOCK=utcnow,
        ENGINE=None,
        REDIS=None,
    )
    if test_config is None:
        # A no-op when the host (pytest, gunicorn) has configured logging already.
        logging.basicConfig(
            level=settings.log_level, format=config.LOG_FORMAT, datefmt=config.LOG_DATEFMT
        )
    else:
        app.config.update(test_config)
    if app.config["ENGINE"] is None:
        app.config["ENGINE"] = models.make_engine(app.config["DATABASE_URL"], reads_only=True)
    if app.config["REDIS"] is None:
        app.config["REDIS"] = redis.Redis.from_url(
            app.config["REDIS_URL"], socket_connect_timeout=2, socket_timeout=5
        )
        redis_location = config.mask_url(app.config["REDIS_URL"])
    else:
        redis_location = "the client given in test_config"
    log.info(
        "web app: Redis %s, database %s",
        redis_location,
        config.mask_url(app.config["ENGINE"].url.render_as_string(hide_password=False)),
    )

    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    app.register_error_handler(HTTPException, _http_error)
    app.cli.add_command(init_db_command)
    return app


def _http_error(exc: HTTPException):
    # Unknown paths never reach a blueprint, so the path decides: JSON under /api.
    if api.owns(request.path):
        return api.http_error(exc)
    return pages.http_error(exc)


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the database and the tables named by DATABASE_URL, if missing."""
    engine = current_app.config["ENGINE"]
    where = _masked_url(engine)
    before = _table_names(engine)
    try:
        models.create_schema(engine)
    except OperationalError as exc:
        raise click.ClickException(f"cannot create the schema in {where}: {exc.orig}") from None
    created = sorted((_table_names(engine) - before) & set(models.Base.metadata.tables))
    if created:
        click.echo(f"Created tables {', '.join(created)} in {where}")
    else:
        click.echo(f"All tables exist already in {where}; nothing to create")


def _table_names(engine: Engine) -> set[str]:
    try:
        return set(inspect(engine).get_table_names())
    except OperationalError:
        # The MySQL database does not exist yet; create_schema will create it, or say
        # why it cannot.
        return set()


def _masked_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


app = create_app()
