"""Prometheus metrics, correct with several gunicorn workers.

Under gunicorn, ``config/gunicorn.conf.py`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
directory before any worker imports this module (prometheus_client reads it at import); each
worker then writes its samples there and ``/metrics`` adds them up across workers. Without it
(tests, ``flask run``) the samples live in the process. Counts that are facts about the data
(unmatched events, conferences by state) are read from the database at scrape time, so every
instance on a shared database agrees.

Every label has a bounded set of values: nothing from a request goes into one unmapped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from app.models import Conference, Event, unfiled

DELIVERIES = Counter(
    "confhook_deliveries", "Callback deliveries received, by outcome.",
    ["event_type", "channel", "method", "outcome"])
REQUEST_SECONDS = Histogram(
    "confhook_request_duration_seconds", "Time to answer a request, by route.",
    ["route", "method", "status"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
PROVIDER_CALLS = Counter(
    "confhook_provider_requests", "Calls to the provider's API, by outcome.",
    ["operation", "outcome"])
PROVIDER_SECONDS = Histogram(
    "confhook_provider_request_duration_seconds", "Time the provider took to answer.",
    ["operation"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

KNOWN_EVENT_TYPES = frozenset(
    ("conference", "conference-member", "conference-playback", "conference-speak"))
_PROVIDER_WORDS = frozenset(("conferences", "members", "audio", "account"))
_STATUS = re.compile(r"^[1-5][0-9][0-9]$")


def event_type_label(value: Any) -> str:
    if value in KNOWN_EVENT_TYPES:
        return str(value)
    return "none" if value in (None, "") else "other"


def delivery(event_type: Any, channel: str, method: str, outcome: str) -> None:
    """Count one delivery: ``outcome`` is stored, duplicate, invalid (stored, not
    understood), rejected (a bad key) or refused (not a delivery at all)."""
    DELIVERIES.labels(event_type_label(event_type), channel if channel in (
        "callback", "fallback") else "other", method if method in ("GET", "POST") else "other",
        outcome).inc()


def provider_operation(method: str, path: str) -> str:
    """``GET conferences/conf-1/members`` -> ``GET conferences/{id}/members``."""
    words = [w if w in _PROVIDER_WORDS else "{id}" for w in path.split("?")[0].split("/") if w]
    return f"{method} {'/'.join(words)}"


def provider_call(operation: str, outcome: str, seconds: float) -> None:
    PROVIDER_CALLS.labels(operation, outcome).inc()
    PROVIDER_SECONDS.labels(operation).observe(seconds)


def request_done(route: str | None, method: str, status: int, seconds: float) -> None:
    text = str(status)
    REQUEST_SECONDS.labels(route or "unrouted",
                           method if method in ("GET", "POST", "HEAD", "PUT", "PATCH",
                                                "DELETE", "OPTIONS") else "other",
                           text if _STATUS.match(text) else "other").observe(seconds)


class _Process:
    """The samples of this process's default registry, for a registry built per scrape."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


class _Database:
    """Counts read from the database at scrape time."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("confhook_database_up",
                               "1 when this instance could read the database for this scrape.")
        try:
            counts = dict(self.session.execute(
                select(Event.match, func.count()).where(unfiled())
                .group_by(Event.match)).all())
            states = self.session.execute(
                select(Conference.state, func.count()).group_by(Conference.state)).all()
        except SQLAlchemyError:
            self.session.rollback()
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        events = GaugeMetricFamily("confhook_events_needing_attention",
                                   "Stored events not matched to a conference, by match.",
                                   labels=["match"])
        for match in ("unmatched", "conflict", "invalid"):
            events.add_metric([match], counts.get(match, 0))
        yield events
        conferences = GaugeMetricFamily("confhook_conferences", "Conferences by state.",
                                        labels=["state"])
        for state, count in states:
            conferences.add_metric([state], count)
        yield conferences


def exposition(session: Any, multiprocess: bool) -> bytes:
    """The text exposition: every worker's samples (``multiprocess``: those of all workers,
    from ``PROMETHEUS_MULTIPROC_DIR``), plus the database's counts."""
    registry = CollectorRegistry()
    if multiprocess:
        MultiProcessCollector(registry)
    else:
        registry.register(_Process())  # type: ignore[arg-type]
    registry.register(_Database(session))  # type: ignore[arg-type]
    return generate_latest(registry)
