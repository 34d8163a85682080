"""The ingest benchmark's baseline: a bare Flask app that parses the delivery and answers 204.

Served by gunicorn with the service's own config (``config/gunicorn.conf.py``), so the only
difference to the service is the work of authenticating, matching and storing.
"""

from __future__ import annotations

import json

from flask import Flask, Response, request

app = Flask(__name__)


@app.route("/callbacks/<channel>/<subject>/<key>", methods=["GET", "POST"])
def deliver(channel: str, subject: str, key: str) -> Response:
    fields = dict(request.args) if request.method == "GET" else json.loads(request.get_data())
    if not isinstance(fields, dict) or "eventType" not in fields:
        return Response(status=422)
    return Response(status=204)


@app.get("/healthz")
def ready() -> Response:
    return Response(status=200)
