"""The deliveries' door: every request under ``/callbacks/``, answered beneath Flask.

The provider waits only ``callbackTimeout`` for us, and on a small machine Flask's work per
request (contexts, routing, hooks, the response object) costs more CPU than the storing that
must share it (bench/README.md). So this WSGI layer takes every request whose path starts
``/callbacks/``, reads its parts, hands them to the intake and writes its answer and its one
log line; it decides nothing itself. Every other request goes to Flask.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from app import logs
from app.delivery.intake import ROUTE, Answer, Intake, Parts

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
PREFIX = "/callbacks/"


class Unreadable(Exception):
    """The body did not arrive whole (the client went away, a bad length)."""


def read_body(environ: dict[str, Any], max_bytes: int) -> tuple[int | None, bytes | None]:
    """The declared length and the body; no body is read past ``max_bytes``."""
    stream = environ["wsgi.input"]
    declared = environ.get("CONTENT_LENGTH") or ""
    try:
        if declared:
            if not (declared.isascii() and declared.isdigit()):
                raise Unreadable("the Content-Length is not a number")
            length = int(declared)
            if length > max_bytes:
                return length, None
            body = stream.read(length)
            if len(body) < length:
                raise Unreadable("the body ended before its Content-Length")
            return length, body
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            return None, stream.read(max_bytes + 1)  # the intake refuses what is over
    except (OSError, ValueError) as exc:
        raise Unreadable("the body could not be read") from exc
    return None, b""


class Entrance:
    """WSGI middleware: the intake answers ``/callbacks/…``; Flask answers the rest."""

    def __init__(self, intake: Intake, inner: WSGIApp) -> None:
        self.intake = intake
        self.inner = inner

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        if not path.startswith(PREFIX):
            return self.inner(environ, start_response)
        started = time.perf_counter()
        request_id = logs.request_id(environ.get("HTTP_X_REQUEST_ID", ""))
        log_path = logs.redacted_path(path)
        environ["confhook.log_path"] = log_path  # gunicorn's access log: never the key
        method = environ.get("REQUEST_METHOD", "")
        answer = self._answer(environ, path, method, request_id)
        body = answer.body()
        headers = [("X-Request-Id", request_id), *answer.headers.items()]
        if body:
            headers += [("Content-Type", "application/json"),
                        ("Content-Length", str(len(body)))]
        start_response(f"{answer.status} {HTTPStatus(answer.status).phrase}", headers)
        declared = environ.get("CONTENT_LENGTH") or ""
        logs.request_done(request_id=request_id, method=method, path=log_path, route=ROUTE,
                          status=answer.status, seconds=time.perf_counter() - started,
                          remote=environ.get("REMOTE_ADDR"),
                          bytes_in=int(declared) if declared.isdigit() else 0,
                          delivery=answer.delivery)
        return [body] if body else []

    def _answer(self, environ: dict[str, Any], path: str, method: str,
                request_id: str) -> Answer:
        segments = path.split("/")  # "", "callbacks", channel, subject, key
        shaped = len(segments) == 5 and all(segments[2:])
        channel, subject, key = segments[2:5] if shaped else ("", "", "")
        length: int | None = None
        body: bytes | None = None
        readable = True
        if shaped and method == "POST":
            try:
                length, body = read_body(environ, self.intake.max_bytes)
            except Unreadable:
                readable = False
        query = environ.get("QUERY_STRING", "").encode("latin-1")  # the bytes as sent
        mimetype = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        return self.intake.receive(Parts(channel, subject, key, method, query, mimetype,
                                         length, body, readable, request_id))
