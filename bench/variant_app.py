"""The service with one performance layer taken out, for ``bench/ingest.py --without LAYER``.

Each layer of the delivery path stays only while it pays: more than 10 % in the ingest
benchmark, or a fault test that fails without it. This app is the production app
(``wsgi.py``) with the layer named by ``BENCH_WITHOUT`` replaced by the plain way:

- ``group-commit`` (SQLite): each request thread commits its own delivery, waiting for
  SQLite's lock with its busy handler, instead of handing it to the process's writer thread;
- ``file-lock`` (SQLite): the writers of several processes meet only at SQLite's own lock;
- ``delivery-pool`` (PostgreSQL): deliveries use the app's own pool, which pings every
  connection at checkout, instead of a pool of their own;
- ``statement-cache`` (SQLite): the delivery's statements run through SQLAlchemy's
  ``Connection.execute`` (its compiled cache, execution context and result processing)
  instead of being prepared once and run on the driver's cursor (``app/statements.py``);
- ``entrance``: deliveries come in through a Flask route (with Flask's contexts, hooks and
  response object) that hands the same parts to the same intake, instead of the WSGI door.

A benchmark fixture only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Response, g, request
from sqlalchemy.engine import Connection, Engine

from app import db, delivery
from app.delivery import sqlite as sqlite_store
from app.delivery.intake import Parts
from app.delivery.postgres import PostgresStore
from app.delivery.sqlite import SQLiteStore
from app.statements import Runner
from wsgi import app

T = TypeVar("T")


class OwnTransactions:
    """SQLite without group commit: every delivery in a transaction of its own thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def run(self, work: Callable[[Runner], T]) -> T:
        connection: Any = self.engine.raw_connection()
        run = Runner(connection.driver_connection, self.engine.dialect)
        try:
            run.driver_sql("BEGIN IMMEDIATE")
            result = work(run)
            run.driver_sql("COMMIT")
            return result
        except BaseException:
            run.close()
            connection.driver_connection.rollback()
            raise
        finally:
            run.close()
            connection.close()


class CoreRunner(Runner):
    """The same statements, through SQLAlchemy's Connection.execute on the writer's
    connection, in the transaction the writer opened."""

    __slots__ = ("sa",)

    def __init__(self, pooled: Any, engine: Engine) -> None:
        super().__init__(pooled.driver_connection, engine.dialect)
        self.sa = Connection(engine, connection=pooled, _allow_autobegin=False)

    def prepared(self, key: Any, build: Any) -> Any:
        return build()  # SQLAlchemy caches the compiled form by the statement's cache key

    def execute(self, prepared: Any, params: dict[str, Any]) -> Any:
        return self.sa.execute(prepared, params)


LAYER = os.environ["BENCH_WITHOUT"]
intake = delivery.intake(app)
engine = db.database(app).engine
if LAYER == "group-commit":
    assert isinstance(intake.store, SQLiteStore), "group commit is SQLite's"
    intake.store = OwnTransactions(engine)
elif LAYER == "file-lock":
    assert isinstance(intake.store, SQLiteStore), "the writers' file lock is SQLite's"
    intake.store.lock_path = None
elif LAYER == "statement-cache":
    store = intake.store
    assert isinstance(store, SQLiteStore), "measured on SQLite"
    sqlite_store.Runner = lambda _dbapi, _dialect: CoreRunner(  # type: ignore[assignment,misc]
        store.connection, store.engine)
elif LAYER == "delivery-pool":
    assert isinstance(intake.store, PostgresStore), "the delivery pool is PostgreSQL's"
    intake.store = PostgresStore(engine, None, intake.store.wait_s)
elif LAYER == "entrance":
    app.wsgi_app = app.wsgi_app.inner  # type: ignore[attr-defined,method-assign]

    @app.route("/callbacks/<channel>/<subject>/<key>", methods=["GET", "POST"])
    def deliver(channel: str, subject: str, key: str) -> Response:
        body = request.get_data() if request.method == "POST" else None
        answer = intake.receive(Parts(channel, subject, key, request.method,
                                      request.query_string, request.mimetype,
                                      request.content_length, body))
        g.delivery = answer.delivery
        return Response(answer.body(), status=answer.status, headers=answer.headers)

    app.extensions["csrf"].exempt(deliver)  # the provider sends no CSRF token
else:
    raise SystemExit(f"BENCH_WITHOUT: no layer {LAYER!r}")
