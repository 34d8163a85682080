"""The ingest benchmark's middle row: the service itself, with the storing left out.

The production app (``wsgi.py``: settings from the environment, JSON request logs, metrics,
request ids, key checks, parsing and validation) whose deliveries are parsed and then
answered ``204`` without touching the database. Set beside the baseline and the service, it
says how much of the gap is the request path and how much is the storing. A benchmark
fixture only: it acknowledges what it does not store.
"""

from __future__ import annotations

from app import events, groupcommit
from wsgi import app


class _ParseOnly:
    """Stands in for the group committer (``app/groupcommit.py``) on either database."""

    def receive(self, job: groupcommit.Job, timeout_s: float = 10.0) -> events.Outcome:
        return events.Outcome(0, job.event.event_type, False, "unmatched", None, None)


app.extensions[groupcommit.EXTENSION] = _ParseOnly()
