"""Refused deliveries (a wrong key, not a delivery at all), counted per minute and reason.

Counts are kept in memory and written at most every ``CONFHOOK_REJECTION_FLUSH_MS``, so a
flood of refused requests never becomes a flood of writes competing with real events.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.db import upsert
from app.models import RejectedDelivery, utcnow

log = logging.getLogger(__name__)


def count_rejection(session: Session, reason: str, count: int = 1,
                    at: datetime | None = None) -> None:
    """Count ``count`` refused deliveries in the minute of ``at``; the caller commits."""
    now = at or utcnow()
    minute = now.replace(second=0, microsecond=0)
    table = RejectedDelivery.__table__
    session.execute(upsert(session, table).values(
        minute=minute, reason=reason, count=count, last_at=now,
    ).on_conflict_do_update(
        index_elements=[table.c.minute, table.c.reason],
        set_={"count": table.c.count + count, "last_at": now},
    ))


class RejectionCounter:
    """Counts refused deliveries in memory and writes them at most every ``interval_s``.

    A flood of deliveries with a wrong key must not become a flood of database writes
    competing with real events. Counts are statistics: at worst a crash loses the last
    second's; a failed write keeps them for the next try, and never changes the answer.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.lock = threading.Lock()
        self.pending: dict[tuple[datetime, str], list[Any]] = {}
        self.flushed_at = 0.0

    def add(self, reason: str) -> None:
        now = utcnow()
        key = (now.replace(second=0, microsecond=0), reason)
        with self.lock:
            entry = self.pending.setdefault(key, [0, now])
            entry[0] += 1
            entry[1] = now

    def flush_if_due(self, new_session: Any) -> None:
        with self.lock:
            if not self.pending or time.monotonic() - self.flushed_at < self.interval_s:
                return
            batch, self.pending = self.pending, {}
            self.flushed_at = time.monotonic()
        try:
            with new_session() as session:
                for (_, reason), (count, last) in sorted(batch.items()):
                    count_rejection(session, reason, count, last)
                session.commit()
        except SQLAlchemyError as exc:
            log.warning("could not record %d refused deliveries yet: %s",
                        sum(c for c, _ in batch.values()), type(exc).__name__)
            with self.lock:
                for key, (count, last) in batch.items():
                    entry = self.pending.setdefault(key, [0, last])
                    entry[0] += count

