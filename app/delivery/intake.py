"""Intake: one function from a delivery's parts to its answer, whatever entrance it came by.

Verify the URL's key, read the fields, interpret them, store, answer. A delivery whose key
verifies is stored (interpretation only decides how it is filed) and answered ``204`` once
committed; a ``4xx`` is only for what is not a delivery at all; whatever goes wrong while
storing is a ``503`` with ``Retry-After`` for that delivery alone. Keys are never logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app import metrics
from app.delivery import filing
from app.delivery.interpret import NotADelivery, Parsed, interpret, read_body, read_query
from app.delivery.rejections import RejectionCounter
from app.errors import database_failure
from app.keys import CHANNELS, key_matches
from app.statements import Runner

log = logging.getLogger(__name__)

ROUTE = "/callbacks/<channel>/<subject>/<key>"
RETRY_AFTER = {"Retry-After": "5"}

T = TypeVar("T")


class Store(Protocol):
    """Where deliveries are committed: ``app/delivery/sqlite.py`` or ``postgres.py``."""

    def run(self, work: Callable[[Runner], T]) -> T: ...


@dataclass(frozen=True)
class Parts:
    """A delivery as the entrance read it: ``body`` is None when none was read (a GET, or one
    whose declared ``length`` is over the limit); ``readable`` is False when the body did not
    arrive whole. ``channel`` is empty when the path has not the route's shape."""

    channel: str
    subject: str
    key: str
    method: str
    query: bytes
    mimetype: str
    length: int | None
    body: bytes | None
    readable: bool = True
    request_id: str | None = None


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    error: dict[str, Any] | None = None  # {"code", "message"} for an error answer
    delivery: dict[str, Any] | None = None  # what the request's log line says of it

    def body(self) -> bytes:
        return b"" if self.error is None else json.dumps({"error": self.error}).encode()


@dataclass
class Intake:
    """The app's intake: its secrets and limits, its store and its refusal counter."""

    secrets: Sequence[str]
    max_bytes: int
    store: Store
    rejections: RejectionCounter
    new_session: Callable[[], Any]

    def receive(self, parts: Parts) -> Answer:
        """Answer one delivery; in an app context (logging, the store's engine)."""
        if parts.channel not in CHANNELS:  # an empty one too: not the route's shape
            return self._refuse(parts, 404, "not_found", "no such callback URL")
        if parts.method not in ("GET", "POST"):
            answer = self._refuse(parts, 405, "method_not_allowed",
                                  "a delivery is a GET or a POST")
            answer.headers["Allow"] = "GET, POST"
            return answer
        if not key_matches(self.secrets, parts.subject, parts.key):
            return self._refuse(parts, 401, "unauthorized", "unknown callback URL or key",
                                reason="bad_key")
        if not parts.readable:
            return self._refuse(parts, 400, "invalid_body", "the body did not arrive whole")
        if len(parts.query) > self.max_bytes:
            return self._refuse(parts, 414, "uri_too_long",
                                f"query string over {self.max_bytes} bytes")
        if (parts.length or 0) > self.max_bytes or len(parts.body or b"") > self.max_bytes:
            return self._refuse(parts, 413, "payload_too_large",
                                f"body over {self.max_bytes} bytes")
        try:
            event = interpret(self._read(parts))
        except NotADelivery as exc:
            return self._refuse(parts, exc.status, exc.code, str(exc))
        return self._store(parts, event)

    @staticmethod
    def _read(parts: Parts) -> Any:
        if parts.method == "GET" or (not parts.body and parts.query):
            # A POST with its fields in the query string is read as a GET is.
            try:
                query = parts.query.decode("utf-8")
            except UnicodeDecodeError:
                raise NotADelivery(400, "invalid_query",
                                   "the query string is not UTF-8; percent-encode it") from None
            return read_query(query)
        return read_body(parts.body or b"", parts.mimetype)

    def _store(self, parts: Parts, event: Parsed) -> Answer:
        def work(run: Runner) -> filing.Outcome:
            return filing.record(run, subject=parts.subject, channel=parts.channel,
                                 method=parts.method, event=event)

        try:
            outcome = self.store.run(work)
        except FuturesTimeout:
            # It may still be stored; a retry of it would then count as a duplicate.
            return _unavailable("database_busy", "the database did not take the event in "
                                "time; retry later")
        except PoolTimeout:
            return _unavailable("database_busy", "the database is busy; retry later")
        except DBAPIError as exc:
            return _unavailable(*database_failure(exc, request_id=parts.request_id))
        except Exception:
            # Not this delivery's fault, or a fault of ours: rolled back alone, and retried.
            log.exception("delivery: storing failed", extra={
                "channel": parts.channel, "subject": parts.subject[:40],
                "request_id": parts.request_id})
            return _unavailable("storing_failed", "the event could not be stored; "
                                "retry later")
        result = "duplicate" if outcome.duplicate else (
            "invalid" if outcome.match == "invalid" else "stored")
        metrics.delivery(outcome.event_type, parts.channel, parts.method, result)
        header = f"{outcome.event_id}; {result}; {outcome.match}"
        return Answer(204, {"X-Confhook-Event": header}, delivery={
            "outcome": result, "event_id": outcome.event_id,
            "event_type": outcome.event_type, "channel": parts.channel,
            "match": outcome.match, "match_reason": outcome.match_reason,
            "conference": outcome.conference_pk})

    def _refuse(self, parts: Parts, status: int, code: str, message: str,
                reason: str | None = None) -> Answer:
        """Count and log a request that is not a delivery we store; nothing is written."""
        reason = reason or code
        self.rejections.add(reason)
        self.rejections.flush_if_due(self.new_session)
        metrics.delivery(None, parts.channel, parts.method,
                         "rejected" if status == 401 else "refused")
        log.warning("delivery refused: %s", reason, extra={
            "reason": reason, "channel": parts.channel[:16], "subject": parts.subject[:40],
            "request_id": parts.request_id})
        return Answer(status, error={"code": code, "message": message, "details": {}})


def _unavailable(code: str, message: str) -> Answer:
    return Answer(503, dict(RETRY_AFTER), error={"code": code, "message": message,
                                                 "details": {}})
