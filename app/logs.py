"""Structured logs: one JSON line per request, each with a request id; a delivery's line
also carries what became of it (outcome, event id and type, channel, match, conference).

The request id comes from a sane ``X-Request-Id`` header (a proxy's) or is made here, and is
sent back in the response's ``X-Request-Id``. Paths are logged with a callback URL's key
replaced, query strings never (a GET delivery's fields are the provider's data, and a key or
token must never reach a log).

:func:`configure` sets up the handlers; ``wsgi.py`` calls it, so tests and library users keep
their own logging.
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
import time
from typing import Any

from flask import Flask, Response, g, request
from pythonjsonlogger.json import JsonFormatter

from app import metrics

log = logging.getLogger("app.request")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"


class _RequestContext(logging.Filter):
    """Add the current request's id to every record logged while it is handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            try:
                record.request_id = g.get("request_id")
            except RuntimeError:  # outside a request
                record.request_id = None
        return True


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Send the app's logs to stdout, as JSON lines or as text; idempotent."""
    handler = logging.StreamHandler(sys.stdout)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"}, timestamp="time"))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(_RequestContext())
    logger = logging.getLogger("app")
    for old in list(logger.handlers):
        if getattr(old, "confhook", False):
            logger.removeHandler(old)
    handler.confhook = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def redacted_path(path: str) -> str:
    """Return ``path`` with a callback URL's key replaced."""
    parts = path.split("/")
    if len(parts) >= 5 and parts[1] == "callbacks":
        parts[4] = "<key>"
    return "/".join(parts)


def request_id(offered: str) -> str:
    """The request's id: a sane one from a proxy's ``X-Request-Id``, or a new one."""
    return offered if _REQUEST_ID.match(offered) else secrets.token_hex(8)


def request_done(*, request_id: str, method: str, path: str, route: str | None, status: int,
                 seconds: float, remote: str | None, bytes_in: int,
                 delivery: dict[str, Any] | None = None) -> None:
    """Count a finished request in the metrics and write its one log line.

    ``path`` is already redacted.
    """
    metrics.request_done(route, method, status, seconds)
    fields: dict[str, Any] = {
        "request_id": request_id, "method": method, "path": path, "route": route,
        "status": status, "duration_ms": round(seconds * 1000, 2), "remote": remote,
        "bytes_in": bytes_in,
    }
    if delivery:
        fields.update(delivery)
        log.info("%s %s %s %.1f ms: delivery %s (%s event %s, %s)", method, path, status,
                 fields["duration_ms"], delivery["outcome"], delivery["event_type"],
                 delivery["event_id"], delivery["match"], extra=fields)
        return
    log.info("%s %s %s %.1f ms", method, path, status, fields["duration_ms"], extra=fields)


def _start() -> None:
    g.started = time.perf_counter()
    g.request_id = request_id(request.headers.get("X-Request-Id", ""))
    # gunicorn's access log reads this (config/gunicorn.conf.py): never log a URL key.
    request.environ["confhook.log_path"] = redacted_path(request.path)


def _finish(response: Response) -> Response:
    started = g.get("started")
    if started is None:
        return response
    response.headers["X-Request-Id"] = g.request_id
    request_done(request_id=g.request_id, method=request.method,
                 path=redacted_path(request.path),
                 route=request.url_rule.rule if request.url_rule is not None else None,
                 status=response.status_code, seconds=time.perf_counter() - started,
                 remote=request.remote_addr, bytes_in=request.content_length or 0,
                 delivery=g.get("delivery"))
    return response


def init_app(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_finish)
