"""Probes and metrics for load balancers, orchestrators and Prometheus.

``/healthz``: the process answers. ``/readyz``: the database takes a write as a delivery would
(through the same store, within the same wait) and its schema is at the migrations' head, so
the instance may take traffic. Both are unauthenticated, cheap, and say
nothing a stranger could use (no URLs, versions or error texts). ``/metrics``: the Prometheus
text format, behind a bearer token when ``CONFHOOK_METRICS_TOKEN`` is set.
"""

from __future__ import annotations

import hmac
import logging
from concurrent.futures import TimeoutError as FuturesTimeout
from functools import lru_cache
from typing import Any

from alembic.script import ScriptDirectory
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from app import db, delivery, metrics
from app.cli import alembic_config
from app.errors import APIError
from app.models import ReadinessProbe, utcnow
from app.statements import Runner

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def migration_heads() -> frozenset[str]:
    """The head revisions of ``migrations/``, read once per process."""
    return frozenset(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


def readiness() -> tuple[bool, dict[str, str]]:
    checks: dict[str, str] = {}
    try:
        # Through the deliveries' own store: a held write lock, a read-only or full disk, a
        # server that stops answering make this unready within CONFHOOK_DELIVERY_WAIT_MS,
        # as they would a delivery.
        versions = delivery.intake().store.run(_probe)
        checks["database"] = "ok"
        checks["migrations"] = "ok" if versions == migration_heads() else "behind"
    except (SQLAlchemyError, FuturesTimeout) as exc:
        log.warning("readiness: database unreachable: %s", db.error_name(exc))
        checks["database"] = "unreachable"
    except Exception:
        log.exception("readiness: the write probe failed")
        checks["database"] = "unreachable"
    return all(v == "ok" for v in checks.values()), checks


def _probe_upsert(dialect: str) -> object:
    table = ReadinessProbe.__table__
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(table)
    stmt = insert.values(id=1, checked_at=bindparam("at", type_=table.c.checked_at.type))
    return stmt.on_conflict_do_update(index_elements=[table.c.id],
                                      set_={"checked_at": stmt.excluded.checked_at})


def _probe(run: Runner) -> set[str] | None:
    """The revisions in ``alembic_version`` (None without the table), and, when the schema
    has the probe's table, one row written, committed by the caller as a delivery is."""
    if run.dialect.name == "postgresql":
        run.driver_sql("SELECT to_regclass('alembic_version') IS NOT NULL, "
                       "to_regclass('readiness_probe') IS NOT NULL")
        has_versions, has_probe = run.cursor.fetchone()
    else:
        run.driver_sql("SELECT count(*) FILTER (WHERE name = 'alembic_version'), "
                       "count(*) FILTER (WHERE name = 'readiness_probe') FROM sqlite_master")
        has_versions, has_probe = run.cursor.fetchone()
    if not has_versions:
        return None
    run.driver_sql("SELECT version_num FROM alembic_version")
    versions = {row[0] for row in run.cursor.fetchall()}
    if has_probe:
        run.execute(run.prepared("readiness-probe", lambda: _probe_upsert(run.dialect.name)),
                    {"at": utcnow()})
    return versions


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
    body = metrics.exposition(db.read_session(),
                              bool(current_app.config["PROMETHEUS_MULTIPROC_DIR"]))
    return _no_store(Response(body, content_type=CONTENT_TYPE_LATEST))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
