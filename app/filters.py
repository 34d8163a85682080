"""Query arguments the API and the admin page share: the schemas that validate them, and the
filters they become (``app/queries.py`` runs those)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import marshmallow as ma
from marshmallow import fields, validate
from sqlalchemy.orm import Session
from webargs.fields import DelimitedList

from app import queries
from app.delivery.interpret import KNOWN_TYPES
from app.models import CONFERENCE_STATES, MATCH_STATES, TAG_MAX_LENGTH
from app.queries import MAX_LIMIT


class UtcTime(fields.AwareDateTime):
    """An ISO 8601 time, converted to UTC; a time whose UTC falls outside years 1-9999 is
    refused as invalid rather than overflowing later."""

    def _deserialize(self, value, attr, data, **kwargs):  # type: ignore[no-untyped-def]
        parsed = super()._deserialize(value, attr, data, **kwargs)
        try:
            return parsed.astimezone(UTC)
        except OverflowError:
            raise ma.ValidationError("Not a valid datetime: out of range in UTC.") from None


def Time(**kw: Any) -> UtcTime:
    return UtcTime(default_timezone=UTC, **kw)


ID_LENGTH = validate.Length(min=1, max=128)


class Strict(ma.Schema):
    class Meta:
        unknown = ma.RAISE
        ordered = True


# -- arguments --------------------------------------------------------------------------------

class PageArgs(Strict):
    limit = fields.Integer(load_default=100, validate=validate.Range(1, MAX_LIMIT),
                           metadata={"description": "Items per page."})
    cursor = fields.String(validate=validate.Length(max=512),
                           metadata={"description": "nextCursor of the previous page."})


class ConferenceListArgs(PageArgs):
    tag = fields.String(validate=validate.Length(max=TAG_MAX_LENGTH))
    state = DelimitedList(fields.String(validate=validate.OneOf(CONFERENCE_STATES)),
                          metadata={"description": "One or more states, comma-separated."})
    createdAfter = Time(metadata={"description": "Created here at or after (ISO 8601)."})
    createdBefore = Time()
    completedAfter = Time(metadata={"description": "Completed (provider time) at or after."})
    completedBefore = Time()
    hasConflicts = fields.Boolean(
        metadata={"description": "Has events stored as conflicting with it."})
    hasUnmatched = fields.Boolean(
        metadata={"description": "Has unmatched events that name its conferenceId."})
    sort = fields.String(load_default="-createdAt",
                         validate=validate.OneOf(("createdAt", "-createdAt")))


class EventFilterArgs(Strict):
    eventType = DelimitedList(fields.String(validate=validate.Length(min=1, max=64)),
                              metadata={"description": "One or more types, comma-separated: "
                                                       + ", ".join(KNOWN_TYPES) + ", ..."})
    tag = fields.String(validate=validate.Length(max=TAG_MAX_LENGTH))
    memberId = fields.String(validate=ID_LENGTH)
    callId = fields.String(validate=ID_LENGTH)
    match = DelimitedList(fields.String(validate=validate.OneOf(MATCH_STATES)))
    channel = fields.String(validate=validate.OneOf(("callback", "fallback")),
                            metadata={"description": "Came through this URL (at least once)."})
    since = Time(metadata={"description": "Event time at or after (ISO 8601)."})
    until = Time(metadata={"description": "Event time before (ISO 8601)."})
    unknownType = fields.Boolean()
    order = fields.String(load_default="asc", validate=validate.OneOf(("asc", "desc")),
                          metadata={"description": "By event time."})


class EventListArgs(EventFilterArgs, PageArgs):
    conference = fields.String(validate=ID_LENGTH,
                               metadata={"description": "Local id or provider conferenceId."})


class ConferenceEventListArgs(EventFilterArgs, PageArgs):
    pass


def naive(value: datetime | None) -> datetime | None:
    """An aware time from a query parameter, as the naive UTC the database stores."""
    return None if value is None else value.astimezone(UTC).replace(tzinfo=None)


def event_filter(args: dict[str, Any], conference_pk: str | None) -> queries.EventFilter:
    """The events ``args`` (validated by an ``EventFilterArgs``) ask for, of one conference
    (its local id, found by the caller) or of all."""
    return queries.EventFilter(
        conference_pk=conference_pk, event_types=tuple(args.get("eventType") or ()),
        tag=args.get("tag"), member_id=args.get("memberId"), call_id=args.get("callId"),
        matches=tuple(args.get("match") or ()), channel=args.get("channel"),
        since=naive(args.get("since")), until=naive(args.get("until")),
        unknown_type=args.get("unknownType"))


def conference_filter(args: dict[str, Any]) -> queries.ConferenceFilter:
    """The conferences ``args`` (validated by ``ConferenceListArgs``) ask for."""
    return queries.ConferenceFilter(
        tag=args.get("tag"), states=tuple(args.get("state") or ()),
        created_after=naive(args.get("createdAfter")),
        created_before=naive(args.get("createdBefore")),
        completed_after=naive(args.get("completedAfter")),
        completed_before=naive(args.get("completedBefore")),
        has_conflicts=args.get("hasConflicts"), has_unmatched=args.get("hasUnmatched"))


def page_key(args: dict[str, Any]) -> str:
    """What a cursor is bound to: the query's filters and order, not its page position."""
    return queries.fingerprint({k: v for k, v in args.items() if k not in ("cursor", "limit")})


def conference_page(session: Session, args: dict[str, Any], limit: int
                    ) -> tuple[queries.Page, str | None]:
    """One page of the conferences ``args`` ask for, and the cursor of the next; raises
    :class:`queries.InvalidQuery` for a cursor of another query."""
    key = page_key(args)
    after = queries.decode_cursor(args["cursor"], key, str) if "cursor" in args else None
    page = queries.conferences_page(session, conference_filter(args),
                                    descending=args.get("sort", "-createdAt").startswith("-"),
                                    after=after, limit=limit)
    return page, queries.encode_cursor(key, *page.next_key) if page.next_key else None


def event_page(session: Session, flt: queries.EventFilter, args: dict[str, Any], limit: int
               ) -> tuple[queries.Page, str | None]:
    """One page of the events ``flt`` selects, in ``args``' order, and the next cursor."""
    key = page_key(args)
    after = queries.decode_cursor(args["cursor"], key, int) if "cursor" in args else None
    page = queries.events_page(session, flt, descending=args["order"] == "desc",
                               after=after, limit=limit)
    return page, queries.encode_cursor(key, *page.next_key) if page.next_key else None
