"""Read-side queries: filtered, keyset-paginated lists of events and conferences, and stats.

Lists page by keyset (the last row's sort key), never OFFSET, so a page costs the same on
the millionth row as on the first; every filter has an index that serves it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, case, exists, func, select, tuple_
from sqlalchemy.orm import Session

from app.models import (
    CHANNEL_BITS,
    Conference,
    Event,
    Member,
    RejectedDelivery,
    match_in,
    unfiled,
    utcnow,
)

MAX_LIMIT = 1000


class InvalidQuery(Exception):
    """A query parameter is wrong; ``field`` names it."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


# -- cursors ----------------------------------------------------------------------------------

def fingerprint(params: dict[str, Any]) -> str:
    """A short hash of a query's filters and order, so a cursor only fits its own query."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def encode_cursor(query: str, when: datetime, ident: int | str) -> str:
    raw = json.dumps([query, when.isoformat(), ident], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, query: str, id_type: type) -> tuple[datetime, Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        got, when, ident = json.loads(base64.urlsafe_b64decode(padded.encode()))
        # What a forged cursor holds is bounded: a 64-bit id, a short string id.
        if id_type is int and not (type(ident) is int and 0 <= ident < 2**63):
            raise ValueError("id out of range")
        if id_type is str and not (isinstance(ident, str) and 0 < len(ident) <= 64
                                   and ident.isascii() and ident.isprintable()):
            raise ValueError("not an id")
        key = (datetime.fromisoformat(when), ident)
        if key[0].tzinfo is not None:
            raise ValueError("times in cursors are naive UTC")
    except (ValueError, TypeError, UnicodeDecodeError):
        raise InvalidQuery("cursor", "not a cursor this endpoint gave") from None
    if got != query:
        raise InvalidQuery("cursor", "this cursor belongs to another query (other filters "
                                     "or order)")
    return key


@dataclass(frozen=True)
class Page:
    items: list[Any]
    next_key: tuple[datetime, Any] | None


def keyset(session: Session, stmt: Select[Any], time_col: Any, id_col: Any,
           descending: bool, after: tuple[datetime, Any] | None, limit: int) -> Page:
    """Return one page of ``stmt`` ordered by (time, id), starting after ``after``."""
    if after is not None:
        position = tuple_(time_col, id_col)
        bound = tuple_(*after)
        stmt = stmt.where(position < bound if descending else position > bound)
    order = (time_col.desc(), id_col.desc()) if descending else (time_col, id_col)
    rows = list(session.scalars(stmt.order_by(*order).limit(limit + 1)))
    if len(rows) <= limit:
        return Page(rows, None)
    rows = rows[:limit]
    last = rows[-1]
    return Page(rows, (getattr(last, time_col.key), getattr(last, id_col.key)))


# -- events -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class EventFilter:
    conference_pk: str | None = None
    event_types: tuple[str, ...] = ()
    tag: str | None = None
    member_id: str | None = None
    call_id: str | None = None
    matches: tuple[str, ...] = ()
    channel: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    unknown_type: bool | None = None

    def where(self) -> list[Any]:
        clauses: list[Any] = []
        if self.conference_pk is not None:
            clauses.append(Event.conference_pk == self.conference_pk)
        if self.event_types:
            clauses.append(Event.event_type.in_(self.event_types))
        if self.tag is not None:
            clauses.append(Event.tag == self.tag)
        if self.member_id is not None:
            clauses.append(Event.member_id == self.member_id)
        if self.call_id is not None:
            clauses.append(Event.call_id == self.call_id)
        if self.matches:
            clauses.extend(match_in(self.matches))
        if self.channel is not None:
            clauses.append(Event.channels.op("&")(CHANNEL_BITS[self.channel]) != 0)
        if self.since is not None:
            clauses.append(Event.occurred_at >= self.since)
        if self.until is not None:
            clauses.append(Event.occurred_at < self.until)
        if self.unknown_type is not None:
            clauses.append(Event.unknown_type.is_(self.unknown_type))
        return clauses


def events_page(session: Session, flt: EventFilter, *, descending: bool = False,
                after: tuple[datetime, int] | None = None, limit: int = 100) -> Page:
    stmt = select(Event).where(*flt.where())
    return keyset(session, stmt, Event.occurred_at, Event.id, descending, after, limit)


def iter_events(session: Session, flt: EventFilter, *, descending: bool = False,
                batch: int = 1000) -> Iterator[Event]:
    """Yield every event matching ``flt``, a batch at a time (constant memory)."""
    after = None
    while True:
        page = events_page(session, flt, descending=descending, after=after, limit=batch)
        yield from page.items
        session.expunge_all()  # keep the identity map from growing with the export
        if page.next_key is None:
            return
        after = page.next_key


# -- conferences ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConferenceFilter:
    tag: str | None = None
    states: tuple[str, ...] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None
    completed_after: datetime | None = None
    completed_before: datetime | None = None
    has_conflicts: bool | None = None
    has_unmatched: bool | None = None

    def where(self) -> list[Any]:
        clauses: list[Any] = []
        if self.tag is not None:
            clauses.append(Conference.tag == self.tag)
        if self.states:
            clauses.append(Conference.state.in_(self.states))
        if self.created_after is not None:
            clauses.append(Conference.created_at >= self.created_after)
        if self.created_before is not None:
            clauses.append(Conference.created_at < self.created_before)
        if self.completed_after is not None:
            clauses.append(Conference.completed_time >= self.completed_after)
        if self.completed_before is not None:
            clauses.append(Conference.completed_time < self.completed_before)
        if self.has_conflicts is not None:
            conflicts = exists().where(Event.conference_pk == Conference.id,
                                       Event.match == "conflict")
            clauses.append(conflicts if self.has_conflicts else ~conflicts)
        if self.has_unmatched is not None:
            # Events that name this conference's provider id but were not attached to it
            # (they came through the shared URL before the conference was known).
            unmatched = exists().where(Event.conference_id == Conference.conference_id,
                                       Event.match == "unmatched", unfiled())
            clauses.append(unmatched if self.has_unmatched else ~unmatched)
        return clauses


def conferences_page(session: Session, flt: ConferenceFilter, *, descending: bool = True,
                     after: tuple[datetime, str] | None = None, limit: int = 100) -> Page:
    stmt = select(Conference).where(*flt.where())
    return keyset(session, stmt, Conference.created_at, Conference.id, descending, after,
                  limit)


@dataclass
class ConferenceCounts:
    total: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    deliveries: int = 0
    duplicates: int = 0
    fallbacks: int = 0
    conflicts: int = 0
    invalid: int = 0
    unknown: int = 0


def conference_counts(session: Session, conference_pk: str) -> ConferenceCounts:
    """Count a conference's events by type, with deliveries, duplicates and fallbacks."""
    fallback = CHANNEL_BITS["fallback"]
    rows = session.execute(
        select(Event.event_type, func.count(), func.sum(Event.deliveries),
               func.sum(case((Event.channels.op("&")(fallback) != 0, 1), else_=0)),
               func.sum(case((Event.match == "conflict", 1), else_=0)),
               func.sum(case((Event.match == "invalid", 1), else_=0)),
               func.sum(case((Event.unknown_type.is_(True), 1), else_=0)))
        .where(Event.conference_pk == conference_pk).group_by(Event.event_type))
    counts = ConferenceCounts()
    for event_type, n, deliveries, fallbacks, conflicts, invalid, unknown in rows:
        counts.by_type[event_type] = n
        counts.total += n
        counts.deliveries += deliveries or 0
        counts.fallbacks += fallbacks or 0
        counts.conflicts += conflicts or 0
        counts.invalid += invalid or 0
        counts.unknown += unknown or 0
    counts.duplicates = counts.deliveries - counts.total
    return counts


@dataclass
class MemberHistory:
    member: Member
    changes: list[dict[str, Any]]


def member_histories(session: Session, conference: Conference) -> list[MemberHistory]:
    """Each member with the state, mute and hold its events gave, in event-time order."""
    members = list(session.scalars(select(Member).where(
        Member.conference_pk == conference.id).order_by(Member.joined_at, Member.id)))
    changes: dict[str, list[dict[str, Any]]] = {m.member_id: [] for m in members}
    rows = session.execute(
        select(Event.member_id, Event.occurred_at, Event.status, Event.mute, Event.hold,
               Event.active_members)
        .where(Event.conference_pk == conference.id, Event.event_type == "conference-member",
               Event.match == "matched")
        .order_by(Event.occurred_at, Event.id))
    for member_id, at, state, mute, hold, active in rows:
        if member_id in changes:
            changes[member_id].append({"time": at, "state": state, "mute": mute,
                                       "hold": hold, "activeMembers": active})
    return [MemberHistory(m, changes[m.member_id]) for m in members]


# -- stats ------------------------------------------------------------------------------------

@dataclass
class Stats:
    since: datetime
    until: datetime
    received: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    fallbacks: int = 0
    unmatched: int = 0
    conflicts: int = 0
    invalid: int = 0
    unknown: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    conferences_created: int = 0
    conferences_failed: int = 0

    @property
    def minutes(self) -> float:
        return max((self.until - self.since).total_seconds() / 60, 1 / 60)


def stats(session: Session, since: datetime | None, until: datetime | None) -> Stats:
    """Counts over a window of first receipt: events, duplicates, fallbacks, rejections."""
    until = until or utcnow()
    try:
        since = since or until - timedelta(hours=1)
    except OverflowError:
        raise InvalidQuery("until", "too early: the window would start before year 1") from None
    if since >= until:
        raise InvalidQuery("since", "must be before until")
    result = Stats(since=since, until=until)
    window = and_(Event.first_received_at >= since, Event.first_received_at < until)
    fallback = CHANNEL_BITS["fallback"]
    rows = session.execute(
        select(Event.event_type, func.count(), func.sum(Event.deliveries - 1),
               func.sum(case((Event.channels.op("&")(fallback) != 0, 1), else_=0)),
               func.sum(case((Event.match == "unmatched", 1), else_=0)),
               func.sum(case((Event.match == "conflict", 1), else_=0)),
               func.sum(case((Event.match == "invalid", 1), else_=0)),
               func.sum(case((Event.unknown_type.is_(True), 1), else_=0)))
        .where(window).group_by(Event.event_type))
    for event_type, n, duplicates, fallbacks, unmatched, conflicts, invalid, unknown in rows:
        result.by_type[event_type] = n
        result.received += n
        result.duplicates += duplicates or 0
        result.fallbacks += fallbacks or 0
        result.unmatched += unmatched or 0
        result.conflicts += conflicts or 0
        result.invalid += invalid or 0
        result.unknown += unknown or 0
    for reason, n in session.execute(
            select(RejectedDelivery.reason, func.sum(RejectedDelivery.count))
            .where(RejectedDelivery.minute >= since.replace(second=0, microsecond=0),
                   RejectedDelivery.minute < until)
            .group_by(RejectedDelivery.reason)):
        result.rejected[reason] = int(n or 0)
    created = and_(Conference.created_at >= since, Conference.created_at < until)
    result.conferences_created = session.scalar(
        select(func.count()).select_from(Conference).where(created)) or 0
    result.conferences_failed = session.scalar(
        select(func.count()).select_from(Conference).where(
            created, Conference.state == "failed")) or 0
    return result


# -- dashboard --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Minute:
    start: datetime
    total: int
    fallbacks: int


def per_minute(session: Session, minutes: int = 60) -> list[Minute]:
    """Events first received in each of the last ``minutes`` minutes (empty minutes too)."""
    end = utcnow().replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(minutes=minutes)
    if session.get_bind().dialect.name == "postgresql":
        bucket: Any = func.date_trunc("minute", Event.first_received_at)
    else:
        bucket = func.strftime("%Y-%m-%d %H:%M:00", Event.first_received_at)
    fallback = CHANNEL_BITS["fallback"]
    rows = session.execute(
        select(bucket, func.count(),
               func.sum(case((Event.channels.op("&")(fallback) != 0, 1), else_=0)))
        .where(Event.first_received_at >= start, Event.first_received_at < end)
        .group_by(bucket))
    counts: dict[datetime, tuple[int, int]] = {}
    for when, total, fallbacks in rows:
        if isinstance(when, str):
            when = datetime.fromisoformat(when)
        counts[when.replace(tzinfo=None)] = (total, fallbacks or 0)
    return [Minute(start + timedelta(minutes=i),
                   *counts.get(start + timedelta(minutes=i), (0, 0)))
            for i in range(minutes)]


def last_received(session: Session) -> datetime | None:
    return session.scalar(select(func.max(Event.first_received_at)))


def problem_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Event.match, func.count()).where(unfiled())
                           .group_by(Event.match))
    counts = {"unmatched": 0, "conflict": 0, "invalid": 0}
    counts.update({match: n for match, n in rows})
    return counts
