"""Callback delivery as the provider does it, in the background, with a log and faults.

Each conference's events go out in order from its own worker thread: to ``callbackUrl`` by
``callbackHttpMethod``, waiting at most ``callbackTimeout`` ms; on a timeout, connection error
or non-2xx answer, the same event goes to ``fallbackUrl``. If both fail, the pair is retried
``retries`` times after ``retry_delay`` seconds. Faults (drop, delay, duplicate, reorder,
failing or slow callback URL) apply to the next N events, for tests and demos.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from app.emulator.model import now_iso

DEFAULT_TIMEOUT_MS = 10_000
LOG_LIMIT = 100_000
FAULTS = ("drop", "delay", "delayMs", "duplicate", "reorder", "failCallback", "slowCallback",
          "early", "rateLimit", "rateLimitMs")


@dataclass
class Target:
    """Where and how one conference's callbacks go, read at the time of sending."""

    callback_url: str | None
    fallback_url: str | None
    method: str
    timeout_ms: int | None


@dataclass
class Faults:
    """How many upcoming events each fault applies to; ``delayMs`` is how long ``delay`` waits."""

    drop: int = 0
    delay: int = 0
    delayMs: int = 0
    duplicate: int = 0
    reorder: int = 0
    failCallback: int = 0
    slowCallback: int = 0
    early: int = 0
    rateLimit: int = 0  # API requests, not events: each answered 429
    rateLimitMs: int = 1000  # when a 429's X-RateLimit-Reset falls, from now

    def take(self, name: str) -> bool:
        left = getattr(self, name)
        if left > 0:
            setattr(self, name, left - 1)
            return True
        return False


def redact(url: str) -> str:
    """Return ``url`` without credentials embedded in it."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def as_query(event: dict[str, Any]) -> dict[str, str]:
    """An event's fields as GET sends them: every value a string."""
    return {k: (("true" if v else "false") if isinstance(v, bool) else str(v))
            for k, v in event.items() if v is not None}


@dataclass
class _Conference:
    queue: deque[dict[str, Any]] = field(default_factory=deque)
    worker: threading.Thread | None = None


class Deliverer:
    def __init__(self, retries: int = 1, retry_delay_s: float = 1.0) -> None:
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self.faults = Faults()
        self.cond = threading.Condition()
        self.pending = 0
        self.conferences: dict[str, _Conference] = {}
        self.log: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)
        self.events: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)
        self.ids = itertools.count(1)
        self.local = threading.local()

    # -- control

    def take_fault(self, name: str) -> bool:
        with self.cond:
            return self.faults.take(name)

    def set_faults(self, changes: dict[str, Any]) -> dict[str, int]:
        with self.cond:
            for name, value in changes.items():
                setattr(self.faults, name, int(value))
            return dict(self.faults.__dict__)

    def clear(self) -> None:
        with self.cond:
            self.log.clear()
            self.events.clear()

    def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while self.pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    # -- sending

    def send(self, conference_id: str, target: Callable[[], Target],
             events: list[dict[str, Any]]) -> None:
        """Queue ``events`` of one conference for delivery in the background, in order."""
        with self.cond:
            entry = self.conferences.setdefault(conference_id, _Conference())
            for event in events:
                entry.queue.append(self._record(conference_id, event))
            if entry.worker is None or not entry.worker.is_alive():
                entry.worker = threading.Thread(target=self._work, args=(conference_id, target),
                                                daemon=True, name=f"deliver-{conference_id}")
                entry.worker.start()

    def send_now(self, target: Target, event: dict[str, Any], conference_id: str) -> None:
        """Deliver one event before returning (the callback that outruns the API answer)."""
        with self.cond:
            record = self._record(conference_id, event)
        self._deliver(target, record)
        self._done()

    def _record(self, conference_id: str, event: dict[str, Any]) -> dict[str, Any]:
        """Start tracking one event; call with the lock held."""
        record = {"id": next(self.ids), "conferenceId": conference_id,
                  "eventType": event.get("eventType"),
                  "status": event.get("status") or event.get("state"),
                  "event": event, "outcome": "pending", "channel": None,
                  "deliveries": 0, "queuedAt": now_iso()}
        self.events.append(record)
        self.pending += 1
        return record

    def take_early(self) -> bool:
        with self.cond:
            return self.faults.take("early")

    def expect(self) -> None:
        """Count an event that will be sent later (so the emulator is not idle meanwhile)."""
        with self.cond:
            self.pending += 1

    def fulfil(self) -> None:
        """Settle one :meth:`expect`."""
        self._done()

    def _done(self) -> None:
        with self.cond:
            self.pending -= 1
            self.cond.notify_all()

    def _work(self, conference_id: str, target: Callable[[], Target]) -> None:
        while True:
            with self.cond:
                entry = self.conferences[conference_id]
                if not entry.queue:
                    entry.worker = None
                    return
                batch = [entry.queue.popleft()]
                reorder = self.faults.take("reorder")
            if reorder:
                # Wait briefly for the events that follow, then send this batch backwards.
                time.sleep(0.2)
                with self.cond:
                    while entry.queue and len(batch) < 4:
                        batch.append(entry.queue.popleft())
                batch.reverse()
            for record in batch:
                try:
                    self._deliver(target(), record)
                finally:
                    self._done()

    def _session(self) -> requests.Session:
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
            session.trust_env = False  # loopback targets: never through a proxy
        return session

    def _deliver(self, target: Target, record: dict[str, Any]) -> None:
        with self.cond:
            if self.faults.take("drop"):
                record["outcome"] = "dropped"
                return
            delay_ms = self.faults.delayMs if self.faults.take("delay") else 0
            duplicate = self.faults.take("duplicate")
            fail_callback = self.faults.take("failCallback")
            slow_callback = self.faults.take("slowCallback")
        if delay_ms:
            time.sleep(delay_ms / 1000)
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.retry_delay_s)
            for channel, url in (("callback", target.callback_url),
                                 ("fallback", target.fallback_url)):
                if not url:
                    continue
                forced = None
                if channel == "callback" and fail_callback:
                    forced = "injected failure"
                timeout_ms = target.timeout_ms or DEFAULT_TIMEOUT_MS
                # A slow callback: the receiver gets the whole request and answers, but as if
                # its answer came after callbackTimeout (a fast receiver would otherwise beat
                # any short timeout we could set).
                slow = channel == "callback" and bool(slow_callback)
                if self._attempt(url, target.method, timeout_ms, record, channel, attempt,
                                 forced, too_late=slow):
                    record["outcome"], record["channel"] = "delivered", channel
                    if duplicate:
                        self._attempt(url, target.method, timeout_ms, record, channel,
                                      attempt, None, duplicate=True)
                    return
        record["outcome"] = "failed"

    def _attempt(self, url: str, method: str, timeout_ms: int, record: dict[str, Any],
                 channel: str, attempt: int, forced: str | None, duplicate: bool = False,
                 too_late: bool = False) -> bool:
        started = time.perf_counter()
        status: int | None = None
        error = forced
        if forced is None:
            timeout = timeout_ms / 1000
            try:
                if method == "GET":
                    response = self._session().get(url, params=as_query(record["event"]),
                                                   timeout=timeout, allow_redirects=False)
                else:
                    response = self._session().post(url, json=record["event"],
                                                    timeout=timeout, allow_redirects=False)
                status = response.status_code
                response.close()
            except requests.Timeout:
                error = "timeout"
            except requests.RequestException as exc:
                error = type(exc).__name__
        if too_late and error is None:
            status, error = None, "timeout"  # answered, but after we stopped waiting
        ok = status is not None and 200 <= status < 300
        if forced is None:
            record["deliveries"] += 1  # sent, so it may have arrived even if we gave up
        self.log.append({
            "event": record["id"], "conferenceId": record["conferenceId"],
            "eventType": record["eventType"], "url": redact(url), "method": method,
            "channel": channel, "attempt": attempt + 1, "status": status, "error": error,
            "ok": ok, "latencyMs": round((time.perf_counter() - started) * 1000, 2),
            "fallbackUsed": channel == "fallback", "duplicate": duplicate, "at": now_iso(),
        })
        return ok
