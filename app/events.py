"""Events: a delivery becomes one normalised, de-duplicated, matched row, and updates views.

The provider sends no event id, so an event is recognised by its content: the dedup key is a
hash of the normalised fields, the same whether the event came by GET or POST, through the
callback or the fallback URL. Views (conference state, members) are derived from event
*times*, with conditional updates, so the arrival order does not matter and two instances
recording at once cannot undo each other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import Boolean, Integer, bindparam, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from app.db import upsert
from app.keys import SHARED, key_matches
from app.models import (
    CHANNEL_BITS,
    PROVIDER_ID_MAX_LENGTH,
    TAG_MAX_LENGTH,
    Conference,
    Event,
    Member,
    RejectedDelivery,
    utcnow,
)
from app.prepared import Runner

log = logging.getLogger(__name__)

KNOWN_TYPES = ("conference", "conference-member", "conference-playback", "conference-speak")
CONFERENCE_STATUSES = ("created", "completed")
MEMBER_STATES = ("active", "completed")
MEDIA_STATUSES = ("started", "done")
EVENT_TYPE_MAX_LENGTH = 64
MAX_FIELDS = 200
MAX_DEPTH = 16

TRUE = ("true", "1", "yes")
FALSE = ("false", "0", "no")


class Rejected(Exception):
    """A delivery that is refused and stores nothing; ``reason`` is what gets counted."""

    def __init__(self, status: int, reason: str, message: str,
                 details: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.details = details or {}


@dataclass(frozen=True)
class Parsed:
    event_type: str
    unknown_type: bool
    conference_id: str | None
    member_id: str | None
    call_id: str | None
    status: str | None
    tag: str | None
    active_members: int | None
    mute: bool | None
    hold: bool | None
    event_time: datetime | None
    payload: dict[str, Any]
    dedup_key: str


@dataclass(frozen=True)
class Outcome:
    event_id: int
    event_type: str
    duplicate: bool
    match: str
    match_reason: str | None
    conference_pk: str | None


# -- parsing ----------------------------------------------------------------------------------

def parse_time(value: Any, field: str) -> datetime | None:
    """Parse an ISO 8601 time as the provider writes it; return naive UTC."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise _invalid(field, "must be an ISO 8601 time")
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise _invalid(field, "must be an ISO 8601 time") from None
    if parsed.tzinfo is not None:
        # The provider writes UTC or an offset; a time without one is taken as UTC.
        try:
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:
            raise _invalid(field, "is out of range in UTC") from None
    return parsed


def _invalid(field: str, problem: str) -> Rejected:
    return Rejected(422, "invalid", f"invalid event: {field} {problem}", {field: problem})


def _string(fields: Mapping[str, Any], name: str, limit: int = PROVIDER_ID_MAX_LENGTH
            ) -> str | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _invalid(name, "must be a string")
    text = str(value)
    if len(text) > limit:
        raise _invalid(name, f"must be at most {limit} characters")
    return text


def _bool(fields: Mapping[str, Any], name: str) -> bool | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise _invalid(name, "must be true or false")


def _int(fields: Mapping[str, Any], name: str, hi: int = 100_000) -> int | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise _invalid(name, f"must be an integer from 0 to {hi}")
    return value


def _choice(value: str | None, name: str, choices: Sequence[str]) -> str | None:
    if value is not None and value not in choices:
        raise _invalid(name, f"must be one of {', '.join(choices)}")
    return value


def check_payload(payload: Any) -> dict[str, Any]:
    """Check that a delivery's fields are a flat-enough JSON object we can store anywhere."""
    if not isinstance(payload, dict):
        raise Rejected(422, "invalid", "invalid event: the body must be a JSON object",
                       {"body": "not an object"})
    if len(payload) > MAX_FIELDS:
        raise Rejected(422, "invalid", f"invalid event: more than {MAX_FIELDS} fields",
                       {"body": "too many fields"})
    _check_value(payload, 0)
    return payload


def _check_value(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise Rejected(422, "invalid", "invalid event: nested too deeply",
                       {"body": f"more than {MAX_DEPTH} levels"})
    if isinstance(value, str):
        # PostgreSQL cannot store NUL in text or JSON; no real event carries one.
        if "\x00" in value:
            raise Rejected(422, "invalid", "invalid event: NUL character in a value",
                           {"body": "NUL character"})
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_value(key, depth + 1)
            _check_value(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_value(item, depth + 1)


def parse(fields: Any) -> Parsed:
    """Normalise one delivery's fields (from JSON, a form or a query string) into an event."""
    payload = check_payload(fields)
    event_type = payload.get("eventType")
    if not isinstance(event_type, str) or not event_type.strip():
        raise _invalid("eventType", "is required")
    event_type = event_type.strip()
    if len(event_type) > EVENT_TYPE_MAX_LENGTH:
        raise _invalid("eventType", f"must be at most {EVENT_TYPE_MAX_LENGTH} characters")

    conference_id = _string(payload, "conferenceId")
    tag = _string(payload, "tag", TAG_MAX_LENGTH)
    member_id = call_id = status = None
    active_members = None
    mute = hold = None
    unknown = event_type not in KNOWN_TYPES

    if event_type == "conference":
        status = _choice(_string(payload, "status"), "status", CONFERENCE_STATUSES)
        created = parse_time(payload.get("createdTime"), "createdTime")
        completed = parse_time(payload.get("completedTime"), "completedTime")
        event_time = completed if status == "completed" and completed else created
        event_time = event_time or parse_time(payload.get("time"), "time")
    elif event_type == "conference-member":
        member_id = _string(payload, "memberId")
        call_id = _string(payload, "callId")
        status = _choice(_string(payload, "state"), "state", MEMBER_STATES)
        active_members = _int(payload, "activeMembers")
        mute = _bool(payload, "mute")
        hold = _bool(payload, "hold")
        event_time = parse_time(payload.get("time"), "time")
    elif event_type in ("conference-playback", "conference-speak"):
        status = _choice(_string(payload, "status"), "status", MEDIA_STATUSES)
        event_time = parse_time(payload.get("time"), "time")
    else:
        # Unknown types are kept whole; read what common fields they have, leniently.
        member_id = _lenient_string(payload, "memberId")
        call_id = _lenient_string(payload, "callId")
        status = _lenient_string(payload, "status") or _lenient_string(payload, "state")
        event_time = _lenient_time(payload)

    if unknown:
        canonical: Any = ["unknown", event_type, sorted(
            (str(k), _canonical_value(v)) for k, v in payload.items())]
    else:
        canonical = [event_type, conference_id, member_id, call_id, status, tag,
                     active_members, mute, hold,
                     event_time.isoformat() if event_time else None]
    dedup_key = hashlib.sha256(
        json.dumps(canonical, separators=(",", ":"), ensure_ascii=True).encode()).hexdigest()

    return Parsed(event_type=event_type, unknown_type=unknown, conference_id=conference_id,
                  member_id=member_id, call_id=call_id, status=status, tag=tag,
                  active_members=active_members, mute=mute, hold=hold,
                  event_time=event_time, payload=payload, dedup_key=dedup_key)


def _lenient_string(payload: Mapping[str, Any], name: str) -> str | None:
    value = payload.get(name)
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
        return str(value)[:PROVIDER_ID_MAX_LENGTH]
    return None


def _lenient_time(payload: Mapping[str, Any]) -> datetime | None:
    for name in ("time", "eventTime", "completedTime", "createdTime"):
        try:
            value = parse_time(payload.get(name), name)
        except Rejected:
            continue
        if value is not None:
            return value
    return None


def _canonical_value(value: Any) -> str:
    # GET delivers every value as a string: make POST's JSON values compare equal to them.
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# -- recording --------------------------------------------------------------------------------

def authenticate(secrets: Sequence[str], subject: str, key: str) -> None:
    """Refuse a delivery whose URL key was not issued for ``subject`` by us."""
    if not key_matches(secrets, subject, key):
        raise Rejected(401, "bad_key", "unknown callback URL or key")


def receive(session: Session, *, subject: str, channel: str, method: str,
            fields: Any) -> Outcome:
    """Parse, match and record one authenticated delivery; the caller commits.

    ``subject`` is the conference id the URL names, or ``shared``. Raises :class:`Rejected`
    for a delivery that must not be stored.
    """
    event = parse(fields)
    run = Runner.of(session)
    try:
        return record(run, subject=subject, channel=channel, method=method, event=event)
    finally:
        run.close()


def record(run: Runner, *, subject: str, channel: str, method: str, event: Parsed
           ) -> Outcome:
    """Match and record one parsed delivery (see :func:`receive`) in ``run``'s transaction.

    The caller commits.
    """
    conference, match, reason = _match(run, subject, event)
    now = utcnow()
    upsert_event = run.prepared("event-upsert", lambda: _event_upsert(run.dialect.name))
    row = run.execute(upsert_event, {
        "conference_pk": conference.id if conference else None,
        "event_type": event.event_type, "unknown_type": event.unknown_type,
        "conference_id": event.conference_id, "member_id": event.member_id,
        "call_id": event.call_id, "status": event.status, "tag": event.tag,
        "active_members": event.active_members, "mute": event.mute, "hold": event.hold,
        "event_time": event.event_time, "occurred_at": event.event_time or now,
        "payload": event.payload, "dedup_key": event.dedup_key, "first_received_at": now,
        "last_received_at": now, "deliveries": 1, "channels": CHANNEL_BITS[channel],
        "method": method, "match": match, "match_reason": reason,
    }).fetchone()
    event_id, deliveries, row_match, row_reason, row_conference = row
    duplicate = deliveries > 1
    if not duplicate and conference is not None and match == "matched":
        _apply(run, conference.id, event, event.event_time or now)
    return Outcome(event_id=event_id, event_type=event.event_type, duplicate=duplicate,
                   match=row_match, match_reason=row_reason, conference_pk=row_conference)


# The delivery path runs these for every event: built once, with bound parameters, so that
# SQLAlchemy compiles each once per dialect instead of building a statement per delivery.
_CONF = Conference.__table__
_EVENTS = Event.__table__
_MATCH_COLUMNS = (_CONF.c.id, _CONF.c.conference_id, _CONF.c.tag)
_BY_PK = select(*_MATCH_COLUMNS).where(_CONF.c.id == bindparam("pk"))
_BY_PROVIDER_ID = select(*_MATCH_COLUMNS).where(_CONF.c.conference_id == bindparam("cid"))
_ID_TAKEN = select(_CONF.c.id).where(_CONF.c.conference_id == bindparam("cid"),
                                     _CONF.c.id != bindparam("pk"))
_FILL_ID = update(_CONF).where(_CONF.c.id == bindparam("pk"), _CONF.c.conference_id.is_(None)
                               ).values(conference_id=bindparam("cid"))


def _event_upsert(dialect: str) -> Any:
    """INSERT an event, or count one more delivery of it (same dedup key)."""
    columns = [c.name for c in _EVENTS.c if c.name != "id"]
    stmt = _insert(_EVENTS, dialect).values({name: bindparam(name) for name in columns})
    return stmt.on_conflict_do_update(
        index_elements=[_EVENTS.c.dedup_key],
        set_={"deliveries": _EVENTS.c.deliveries + 1,
              "last_received_at": stmt.excluded.last_received_at,
              "channels": _EVENTS.c.channels.op("|")(stmt.excluded.channels)},
    ).returning(_EVENTS.c.id, _EVENTS.c.deliveries, _EVENTS.c.match,
                _EVENTS.c.match_reason, _EVENTS.c.conference_pk)


def _insert(table: Any, dialect: str) -> Any:
    """An INSERT that takes ON CONFLICT, for ``dialect``."""
    return (postgresql if dialect == "postgresql" else sqlite).insert(table)


class ConferenceRow(NamedTuple):
    id: str
    conference_id: str | None
    tag: str | None


def _row(values: Any) -> ConferenceRow | None:
    return None if values is None else ConferenceRow(*values)


def _match(run: Runner, subject: str, event: Parsed) -> tuple[Any, str, str | None]:
    """Decide which conference an event belongs to, and whether it agrees with it.

    Returns the conference as a row of ``id``, ``conference_id`` and ``tag`` (or None).
    """
    if subject == SHARED:
        if event.conference_id is None:
            return None, "unmatched", "no_conference_id"
        conference = _row(run.execute(run.prepared("by-provider-id", lambda: _BY_PROVIDER_ID),
                                      {"cid": event.conference_id}).fetchone())
        if conference is None:
            return None, "unmatched", "unknown_conference"
    else:
        conference = _row(run.execute(run.prepared("by-pk", lambda: _BY_PK),
                                      {"pk": subject}).fetchone())
        if conference is None:
            return None, "unmatched", "conference_not_found"
        if event.conference_id is not None:
            if conference.conference_id is None:
                # The callback outran the provider's 201: the URL key vouches for the
                # conference, so take the id from the event, unless another conference has it.
                # (The create may have filled it in since we read the row: not "another".)
                ids = {"pk": conference.id, "cid": event.conference_id}
                taken = run.execute(run.prepared("id-taken", lambda: _ID_TAKEN), ids).fetchone()
                if taken is not None:
                    return conference, "conflict", "conference_id_taken"
                run.execute(run.prepared("fill-id", lambda: _FILL_ID), ids)
                conference = _row(run.execute(run.prepared("by-pk", lambda: _BY_PK),
                                              {"pk": conference.id}).fetchone())
            if conference.conference_id != event.conference_id:
                return conference, "conflict", "conference_id_mismatch"
    if event.tag is not None and event.tag != conference.tag:
        return conference, "conflict", "tag_mismatch"
    return conference, "matched", None


def _one_of(column: Any, values: Sequence[str]) -> ColumnElement[Any]:
    """``column IN (values)`` as ORs of constants: no expanding parameter to process per run."""
    return or_(*(column == value for value in values))


def _later(column: Any, value: datetime) -> ColumnElement[Any]:
    return case((column.is_(None) | (column < value), value), else_=column)


def _earlier(column: Any, value: datetime) -> ColumnElement[Any]:
    return case((column.is_(None) | (column > value), value), else_=column)


def apply(session: Session, conference_pk: str, event: Parsed, at: datetime) -> None:
    """Fold a newly stored, matched event into its conference's and member's views.

    Every update is conditional on the times already recorded, so applying events in any
    order gives the same view, and a late ``active`` never reopens a ``completed`` conference.
    """
    run = Runner.of(session)
    try:
        _apply(run, conference_pk, event, at)
    finally:
        run.close()


# Parts of the statements below: built once, not per delivery (only a statement's first use
# compiles it).
_THIS = _CONF.c.id == bindparam("pk")
_AT = bindparam("at", type_=_CONF.c.last_event_at.type)
_CREATED = bindparam("created", type_=_CONF.c.created_time.type)


def _apply(run: Runner, conference_pk: str, event: Parsed, at: datetime) -> None:
    conf, this, at_ = _CONF, _THIS, _AT
    params: dict[str, Any] = {"pk": conference_pk, "at": at}
    if event.event_type == "conference-member":
        # One statement for the conference's part of a member event (the most common kind).
        # Every SET expression reads the row as it was, so the conditions agree.
        run.execute(run.prepared(("conf-member-event",), lambda: _member_event_update(at_)), {
            **params, "activate": event.status == "active", "active": event.active_members})
        if event.member_id is not None:
            _apply_member(run, conference_pk, event, at)
        return
    run.execute(run.prepared(("conf-last",), lambda: update(conf).where(this).values(
        last_event_at=_later(conf.c.last_event_at, at_))), params)

    if event.event_type == "conference":
        created_ = _CREATED
        if event.status == "created":
            created = parse_time(event.payload.get("createdTime"), "createdTime") or at
            run.execute(run.prepared(("conf-created-time",), lambda: update(conf).where(this)
                                    .values(created_time=_earlier(conf.c.created_time,
                                                                  created_))),
                            {**params, "created": created})
            run.execute(run.prepared(("conf-created",), lambda: update(conf).where(
                this, _one_of(conf.c.state, ("pending", "failed"))).values(state="created")),
                params)
        elif event.status == "completed":
            created = parse_time(event.payload.get("createdTime"), "createdTime")

            def completed() -> Any:
                values: dict[str, Any] = {
                    "state": "completed", "completed_time": at_, "active_members": 0,
                    "active_members_at": at_,
                }
                if created is not None:
                    values["created_time"] = _earlier(conf.c.created_time, created_)
                return update(conf).where(this, conf.c.state != "completed").values(**values)

            run.execute(run.prepared(("conf-completed", created is not None), completed),
                            {**params, "created": created})


def _member_event_update(at_: Any) -> Any:
    conf = _CONF
    activate = bindparam("activate", type_=Boolean())
    active = bindparam("active", type_=Integer())
    newer = active.is_not(None) & (conf.c.active_members_at.is_(None)
                                   | (conf.c.active_members_at < at_))
    return update(conf).where(conf.c.id == bindparam("pk")).values(
        last_event_at=_later(conf.c.last_event_at, at_),
        state=case((activate & _one_of(conf.c.state, ("pending", "failed", "created")), "active"),
                   else_=conf.c.state),
        active_members=case((newer, active), else_=conf.c.active_members),
        active_members_at=case((newer, at_), else_=conf.c.active_members_at),
    )


def _apply_member(run: Runner, conference_pk: str, event: Parsed, at: datetime) -> None:
    """Insert the member as this event describes it, or fold the event into the row.

    One statement per event, built once per shape of event (status, which fields it has)
    and dialect: a new member gets the values the event gives; an existing one takes each
    value only where the event is newer than what set it before.
    """
    shape = (event.status if event.status in ("active", "completed") else None,
             event.call_id is not None, event.mute is not None, event.hold is not None)
    # No parameter may be named like a column: an UPDATE would take it as one more SET.
    build = lambda: _member_upsert(run.dialect.name, *shape)  # noqa: E731
    run.execute(run.prepared(("member", *shape), build), {
        "pk": conference_pk, "member": event.member_id, "call": event.call_id, "at": at,
        "new_mute": event.mute, "new_hold": event.hold})


def _member_upsert(dialect: str, status: str | None, has_call: bool, has_mute: bool,
                   has_hold: bool) -> Any:
    members = Member.__table__
    c = members.c
    at_ = bindparam("at", type_=c.last_event_at.type)
    call = bindparam("call", type_=c.call_id.type)
    mute = bindparam("new_mute", type_=Boolean())
    hold = bindparam("new_hold", type_=Boolean())
    has_flags = has_mute or has_hold
    stmt = _insert(members, dialect).values(
        conference_pk=bindparam("pk"), member_id=bindparam("member"), call_id=call,
        state="completed" if status == "completed" else "active",
        joined_at=at_ if status == "active" else None,
        left_at=at_ if status == "completed" else None,
        mute=mute if has_mute else False, hold=hold if has_hold else False,
        status_at=at_ if has_flags else None, last_event_at=at_)
    changes: dict[str, Any] = {"last_event_at": _later(c.last_event_at, at_)}
    if has_call:
        changes["call_id"] = case((c.call_id.is_(None), call), else_=c.call_id)
    if status == "active":
        changes["joined_at"] = _earlier(c.joined_at, at_)
    elif status == "completed":
        changes["state"] = "completed"
        changes["left_at"] = _later(c.left_at, at_)
    if has_flags:
        newer = c.status_at.is_(None) | (c.status_at <= at_)
        changes["status_at"] = case((newer, at_), else_=c.status_at)
        if has_mute:
            changes["mute"] = case((newer, mute), else_=c.mute)
        if has_hold:
            changes["hold"] = case((newer, hold), else_=c.hold)
    return stmt.on_conflict_do_update(index_elements=[c.conference_pk, c.member_id],
                                      set_=changes)


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


# -- re-matching ------------------------------------------------------------------------------

@dataclass
class RematchReport:
    examined: int = 0
    matched: int = 0
    conflict: int = 0
    unmatched: int = 0
    remaining: int = 0


def rematch(session: Session, event: Event) -> tuple[str, str | None]:
    """Match a stored unmatched or conflicting event again; apply it if it now matches.

    An event that came through a conference's own URL is judged against that conference only
    (the URL key vouched for it); one from the shared URL is looked up by ``conferenceId``.
    The caller commits.
    """
    if event.match == "matched":
        return event.match, event.match_reason
    try:
        parsed = parse(event.payload)
    except Rejected:
        return event.match, event.match_reason
    subject = event.conference_pk or SHARED
    run = Runner.of(session)
    try:
        conference, match, reason = _match(run, subject, parsed)
    finally:
        run.close()
    table = Event.__table__
    session.execute(update(table).where(table.c.id == event.id, table.c.match != "matched")
                    .values(conference_pk=conference.id if conference else None,
                            match=match, match_reason=reason))
    if match == "matched" and conference is not None:
        apply(session, conference.id, parsed, event.occurred_at)
    session.refresh(event)
    return match, reason


def rematch_many(session: Session, kinds: Sequence[str], conference: Conference | None = None,
                 limit: int = 10_000) -> RematchReport:
    """Re-match up to ``limit`` events whose match is one of ``kinds``; the caller commits.

    With ``conference``: its own events, and the unattached ones that name its provider id.
    """
    report = RematchReport()
    base = select(Event).where(Event.match.in_(kinds))
    if conference is not None:
        own = Event.conference_pk == conference.id
        if conference.conference_id is not None:
            own = own | (Event.conference_pk.is_(None)
                         & (Event.conference_id == conference.conference_id))
        base = base.where(own)
    after = 0
    while report.examined < limit:
        batch = list(session.scalars(base.where(Event.id > after).order_by(Event.id)
                                     .limit(min(500, limit - report.examined))))
        if not batch:
            break
        for event in batch:
            after = event.id
            match, _ = rematch(session, event)
            report.examined += 1
            setattr(report, match, getattr(report, match) + 1)
        session.flush()
    report.remaining = session.scalar(
        select(func.count()).select_from(base.where(Event.id > after).subquery())) or 0
    return report


# -- reconciling with the provider -------------------------------------------------------------

def reconcile(session: Session, conference: Conference, remote: Mapping[str, Any],
              remote_members: Sequence[Mapping[str, Any]]) -> list[str]:
    """Bring a conference's view in line with the provider's own record of it.

    For when callbacks were lost. States only move forward, and mute/hold take the
    provider's current values; returns what changed, in words. The caller commits.
    """
    changes: list[str] = []
    now = utcnow()
    conf = Conference.__table__
    this = conf.c.id == conference.id
    state = remote.get("state")
    created = _remote_time(remote, "createdTime")
    completed = _remote_time(remote, "completedTime")
    if created is not None and conference.created_time is None:
        session.execute(update(conf).where(this).values(created_time=created))
        changes.append("createdTime")
    if state == "completed" and conference.state != "completed":
        session.execute(update(conf).where(this).values(
            state="completed", completed_time=completed or now, active_members=0,
            active_members_at=completed or now))
        changes.append(f"state {conference.state} -> completed")
    elif state == "active" and conference.state in ("pending", "failed", "created"):
        session.execute(update(conf).where(this).values(state="active"))
        changes.append(f"state {conference.state} -> active")
    elif state == "created" and conference.state in ("pending", "failed"):
        session.execute(update(conf).where(this).values(state="created"))
        changes.append(f"state {conference.state} -> created")
    active = remote.get("activeMembers")
    if isinstance(active, int) and not isinstance(active, bool) and state != "completed" \
            and active != conference.active_members:
        session.execute(update(conf).where(this).values(active_members=active,
                                                        active_members_at=now))
        changes.append(f"activeMembers {conference.active_members} -> {active}")
    known = {m.member_id: m for m in session.scalars(
        select(Member).where(Member.conference_pk == conference.id))}
    for item in remote_members:
        member_id = item.get("id")
        if not isinstance(member_id, str) or not member_id:
            continue
        changes.extend(_reconcile_member(session, conference.id, known.get(member_id), item,
                                         now))
    session.refresh(conference)
    return changes


def _remote_time(item: Mapping[str, Any], name: str) -> datetime | None:
    try:
        return parse_time(item.get(name), name)
    except Rejected:
        return None


def _reconcile_member(session: Session, conference_pk: str, member: Member | None,
                      item: Mapping[str, Any], now: datetime) -> list[str]:
    members = Member.__table__
    member_id = item["id"]
    call = item.get("call")
    call_id = call.rstrip("/").rsplit("/", 1)[-1] if isinstance(call, str) and call else None
    added, removed = _remote_time(item, "addedTime"), _remote_time(item, "removedTime")
    state = "completed" if item.get("state") == "completed" else "active"
    mute, hold = item.get("mute") is True, item.get("hold") is True
    if member is None:
        session.execute(upsert(session, members).values(
            conference_pk=conference_pk, member_id=member_id, call_id=call_id, state=state,
            joined_at=added, left_at=removed, mute=mute, hold=hold, status_at=now,
            last_event_at=None,
        ).on_conflict_do_nothing(index_elements=[members.c.conference_pk, members.c.member_id]))
        return [f"member {member_id} added"]
    this = (members.c.conference_pk == conference_pk) & (members.c.member_id == member_id)
    changes: list[str] = []
    values: dict[str, Any] = {}
    if state == "completed" and member.state != "completed":
        values.update(state="completed", left_at=removed or now)
        changes.append(f"member {member_id} left")
    if member.joined_at is None and added is not None:
        values["joined_at"] = added
    if (mute, hold) != (member.mute, member.hold):
        values.update(mute=mute, hold=hold, status_at=now)
        changes.append(f"member {member_id} mute={mute} hold={hold}")
    if values:
        session.execute(update(members).where(this).values(**values))
    return changes


# -- reading ----------------------------------------------------------------------------------

def channels_of(bits: int) -> list[str]:
    return [name for name, bit in CHANNEL_BITS.items() if bits & bit]
