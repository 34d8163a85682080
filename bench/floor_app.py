"""The ingest benchmark's durable floor: the least an app can do and still store every delivery.

It checks the URL's key, parses the delivery (JSON body or query string), runs one
``INSERT … ON CONFLICT`` and commits, with the service's durability: SQLite in WAL with
``CONFHOOK_SQLITE_SYNCHRONOUS``, or PostgreSQL with the server's own settings. One connection
per thread, no pool, no framework beyond Flask's routing. Served by gunicorn with the
service's config, it is what the service's rate is held against (``bench/ingest.py``).

Settings: ``CONFHOOK_SECRET_KEY`` and ``FLOOR_DATABASE_URL`` (``sqlite:///path`` or
``postgresql://…``); the table ``floor_event`` is created if missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from typing import Any

from flask import Flask, Response, request

from app.keys import key_matches

SECRET = os.environ["CONFHOOK_SECRET_KEY"]
URL = os.environ["FLOOR_DATABASE_URL"]
SQLITE = URL.startswith("sqlite")
SYNCHRONOUS = os.environ.get("CONFHOOK_SQLITE_SYNCHRONOUS", "FULL")

CREATE = ("CREATE TABLE IF NOT EXISTS floor_event (dedup_key VARCHAR(64) PRIMARY KEY, "
          "payload TEXT NOT NULL, deliveries INTEGER NOT NULL)")
INSERT = ("INSERT INTO floor_event (dedup_key, payload, deliveries) VALUES ({0}, {0}, 1) "
          "ON CONFLICT (dedup_key) DO UPDATE SET deliveries = floor_event.deliveries + 1")

INSERT_SQL = INSERT.format("?" if SQLITE else "%s")

app = Flask(__name__)
_local = threading.local()


def _connect() -> Any:
    if SQLITE:
        conn = sqlite3.connect(URL.split("///", 1)[1], timeout=10, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
        conn.execute(CREATE)
        return conn
    import psycopg

    conn = psycopg.connect(URL.replace("postgresql+psycopg://", "postgresql://"),
                           autocommit=True)
    conn.execute(CREATE)
    return conn


def _connection() -> Any:
    conn = getattr(_local, "conn", None)
    if conn is None or getattr(_local, "pid", None) != os.getpid():
        conn = _local.conn = _connect()
        _local.pid = os.getpid()
    return conn


@app.route("/callbacks/<channel>/<subject>/<key>", methods=["GET", "POST"])
def deliver(channel: str, subject: str, key: str) -> Response:
    if not key_matches([SECRET], subject, key):
        return Response(status=401)
    fields = dict(request.args) if request.method == "GET" else json.loads(request.get_data())
    if not isinstance(fields, dict) or "eventType" not in fields:
        return Response(status=422)
    payload = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    dedup = hashlib.sha256(payload.encode()).hexdigest()
    # One statement in autocommit: its own transaction, committed (one round trip).
    _connection().execute(INSERT_SQL, (dedup, payload))
    return Response(status=204)


@app.get("/healthz")
def ready() -> Response:
    _connection()
    return Response(status=200)
