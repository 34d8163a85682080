"""The ingest benchmark's middle row: the service itself, with the storing left out.

The production app (``wsgi.py``: settings from the environment, JSON request logs, metrics,
request ids, key checks, reading and interpreting) whose deliveries are interpreted and then
answered ``204`` without touching the database. Set beside the floor and the service, it says
how much of the gap is the request path and how much is the storing. A benchmark fixture
only: it acknowledges what it does not store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app import delivery
from app.delivery.filing import Outcome
from wsgi import app


class _InterpretOnly:
    """Stands in for the store (``app/delivery/sqlite.py``, ``postgres.py``)."""

    def run(self, work: Callable[..., Any]) -> Outcome:
        return Outcome(0, "conference-member", False, "unmatched", None, None)


delivery.intake(app).store = _InterpretOnly()
