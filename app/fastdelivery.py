"""The common delivery, served beneath Flask: same checks, same storing, same answer, less work.

Nearly every request the provider sends is a well-formed event for a URL whose key verifies.
Through Flask, such a delivery spent more time in the framework (contexts, routing, hooks,
the response object, proxies to the request) than in verifying, parsing and storing it. This
WSGI layer wraps the app (``callbacks.init_app`` installs it) and serves that one case with
the same functions the Flask route uses: ``events.authenticate``, ``callbacks.read_fields``,
``events.parse``, ``callbacks.store`` (in an app context, so the database session and the
logs' request id work as they do in a request), ``callbacks.delivered`` and
``logs.request_done``. Its answer, its log line and its metrics are the route's.

Everything else goes to Flask untouched: any other path or method, a chunked or oversized
body, a path or query string that is not plain ASCII, and every delivery that one of those
functions refuses (a bad key, malformed JSON, a body of another type, an invalid event). A
refused delivery is handed over with the bytes already read, and the route then refuses it as it
always did, with its counting, logging and error body; nothing is stored on the way. Only
failures of the storing itself (a busy or unavailable database, an unexpected error) are
answered here, with the error body the app's handlers give.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any

from flask import Flask, Response, g
from sqlalchemy.exc import DBAPIError
from werkzeug.wrappers import Request

from app import callbacks, errors, events, logs
from app.errors import database_error_response, error_response
from app.keys import CHANNELS

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
StartResponse = Callable[..., Any]


class FastDeliveries:
    """WSGI middleware: serve well-formed, authenticated deliveries; pass on the rest."""

    def __init__(self, app: Flask, inner: WSGIApp) -> None:
        self.app = app
        self.inner = inner
        self.served = 0  # deliveries answered here (tests read it)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse
                 ) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        if not path.startswith("/callbacks/"):
            return self.inner(environ, start_response)
        parts = path.split("/")
        method = environ.get("REQUEST_METHOD")
        if (len(parts) != 5 or parts[2] not in CHANNELS or not parts[3] or not parts[4]
                or method not in ("GET", "POST") or not path.isascii()
                or not environ.get("QUERY_STRING", "").isascii()
                or "HTTP_TRANSFER_ENCODING" in environ):
            return self.inner(environ, start_response)
        if method == "POST":
            length = environ.get("CONTENT_LENGTH", "")
            max_bytes = self.app.config["CONFHOOK_MAX_BODY_BYTES"]
            if not (length.isascii() and length.isdigit()) or int(length) > max_bytes:
                return self.inner(environ, start_response)
            # Read once, and keep the bytes where Flask would read them if it answers.
            try:
                body = environ["wsgi.input"].read(int(length))
            except Exception:
                # The client went away, or the server could not read: Flask says so (400).
                environ["wsgi.input"] = io.BytesIO(b"")
                return self.inner(environ, start_response)
            environ["wsgi.input"] = io.BytesIO(body)
        return self._deliver(environ, start_response, method, parts[2], parts[3], parts[4])

    def _deliver(self, environ: dict[str, Any], start_response: StartResponse, method: str,
                 channel: str, subject: str, key: str) -> Iterable[bytes]:
        started = time.perf_counter()
        config = self.app.config
        req = Request(environ)
        try:
            events.authenticate([config["CONFHOOK_SECRET_KEY"],
                                 *config["CONFHOOK_OLD_SECRET_KEYS"]], subject, key)
            event = events.parse(callbacks.read_fields(req, config["CONFHOOK_MAX_BODY_BYTES"]))
        except Exception:
            # Refused (a bad key, a malformed or invalid event, a body cut short), or
            # anything unforeseen: nothing is stored yet, and the route answers it as always.
            return self._to_flask(environ, start_response)
        request_id = logs.request_id(environ.get("HTTP_X_REQUEST_ID", ""))
        log_path = logs.redacted_path(environ["PATH_INFO"])
        environ["confhook.log_path"] = log_path  # gunicorn's access log, as in app/logs.py
        outcome: events.Outcome | None = None
        response: Response | None = None
        with self.app.app_context():
            g.request_id = request_id  # for what is logged while storing
            try:
                outcome = callbacks.store(subject, channel, method, event)
            except events.Rejected:
                pass  # nothing stored: the route refuses it below
            except FuturesTimeout:
                busy = callbacks.busy_error()
                response = error_response(busy.status, busy.code, busy.message,
                                          headers=busy.headers)
            except DBAPIError as exc:
                response = database_error_response(exc)
            except Exception:
                errors.log.exception("unhandled error")
                response = error_response(500, "internal_error", "internal error")
        done = {"request_id": request_id, "method": method, "path": log_path,
                "route": callbacks.ROUTE, "remote": environ.get("REMOTE_ADDR"),
                "bytes_in": req.content_length or 0}
        if response is not None:
            response.headers["X-Request-Id"] = request_id
            logs.request_done(**done, status=response.status_code,
                              seconds=time.perf_counter() - started)
            return response(environ, start_response)  # type: ignore[no-any-return]
        if outcome is None:
            return self._to_flask(environ, start_response)
        delivery, header = callbacks.delivered(outcome, channel, method)
        logs.request_done(**done, status=204, seconds=time.perf_counter() - started,
                          delivery=delivery)
        self.served += 1
        start_response("204 NO CONTENT", [("X-Confhook-Event", header),
                                          ("X-Request-Id", request_id)])
        return []

    def _to_flask(self, environ: dict[str, Any], start_response: StartResponse
                  ) -> Iterable[bytes]:
        body = environ["wsgi.input"]
        if isinstance(body, io.BytesIO):
            body.seek(0)  # the bytes read above, for Flask to read again
        return self.inner(environ, start_response)
