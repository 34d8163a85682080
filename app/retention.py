"""Retention: purge (optionally archiving first) what is older than a cutoff, in batches.

Each batch is its own short transaction, so deliveries keep flowing while a purge runs (on
SQLite a writer waits for at most one batch). With an archive, a batch's rows are written and
flushed to the archive before the transaction that deletes them commits: a crash can leave a
row archived and not yet deleted (the next run archives it again), never deleted unarchived.

What goes:
- conferences that ended (``completed`` or ``failed``) before the cutoff, with their members
  and events;
- any other event first received before the cutoff (unmatched ones, or old events of a
  conference still open: its current view is kept in the conference and member rows);
- per-minute counts of rejected deliveries and failed sign-ins older than the cutoff.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.models import Conference, Event, Member, RejectedDelivery, SigninFailure
from app.represent import conference_json, event_json, member_json

ENDED = ("completed", "failed")


@dataclass
class PurgeReport:
    conferences: int = 0
    members: int = 0
    events: int = 0
    rejected_minutes: int = 0
    signin_minutes: int = 0
    batches: int = 0


class Archive:
    """NDJSON lines ``{"kind": "conference"|"event", ...}``, flushed to disk per batch."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream

    def write(self, kind: str, body: dict[str, Any]) -> None:
        self.stream.write(json.dumps({"kind": kind, **body}, separators=(",", ":"),
                                     ensure_ascii=False).encode() + b"\n")

    def sync(self) -> None:
        self.stream.flush()
        fileno = getattr(self.stream, "fileno", None)
        if fileno is not None:
            with suppress(OSError, ValueError):  # not every stream is a file
                os.fsync(fileno())


def _ended_before(cutoff: datetime) -> Any:
    return (Conference.state.in_(ENDED)
            & (func.coalesce(Conference.completed_time, Conference.updated_at) < cutoff))


def count(session: Session, cutoff: datetime) -> PurgeReport:
    """What :func:`purge` would remove now, without removing anything."""
    ended = select(Conference.id).where(_ended_before(cutoff))
    return PurgeReport(
        conferences=session.scalar(select(func.count()).select_from(ended.subquery())) or 0,
        members=session.scalar(select(func.count()).select_from(Member).where(
            Member.conference_pk.in_(ended))) or 0,
        events=session.scalar(select(func.count()).select_from(Event).where(
            Event.conference_pk.in_(ended) | (Event.first_received_at < cutoff))) or 0,
        rejected_minutes=session.scalar(select(func.count()).select_from(RejectedDelivery)
                                        .where(RejectedDelivery.minute < cutoff)) or 0,
        signin_minutes=session.scalar(select(func.count()).select_from(SigninFailure)
                                      .where(SigninFailure.minute < cutoff)) or 0,
    )


def purge(new_session: Callable[[], Session], cutoff: datetime, batch_size: int = 500,
          archive: Archive | None = None,
          progress: Callable[[PurgeReport], None] | None = None) -> PurgeReport:
    """Remove everything older than ``cutoff``, ``batch_size`` rows at a time."""
    report = PurgeReport()

    def batch(work: Callable[[Session], bool]) -> None:
        while True:
            with new_session() as session:
                more = work(session)
                if archive is not None:
                    archive.sync()
                session.commit()
            report.batches += 1
            if progress is not None:
                progress(report)
            if not more:
                return

    def conferences(session: Session) -> bool:
        ids = list(session.scalars(select(Conference.id).where(_ended_before(cutoff))
                                   .order_by(Conference.id).limit(max(1, batch_size // 50))))
        if not ids:
            return False
        if archive is not None:
            members = {}
            for member in session.scalars(select(Member).where(Member.conference_pk.in_(ids))
                                          .order_by(Member.joined_at, Member.id)):
                members.setdefault(member.conference_pk, []).append(member_json(member))
            for conference in session.scalars(select(Conference).where(Conference.id.in_(ids))):
                archive.write("conference", {**conference_json(conference),
                                             "members": members.get(conference.id, [])})
            for event in session.scalars(select(Event).where(Event.conference_pk.in_(ids))
                                         .order_by(Event.id)):
                archive.write("event", event_json(event))
        report.events += session.execute(
            delete(Event).where(Event.conference_pk.in_(ids))).rowcount or 0
        report.members += session.execute(
            delete(Member).where(Member.conference_pk.in_(ids))).rowcount or 0
        report.conferences += session.execute(
            delete(Conference).where(Conference.id.in_(ids))).rowcount or 0
        # A delivery that committed an event of one of these conferences after the events'
        # delete (PostgreSQL: the conference's delete waited for it) had its link cleared by
        # ON DELETE SET NULL. It is newer than the cutoff: keep it, as unmatched.
        session.execute(update(Event).where(Event.conference_pk.is_(None),
                                            Event.match == "matched")
                        .values(match="unmatched", match_reason="conference_purged"))
        return True

    def old_events(session: Session) -> bool:
        query = (select(Event).where(Event.first_received_at < cutoff)
                 .order_by(Event.first_received_at, Event.id).limit(batch_size))
        if archive is not None:
            rows = list(session.scalars(query))
            for event in rows:
                archive.write("event", event_json(event))
            ids = [event.id for event in rows]
        else:
            ids = list(session.scalars(query.with_only_columns(Event.id)))
        if not ids:
            return False
        report.events += session.execute(delete(Event).where(Event.id.in_(ids))).rowcount or 0
        return len(ids) == batch_size

    def counters(session: Session) -> bool:
        report.rejected_minutes += session.execute(
            delete(RejectedDelivery).where(RejectedDelivery.minute < cutoff)).rowcount or 0
        report.signin_minutes += session.execute(
            delete(SigninFailure).where(SigninFailure.minute < cutoff)).rowcount or 0
        return False

    batch(conferences)
    batch(old_events)
    batch(counters)
    return report
