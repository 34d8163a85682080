"""Receiving the provider's deliveries: one path from a request to a stored event.

- ``entrance``: the WSGI door every request under ``/callbacks/`` comes in by;
- ``intake``: the one function every delivery goes through (verify, read, store, answer);
- ``interpret``: a delivery's fields as one normalised event, flagged where not understood;
- ``filing``: the event's row, its conference, the views it updates, filing again later;
- ``sqlite`` / ``postgres``: committing deliveries on each database, behind one interface;
- ``rejections``: counting what was refused.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app
from sqlalchemy.engine import make_url
from werkzeug.routing import Map, Rule

from app import db
from app.delivery.entrance import Entrance
from app.delivery.intake import ROUTE, Intake, Store
from app.delivery.postgres import PostgresStore
from app.delivery.rejections import RejectionCounter
from app.delivery.sqlite import SQLiteStore
from app.keys import CHANNELS

EXTENSION = "confhook.intake"


def intake(app: Flask | None = None) -> Intake:
    return (app or current_app).extensions[EXTENSION]  # type: ignore[no-any-return]


def make_store(app: Flask) -> Store:
    """SQLite: the process's writer thread; PostgreSQL: a pool of delivery connections."""
    config = app.config
    wait_s = config["CONFHOOK_DELIVERY_WAIT_MS"] / 1000
    url = make_url(config["DATABASE_URL"])
    if url.get_backend_name() == "sqlite":
        path = url.database if url.database not in (None, "", ":memory:") else None
        return SQLiteStore(db.database(app).engine, f"{path}-writer.lock" if path else None,
                           wait_s)
    engine = db.make_engine(config["DATABASE_URL"],
                            lock_timeout_ms=config["CONFHOOK_DELIVERY_WAIT_MS"],
                            pool_pre_ping=False, pool_use_lifo=True, pool_timeout=wait_s,
                            # A delivery is one statement, its own transaction.
                            isolation_level="AUTOCOMMIT")
    return PostgresStore(engine, db.database(app).engine, wait_s)


def init_app(app: Flask) -> None:
    app.extensions[EXTENSION] = Intake(
        secrets=[app.config["CONFHOOK_SECRET_KEY"], *app.config["CONFHOOK_OLD_SECRET_KEYS"]],
        max_bytes=app.config["CONFHOOK_MAX_BODY_BYTES"], store=make_store(app),
        rejections=RejectionCounter(app.config["CONFHOOK_REJECTION_FLUSH_MS"] / 1000),
        new_session=db.database(app).writer)
    # Beneath Flask: the door for every request under /callbacks/.
    app.wsgi_app = Entrance(intake(app), app.wsgi_app)  # type: ignore[method-assign]


_ANSWERS = {
    "400": "Not a delivery at all: a body that is not UTF-8 text or holds a NUL byte, a "
           "query string of raw bytes that are not UTF-8.",
    "401": "The URL's key does not verify: nothing stored.",
    "404": "No such callback channel.",
    "405": "Neither GET nor POST.",
    "408": "The request did not arrive whole within CONFHOOK_REQUEST_READ_TIMEOUT.",
    "413": "A body over CONFHOOK_MAX_BODY_BYTES.",
    "414": "A query string over CONFHOOK_MAX_BODY_BYTES.",
    "415": "A body that is neither JSON nor form-encoded.",
    "503": "The event could not be stored now (the database is unavailable or busy, or "
           "storing failed): retry later (Retry-After). Never a 4xx for our own failure.",
}


def document(spec: Any, app: Flask) -> None:
    """Describe the provider-facing endpoint in the API's OpenAPI document."""
    rule = Rule(ROUTE, endpoint="callbacks.deliver", defaults={})
    Map([rule])  # binds it: its parameters are read from it
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    responses: dict[str, Any] = {
        "204": {"description": "Stored (matched, unmatched, conflicting, or invalid: kept as "
                               "received, with the field not understood named), or "
                               "recognised as a duplicate of a stored event.",
                "headers": {"X-Confhook-Event": {
                    "description": "`<event id>; stored|duplicate|invalid; <match>`",
                    "schema": {"type": "string"}}}},
        **{status: {"description": text, **error} for status, text in _ANSWERS.items()},
    }
    parameters = [
        {"name": "channel", "in": "path", "required": True,
         "schema": {"type": "string", "enum": list(CHANNELS)}},
        {"name": "subject", "in": "path", "required": True,
         "description": "The conference's id, or `shared`.", "schema": {"type": "string"}},
        {"name": "key", "in": "path", "required": True,
         "description": "The key issued for the subject: the URL is the credential.",
         "schema": {"type": "string"}},
    ]
    common = {"tags": ["callbacks"], "security": [], "responses": responses}
    spec.path(rule=rule, parameters=parameters, operations={
        "get": {**common, "summary": "A callback event from the provider, as a query string",
                "parameters": [{"name": "event", "in": "query", "style": "form",
                                "explode": True, "schema": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"}}}]},
        "post": {**common, "summary": "A callback event from the provider, as JSON",
                 "requestBody": {"required": True, "content": {
                     "application/json": {"schema": {"type": "object"}},
                     "application/x-www-form-urlencoded": {"schema": {
                         "type": "object", "additionalProperties": {"type": "string"}}}}}},
    })


__all__ = ["ROUTE", "document", "init_app", "intake"]
