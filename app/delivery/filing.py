"""Filing: which conference an event belongs to, its one row, and the views it updates.

An event is stored once per dedup key (an upsert counts the deliveries). The URL key names the
conference; the event's ``conferenceId`` and, on conference and member events, its ``tag``
must agree with it (playback and speak events carry the audio request's tag instead). Views
(conference state, members) are derived from event *times* with conditional updates, so the
arrival order does not matter and two instances filing at once cannot undo each other.
Events that match nothing, disagree, or could not be interpreted are kept, and can be filed
again later (:func:`rematch`).

Two ways to run the same rules. In a transaction (SQLite's writer, re-matching) the steps
are statements in turn: find the conference, upsert the event, update the views. On a
PostgreSQL connection in autocommit mode a delivery is one statement, its own transaction:
the match is decided, the event upserted and the views updated by common table expressions
built from the same parts; only an event that fills in its conference's provider id takes
the steps instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    Boolean,
    Integer,
    String,
    bindparam,
    case,
    column,
    false,
    func,
    literal,
    or_,
    select,
    true,
    update,
    values,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from app.delivery.interpret import Parsed, reinterpret
from app.keys import SHARED
from app.models import CHANNEL_BITS, Conference, Event, Member, match_in, utcnow
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
    """File one interpreted delivery; the caller commits (see :class:`Runner`).

    ``subject`` is the conference id the URL names, or ``shared``.
    """
    now = utcnow()
    at = event.event_time or now
    views = _view_params(event, at, now)
    params = {
        "event_type": event.event_type, "unknown_type": event.unknown_type,
        "conference_id": event.conference_id, "member_id": event.member_id,
        "call_id": event.call_id, "status": event.status, "tag": event.tag,
        "active_members": event.active_members, "mute": event.mute, "hold": event.hold,
        "event_time": event.event_time, "occurred_at": at,
        "payload": event.payload, "raw": event.raw, "dedup_key": event.dedup_key,
        "first_received_at": now, "last_received_at": now, "deliveries": 1,
        "channels": CHANNEL_BITS[channel], "method": method,
    }
    if run.autocommit:
        outcome = _record_at_once(run, subject, event, {**params, **views})
        if outcome is not None:
            return outcome
        run.begin()  # it fills in its conference's provider id: the steps, in a transaction
    conference, match, reason = _match(run, subject, event)
    upsert_event = run.prepared("event-upsert", lambda: _event_upsert(run.dialect.name))
    row = run.execute(upsert_event, {
        **params, "conference_pk": conference.id if conference else None, "match": match,
        "match_reason": reason}).fetchone()
    event_id, deliveries, row_match, row_reason, row_conference = row
    duplicate = deliveries > 1
    if not duplicate and conference is not None and match == "matched":
        _update_views(run, {**views, "pk": conference.id}, event)
    return Outcome(event_id=event_id, event_type=event.event_type, duplicate=duplicate,
                   match=row_match, match_reason=row_reason, conference_pk=row_conference)


# The delivery path runs these for every event: built once, with bound parameters, so that
# SQLAlchemy compiles each once per dialect instead of building a statement per delivery.
_CONF = Conference.__table__
_EVENTS = Event.__table__
_MEMBERS = Member.__table__
_MATCH_COLUMNS = (_CONF.c.id, _CONF.c.conference_id, _CONF.c.tag)
_BY_PK = select(*_MATCH_COLUMNS).where(_CONF.c.id == bindparam("pk"))
_BY_PROVIDER_ID = select(*_MATCH_COLUMNS).where(_CONF.c.conference_id == bindparam("cid"))
_ID_TAKEN = select(_CONF.c.id).where(_CONF.c.conference_id == bindparam("cid"),
                                     _CONF.c.id != bindparam("pk"))
_FILL_ID = update(_CONF).where(_CONF.c.id == bindparam("pk"), _CONF.c.conference_id.is_(None)
                               ).values(conference_id=bindparam("cid"))
_EVENT_COLUMNS = tuple(c.name for c in _EVENTS.c if c.name != "id")
_RETURNED = ("id", "deliveries", "match", "match_reason", "conference_pk")


def _event_upsert(dialect: str) -> Any:
    """INSERT an event, or count one more delivery of it (same dedup key)."""
    stmt = _insert(_EVENTS, dialect).values({name: bindparam(name) for name in _EVENT_COLUMNS})
    return _counted(stmt)


def _counted(stmt: Any) -> Any:
    """``stmt`` (an event's INSERT) counting one more delivery of an event already stored."""
    return stmt.on_conflict_do_update(
        index_elements=[_EVENTS.c.dedup_key],
        set_={"deliveries": _EVENTS.c.deliveries + 1,
              "last_received_at": stmt.excluded.last_received_at,
              "channels": _EVENTS.c.channels.op("|")(stmt.excluded.channels)},
    ).returning(*(_EVENTS.c[name] for name in _RETURNED))


def _insert(table: Any, dialect: str) -> Any:
    """An INSERT that takes ON CONFLICT, for ``dialect``."""
    return (postgresql if dialect == "postgresql" else sqlite).insert(table)


class ConferenceRow(NamedTuple):
    id: str
    conference_id: str | None
    tag: str | None


def _row(values: Any) -> ConferenceRow | None:
    return None if values is None else ConferenceRow(*values)


def _not_found(subject: str, event: Parsed) -> str:
    """Why an event matched no conference."""
    if subject != SHARED:
        return "conference_not_found"
    return "no_conference_id" if event.conference_id is None else "unknown_conference"


def _match(run: Runner, subject: str, event: Parsed) -> tuple[Any, str, str | None]:
    """Decide which conference an event belongs to, and whether it agrees with it.

    Returns the conference as a row of ``id``, ``conference_id`` and ``tag`` (or None), the
    match and its reason. An event that could not be interpreted is ``invalid`` whatever
    else is true of it, kept with the conference it names, and folded into no view.
    (:func:`_decision` is the same rule as one SQL expression.)
    """
    conference, match, reason = _find(run, subject, event)
    if event.problem is not None:
        return conference, "invalid", event.problem[:64]
    return conference, match, reason


def _find(run: Runner, subject: str, event: Parsed) -> tuple[Any, str, str | None]:
    if subject == SHARED:
        conference = None if event.conference_id is None else _row(run.execute(
            run.prepared("by-provider-id", lambda: _BY_PROVIDER_ID),
            {"cid": event.conference_id}).fetchone())
        if conference is None:
            return None, "unmatched", _not_found(subject, event)
    else:
        conference = _row(run.execute(run.prepared("by-pk", lambda: _BY_PK),
                                      {"pk": subject}).fetchone())
        if conference is None:
            return None, "unmatched", _not_found(subject, event)
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


# -- the views: one UPDATE of the conference per kind of event, one upsert of the member -------

def _one_of(column: Any, values: Sequence[str]) -> ColumnElement[Any]:
    """``column IN (values)`` as ORs of constants: no expanding parameter to process per run."""
    return or_(*(column == value for value in values))


def _later(column: Any, value: Any) -> ColumnElement[Any]:
    return case((column.is_(None) | (column < value), value), else_=column)


def _earlier(column: Any, value: Any) -> ColumnElement[Any]:
    return case((column.is_(None) | (column > value), value), else_=column)


# Parts of the statements below: built once, not per delivery (only a statement's first use
# compiles it).
_THIS = _CONF.c.id == bindparam("pk")
_AT = bindparam("at", type_=_CONF.c.last_event_at.type)
_CREATED = bindparam("created", type_=_CONF.c.created_time.type)

Kind = tuple[Any, ...]
MemberShape = tuple[str | None, bool, bool, bool]


def _kind(event: Parsed) -> Kind:
    """What an event changes in its conference's row (one UPDATE per kind)."""
    if event.event_type == "conference-member":
        return ("member",)
    if event.event_type == "conference" and event.status == "created":
        return ("created",)
    if event.event_type == "conference" and event.status == "completed":
        return ("completed", event.created_time is not None)
    return ("last",)


def _member_shape(event: Parsed) -> MemberShape | None:
    """What a member event changes in its member's row; None for no member row."""
    if event.event_type != "conference-member" or event.member_id is None:
        return None
    return (event.status if event.status in ("active", "completed") else None,
            event.call_id is not None, event.mute is not None, event.hold is not None)


def _view_params(event: Parsed, at: datetime, now: datetime) -> dict[str, Any]:
    """The views' statements' parameters (a statement's own constants are its own: see
    :class:`Prepared`)."""
    return {"now": now, "at": at, "activate": event.status == "active",
            "active": event.active_members, "created": event.created_time or at,
            "member": event.member_id, "call": event.call_id, "new_mute": event.mute,
            "new_hold": event.hold}


def apply(session: Session, conference_pk: str, event: Parsed, at: datetime) -> None:
    """Fold a newly stored, matched event into its conference's and member's views.

    Every update is conditional on the times already recorded, so applying events in any
    order gives the same view, and a late ``active`` never reopens a ``completed`` conference.
    """
    run = Runner.of(session)
    try:
        _update_views(run, {**_view_params(event, at, utcnow()), "pk": conference_pk}, event)
    finally:
        run.close()


def _update_views(run: Runner, params: dict[str, Any], event: Parsed) -> None:
    kind, shape = _kind(event), _member_shape(event)
    run.execute(run.prepared(("conference", *kind), lambda: update(_CONF).where(_THIS).values(
        **_conference_changes(kind))), params)
    if shape is not None:
        run.execute(run.prepared(("member", *shape), lambda: _member_upsert(
            _insert(_MEMBERS, run.dialect.name), shape, None)), params)


def _conference_changes(kind: Kind) -> dict[str, Any]:
    """The SET of the conference's UPDATE for an event of ``kind``. Every expression reads
    the row as it was, so the conditions agree."""
    conf, at_ = _CONF, _AT
    # updated_at given, not left to its onupdate: SQLAlchemy does not fill that in for an
    # UPDATE inside a WITH.
    changes: dict[str, Any] = {
        "last_event_at": _later(conf.c.last_event_at, at_),
        "updated_at": bindparam("now", type_=conf.c.updated_at.type)}
    if kind[0] == "member":
        activate = bindparam("activate", type_=Boolean())
        active = bindparam("active", type_=Integer())
        newer = active.is_not(None) & (conf.c.active_members_at.is_(None)
                                       | (conf.c.active_members_at < at_))
        changes.update(
            state=case((activate & _one_of(conf.c.state, ("pending", "failed", "created")),
                        "active"), else_=conf.c.state),
            active_members=case((newer, active), else_=conf.c.active_members),
            active_members_at=case((newer, at_), else_=conf.c.active_members_at))
    elif kind[0] == "created":
        changes.update(
            created_time=_earlier(conf.c.created_time, _CREATED),
            state=case((_one_of(conf.c.state, ("pending", "failed")), "created"),
                       else_=conf.c.state))
    elif kind[0] == "completed":
        # A conference completes once: a later "completed" changes only last_event_at.
        done = conf.c.state == "completed"
        changes.update(
            state="completed",
            completed_time=case((done, conf.c.completed_time), else_=at_),
            active_members=case((done, conf.c.active_members), else_=0),
            active_members_at=case((done, conf.c.active_members_at), else_=at_))
        if kind[1]:  # the event says when it was created
            changes["created_time"] = case(
                (done, conf.c.created_time), else_=_earlier(conf.c.created_time, _CREATED))
    return changes


def _member_upsert(insert: Any, shape: MemberShape, source: Any) -> Any:
    """Insert the member as this event describes it, or fold the event into the row.

    One statement per shape of event (status, which fields it has): a new member gets the
    values the event gives; an existing one takes each value only where the event is newer
    than what set it before. Its conference is ``:pk``, or ``source``'s ``conference_pk``
    (then the row is inserted from ``source``, as many times as it has rows: none or one).
    """
    status, has_call, has_mute, has_hold = shape
    c = _MEMBERS.c
    at_ = bindparam("at", type_=c.last_event_at.type)
    call = bindparam("call", type_=c.call_id.type)
    mute = bindparam("new_mute", type_=Boolean())
    hold = bindparam("new_hold", type_=Boolean())
    has_flags = has_mute or has_hold

    def constant(name: str, value: Any) -> Any:
        return literal(value, type_=c[name].type)

    row = {
        "conference_pk": bindparam("pk", type_=c.conference_pk.type) if source is None
        else source.c.conference_pk,
        "member_id": bindparam("member", type_=c.member_id.type), "call_id": call,
        "state": constant("state", "completed" if status == "completed" else "active"),
        "joined_at": at_ if status == "active" else constant("joined_at", None),
        "left_at": at_ if status == "completed" else constant("left_at", None),
        "mute": mute if has_mute else constant("mute", False),
        "hold": hold if has_hold else constant("hold", False),
        "status_at": at_ if has_flags else constant("status_at", None),
        "last_event_at": at_,
    }
    stmt = insert.values(row) if source is None else insert.from_select(
        list(row), select(*row.values()).select_from(source))
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


# -- PostgreSQL: a delivery in one statement -------------------------------------------------

def _record_at_once(run: Runner, subject: str, event: Parsed, params: dict[str, Any]
                    ) -> Outcome | None:
    """File the delivery in one statement, committed by itself; None (nothing written) when
    it would fill in its conference's provider id, which takes the steps of :func:`_find`."""
    shared = subject == SHARED
    kind, shape = _kind(event), _member_shape(event)
    statement = run.prepared(("at-once", shared, kind, shape),
                             lambda: _at_once(shared, kind, shape))
    fill, *row = run.execute(statement, {
        **params, "subject": subject, "media": event.is_media,
        "problem": None if event.problem is None else event.problem[:64],
        "not_found": _not_found(subject, event)}).fetchone()
    if fill:
        return None
    event_id, deliveries, match, reason, conference_pk = row
    return Outcome(event_id=event_id, event_type=event.event_type, duplicate=deliveries > 1,
                   match=match, match_reason=reason, conference_pk=conference_pk)


def _decision(shared: bool) -> Any:
    """:func:`_match` as SQL: one row of the conference's ``pk`` (or NULL), ``fill`` (the
    event would fill in the conference's provider id), ``match`` and ``reason``."""
    conf = _CONF
    cid = bindparam("conference_id", type_=conf.c.conference_id.type)
    tag = bindparam("tag", type_=conf.c.tag.type)
    problem = bindparam("problem", type_=_EVENTS.c.match_reason.type)
    media = bindparam("media", type_=Boolean())
    lookup = (conf.c.conference_id == cid) if shared else (
        conf.c.id == bindparam("subject", type_=conf.c.id.type))
    one = values(column("one", Integer), name="one").data([(1,)])
    found = conf.c.id.is_not(None)
    other_id = cid.is_not(None) & (conf.c.conference_id != cid)
    other_tag = tag.is_not(None) & ~media & conf.c.tag.is_distinct_from(tag)
    fill = false() if shared else (found & cid.is_not(None) & conf.c.conference_id.is_(None))
    reason_type = _EVENTS.c.match_reason.type
    return select(
        conf.c.id.label("pk"), fill.label("fill"),
        case((problem.is_not(None), "invalid"), (~found, "unmatched"),
             (other_id | other_tag, "conflict"), else_="matched").label("match"),
        case((problem.is_not(None), problem),
             (~found, bindparam("not_found", type_=String())),
             (other_id, literal("conference_id_mismatch", type_=reason_type)),
             (other_tag, literal("tag_mismatch", type_=reason_type)),
             else_=literal(None, type_=reason_type)).label("reason"),
    ).select_from(one.outerjoin(conf, lookup)).cte("decision")


def _at_once(shared: bool, kind: Kind, shape: MemberShape | None) -> Any:
    """The statement of :func:`_record_at_once`: decide, upsert the event, and, when it is
    new and matched, update its conference and member, as the steps would."""
    decision = _decision(shared)
    source = {"conference_pk": decision.c.pk, "match": decision.c.match,
              "match_reason": decision.c.reason}
    chosen = select(*(source.get(name, bindparam(name, type_=_EVENTS.c[name].type))
                      for name in _EVENT_COLUMNS)).where(~decision.c.fill)
    stored = _counted(postgresql.insert(_EVENTS).from_select(_EVENT_COLUMNS, chosen)
                      ).cte("stored")
    new = select(stored.c.conference_pk).where(stored.c.deliveries == 1,
                                               stored.c.match == "matched")
    views = [update(_CONF).where(_CONF.c.id.in_(new)).values(**_conference_changes(kind))
             .returning(_CONF.c.id).cte("conference_view")]
    if shape is not None:
        views.append(_member_upsert(postgresql.insert(_MEMBERS), shape, new.subquery("new"))
                     .returning(_MEMBERS.c.id).cte("member_view"))
    return select(decision.c.fill, *(stored.c[name] for name in _RETURNED)).select_from(
        decision.outerjoin(stored, true())).add_cte(*views)


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
    base = select(Event).where(*match_in(kinds))
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


