"""confhook: create provider conferences, receive and store their callback events."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from flask import Flask

from app import (
    admin,
    api,
    capacity,
    catapult,
    cli,
    db,
    delivery,
    errors,
    health,
    logs,
    proxies,
)
from app.payload import require_utf8_query_string
from config import settings


def create_app(environ: Mapping[str, str] | None = None) -> Flask:
    """Build the app from ``environ`` (``os.environ`` by default); does no I/O."""
    app = Flask(__name__)
    app.config.update(settings.load(environ))
    app.config["MAX_CONTENT_LENGTH"] = app.config["CONFHOOK_MAX_BODY_BYTES"]
    app.json.sort_keys = False  # type: ignore[attr-defined]
    register_extensions(app)
    register_blueprints(app)
    register_errorhandlers(app)
    register_commands(app)
    # Outermost WSGI layer: every part of the app sees the client's address alike.
    app.wsgi_app = proxies.TrustedProxies(  # type: ignore[method-assign]
        app.wsgi_app, app.config["CONFHOOK_FORWARDED_ALLOW_IPS"])
    return app


def register_extensions(app: Flask) -> None:
    db.init_app(app)
    catapult.init_app(app)
    logging.getLogger("app").setLevel(logging.INFO)


def register_blueprints(app: Flask) -> None:
    logs.init_app(app)
    capacity.init_app(app)  # before the blueprints' own hooks: a full worker answers at once
    app.before_request(require_utf8_query_string)
    health.init_app(app)
    delivery.init_app(app)  # a WSGI layer beneath Flask: the door for /callbacks/
    api.init_app(app)  # after delivery: its document describes the callback endpoint too
    admin.init_app(app)  # last: it exempts the other blueprints from CSRF checks


def register_errorhandlers(app: Flask) -> None:
    errors.register_errorhandlers(app)


def register_commands(app: Flask) -> None:
    cli.init_app(app)
