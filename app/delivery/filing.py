"""Filing: which conference an event belongs to, its one row, and the views it updates.

An event is stored once per dedup key (an upsert counts the deliveries). The URL key names the
conference; the event's ``conferenceId`` and, on conference and member events, its ``tag``
must agree with it (playback and speak events carry the audio request's tag instead). Views
(conference state, members) are derived from event *times* with conditional updates, so the
arrival order does not matter and two instances filing at once cannot undo each other.
Events that match nothing, disagree, or could not be interpreted are kept, and can be filed
again later (:func:`rematch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Boolean, Integer, bindparam, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from app.delivery.interpret import Parsed, reinterpret
from app.keys import SHARED
from app.models import CHANNEL_BITS, Conference, Event, Member, utcnow
from app.statements import Runner


@dataclass(frozen=True)
class Outcome:
    event_id: int
    event_type: str
    duplicate: bool
    match: str
    match_reason: str | None
    conference_pk: str | None


def record(run: Runner, *, subject: str, channel: str, method: str, event: Parsed
           ) -> Outcome:
    """File one interpreted delivery in ``run``'s transaction; the caller commits.

    ``subject`` is the conference id the URL names, or ``shared``.
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
        "payload": event.payload, "raw": event.raw, "dedup_key": event.dedup_key,
        "first_received_at": now, "last_received_at": now, "deliveries": 1,
        "channels": CHANNEL_BITS[channel], "method": method, "match": match,
        "match_reason": reason,
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

    Returns the conference as a row of ``id``, ``conference_id`` and ``tag`` (or None), the
    match and its reason. An event that could not be interpreted is ``invalid`` whatever
    else is true of it, kept with the conference it names, and folded into no view.
    """
    conference, match, reason = _find(run, subject, event)
    if event.problem is not None:
        return conference, "invalid", event.problem[:64]
    return conference, match, reason


def _find(run: Runner, subject: str, event: Parsed) -> tuple[Any, str, str | None]:
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
    # Playback and speak events carry the audio request's tag, not the conference's.
    if event.tag is not None and event.tag != conference.tag and not event.is_media:
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
            created = event.created_time or at
            run.execute(run.prepared(("conf-created-time",), lambda: update(conf).where(this)
                                    .values(created_time=_earlier(conf.c.created_time,
                                                                  created_))),
                            {**params, "created": created})
            run.execute(run.prepared(("conf-created",), lambda: update(conf).where(
                this, _one_of(conf.c.state, ("pending", "failed"))).values(state="created")),
                params)
        elif event.status == "completed":
            created = event.created_time

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


# -- re-matching ------------------------------------------------------------------------------

@dataclass
class RematchReport:
    examined: int = 0
    matched: int = 0
    conflict: int = 0
    unmatched: int = 0
    invalid: int = 0
    remaining: int = 0


def rematch(session: Session, event: Event) -> tuple[str, str | None]:
    """File a stored unmatched, conflicting or invalid event again; apply it if it now
    matches.

    The event is interpreted again from what was received, so an invalid one that this
    version understands takes its normalised fields. An event that came through a
    conference's own URL is judged against that conference only (the URL key vouched for
    it); one from the shared URL is looked up by ``conferenceId``. The caller commits.
    """
    if event.match == "matched":
        return event.match, event.match_reason
    parsed = reinterpret(event.payload, event.raw, event.method)
    subject = event.conference_pk or SHARED
    run = Runner.of(session)
    try:
        conference, match, reason = _match(run, subject, parsed)
    finally:
        run.close()
    table = Event.__table__
    values: dict[str, Any] = {"conference_pk": conference.id if conference else None,
                              "match": match, "match_reason": reason}
    if event.match == "invalid" and parsed.problem is None:
        values.update(
            event_type=parsed.event_type, unknown_type=parsed.unknown_type,
            conference_id=parsed.conference_id, member_id=parsed.member_id,
            call_id=parsed.call_id, status=parsed.status, tag=parsed.tag,
            active_members=parsed.active_members, mute=parsed.mute, hold=parsed.hold,
            event_time=parsed.event_time,
            occurred_at=parsed.event_time or event.first_received_at)
    session.execute(update(table).where(table.c.id == event.id, table.c.match != "matched")
                    .values(**values))
    if match == "matched" and conference is not None:
        apply(session, conference.id, parsed, parsed.event_time or event.occurred_at)
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


