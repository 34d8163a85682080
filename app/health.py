"""Probes and metrics for load balancers, orchestrators and Prometheus.

``/healthz``: the process answers. ``/readyz``: the database answers and its schema is at the
migrations' head, so the instance may take traffic. Both are unauthenticated, cheap, and say
nothing a stranger could use (no URLs, versions or error texts). ``/metrics``: the Prometheus
text format, behind a bearer token when ``CONFHOOK_METRICS_TOKEN`` is set.
"""

from __future__ import annotations

import hmac
import logging
from concurrent.futures import TimeoutError as FuturesTimeout
from functools import lru_cache
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app import db, deliveryconn, metrics
from app.errors import APIError
from app.prepared import Runner

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def migration_heads() -> frozenset[str]:
    """The head revisions of ``migrations/``, read once per process."""
    from alembic.script import ScriptDirectory

    from app.cli import alembic_config

    return frozenset(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


def readiness() -> tuple[bool, dict[str, str]]:
    checks: dict[str, str] = {}
    connections = current_app.extensions.get(deliveryconn.EXTENSION)
    try:
        if connections is not None:
            # PostgreSQL: on a delivery connection, so that a server that stops answering
            # makes this unready within CONFHOOK_DELIVERY_WAIT_MS, as it does a delivery
            # (the app's pool pings at checkout, and a frozen server holds that for ever).
            versions = connections.run(_migration_versions)
        else:
            with db.database(current_app).engine.connect() as connection:
                connection.execute(text("SELECT 1"))
                try:
                    versions = {row[0] for row in connection.execute(
                        text("SELECT version_num FROM alembic_version"))}
                except SQLAlchemyError:
                    versions = None
        checks["database"] = "ok"
        checks["migrations"] = "ok" if versions == migration_heads() else "behind"
    except (SQLAlchemyError, FuturesTimeout) as exc:
        log.warning("readiness: database unreachable: %s", db.error_name(exc))
        checks["database"] = "unreachable"
    return all(v == "ok" for v in checks.values()), checks


def _migration_versions(run: Runner) -> set[str] | None:
    """The revisions in ``alembic_version``; None if there is no such table."""
    run.driver_sql("SELECT to_regclass('alembic_version') IS NOT NULL")
    if not run.cursor.fetchone()[0]:
        return None
    run.driver_sql("SELECT version_num FROM alembic_version")
    return {row[0] for row in run.cursor.fetchall()}


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/healthz")
def healthz() -> Response:
    return _no_store(jsonify(status="ok"))


@bp.get("/readyz")
def readyz() -> Any:
    ready, checks = readiness()
    response = _no_store(jsonify(status="ready" if ready else "unready", checks=checks))
    response.status_code = 200 if ready else 503
    return response


@bp.get("/metrics")
def metrics_view() -> Response:
    token = current_app.config["CONFHOOK_METRICS_TOKEN"]
    if token:
        scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(offered.strip().encode(),
                                                                 token.encode()):
            raise APIError(401, "unauthorized", "send Authorization: Bearer <metrics token>",
                           headers={"WWW-Authenticate": 'Bearer realm="confhook-metrics"'})
    body = metrics.exposition(db.read_session())
    return _no_store(Response(body, content_type=CONTENT_TYPE_LATEST))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
