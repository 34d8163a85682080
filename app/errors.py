"""One JSON error shape for every endpoint, and the handlers that produce it."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, render_template, request
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from app import db

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error answered as ``{"error": {"code", "message", "details"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str,
                 details: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def error_response(status: int, code: str, message: str,
                   details: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    response = jsonify(error=body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _flatten(messages: dict[str, Any]) -> dict[str, str]:
    """``{"query": {"limit": ["Must be..."]}}`` -> ``{"limit": "Must be..."}``."""
    details: dict[str, str] = {}
    for fields in messages.values():
        items = fields.items() if isinstance(fields, dict) else [("body", fields)]
        for name, problems in items:
            text = "; ".join(map(str, problems)) if isinstance(problems, list) else str(problems)
            details[str(name)[:64]] = text[:300]
    return details


def _code_for(exc: HTTPException) -> str:
    return (exc.name or "error").lower().replace(" ", "_").replace("'", "")


def register_errorhandlers(app: Flask) -> None:
    """Answer every error as JSON; a database outage is a 503, never a 4xx or a 500."""

    @app.errorhandler(APIError)
    def _api_error(exc: APIError) -> Any:
        if _is_admin_page():
            return _admin_page(exc.status, "Bad request" if exc.status == 400 else "Error",
                               exc.message)
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        status = exc.code or 500
        if _is_admin_page():
            return _admin_page(status, exc.name, exc.description or "")
        data = getattr(exc, "data", None)
        if isinstance(data, dict) and isinstance(data.get("messages"), dict):
            # Argument validation (webargs): name every bad parameter or field.
            where = "query parameters" if "query" in data["messages"] else "request body"
            code = "invalid_parameter" if status == 400 else "invalid_request"
            return error_response(status, code, f"invalid {where}",
                                  _flatten(data["messages"]), data.get("headers"))
        response = error_response(status, _code_for(exc), exc.description or exc.name)
        if status == 405 and exc.response is None:
            allowed = getattr(exc, "valid_methods", None)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(OperationalError)
    @app.errorhandler(DBAPIError)
    def _database_error(exc: DBAPIError) -> Response:
        return database_error_response(exc)

    @app.errorhandler(PoolTimeout)
    def _no_connection(_exc: PoolTimeout) -> Response:
        # Every connection of the pool busy for its whole timeout: busy, not broken.
        log.warning("database busy: no connection free in the pool")
        return error_response(503, "database_busy", "the database is busy; retry later",
                              headers={"Retry-After": "5"})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        log.exception("unhandled error")
        if _is_admin_page():
            return _admin_page(500, "Internal error", "Something went wrong; it is logged.")
        return error_response(500, "internal_error", "internal error")


def database_failure(exc: DBAPIError, **log_extra: Any) -> tuple[str, str]:
    """Log a database failure and name it for a 503: ``(code, message)``.

    Senders treat a 4xx as final, so our own failure must never look like one: a 503 with
    Retry-After makes the provider retry or fall back. The API's handler and the deliveries'
    intake both answer with this.
    """
    if db.is_lock_wait(exc):
        log.warning("database busy: a lock was not granted in time", extra=log_extra)
        return "database_busy", "the database is busy (locked); retry later"
    # The driver's name for the failure (SQLITE_IOERR_WRITE, SQLITE_READONLY, SQLSTATE 57P01)
    # tells an operator what to look at.
    log.error("database unavailable: %s", db.error_name(exc), extra=log_extra)
    return "database_unavailable", "the database is unavailable; retry later"


def database_error_response(exc: DBAPIError) -> Response:
    """The answer to a database failure (in an app context): a 503, never a 4xx or a 500."""
    code, message = database_failure(exc)
    return error_response(503, code, message, headers={"Retry-After": "5"})


def _is_admin_page() -> bool:
    return request.path.startswith("/admin") and request.accept_mimetypes.best_match(
        ["text/html", "application/json"]) != "application/json"


def _admin_page(status: int, title: str, message: str) -> tuple[str, int]:
    return render_template("admin/error.html", title=title, message=message), status
