"""Marshmallow schemas: they validate query strings and bodies, and document every response.

Responses are built by the functions in ``represent``; the schemas here describe them for the
OpenAPI document, and the test suite checks that the two agree.
"""

from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from app.catapult import PROVIDER_ID
from app.conferences import CALLBACK_TIMEOUT_RANGE, E164
from app.filters import (  # noqa: F401 - the argument schemas the API documents
    ID_LENGTH,
    ConferenceEventListArgs,
    ConferenceListArgs,
    EventFilterArgs,
    EventListArgs,
    PageArgs,
    Strict,
    Time,
)
from app.models import CONFERENCE_STATES, MATCH_STATES, TAG_MAX_LENGTH


class ExportArgs(EventFilterArgs):
    conference = fields.String(validate=ID_LENGTH)
    format = fields.String(load_default="ndjson", validate=validate.OneOf(("ndjson", "csv")))


class StatsArgs(Strict):
    since = Time(metadata={"description": "Window start; default one hour before until."})
    until = Time(metadata={"description": "Window end; default now."})


class NoArgs(Strict):
    pass


class RematchBody(Strict):
    match = fields.List(fields.String(validate=validate.OneOf(
                        ("unmatched", "conflict", "invalid"))),
                        load_default=lambda: ["unmatched", "conflict", "invalid"],
                        validate=validate.Length(min=1))
    conference = fields.String(validate=ID_LENGTH)
    limit = fields.Integer(load_default=10_000, validate=validate.Range(1, 100_000))


class ConferenceCreateBody(Strict):
    """Documents the create body; ``conferences.parse_create`` validates it."""

    from_ = fields.String(required=True, data_key="from",
                          validate=validate.Regexp(f"^{E164.pattern}$"),
                          metadata={"example": "+19195551212"})
    tag = fields.String(validate=validate.Length(max=TAG_MAX_LENGTH), allow_none=True)
    callbackHttpMethod = fields.String(validate=validate.OneOf(("GET", "POST")))
    callbackTimeout = fields.Integer(validate=validate.Range(*CALLBACK_TIMEOUT_RANGE))


class TrackBody(Strict):
    conferenceId = fields.String(
        required=True, validate=validate.Regexp(f"^{PROVIDER_ID.pattern}$"),
        metadata={"description": "The provider's conference id (letters, digits, - and _)."})


# -- responses --------------------------------------------------------------------------------

class ErrorBody(ma.Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Dict()


class Error(ma.Schema):
    error = fields.Nested(ErrorBody, required=True)


class ProviderErrorInfo(ma.Schema):
    status = fields.Integer(allow_none=True)
    code = fields.String(allow_none=True)
    message = fields.String(allow_none=True)


class Member(ma.Schema):
    memberId = fields.String(required=True)
    callId = fields.String(allow_none=True)
    state = fields.String(required=True)
    joinedAt = fields.String(allow_none=True)
    leftAt = fields.String(allow_none=True)
    mute = fields.Boolean(required=True)
    hold = fields.Boolean(required=True)


class Conference(ma.Schema):
    id = fields.String(required=True)
    conferenceId = fields.String(allow_none=True)
    from_ = fields.String(required=True, data_key="from")
    tag = fields.String(allow_none=True)
    state = fields.String(required=True, validate=validate.OneOf(CONFERENCE_STATES))
    callbackUrl = fields.String(required=True)
    fallbackUrl = fields.String(required=True)
    callbackHttpMethod = fields.String(required=True)
    callbackTimeout = fields.Integer(required=True)
    createdAt = fields.String(required=True)
    createdTime = fields.String(allow_none=True)
    completedTime = fields.String(allow_none=True)
    activeMembers = fields.Integer(required=True)
    lastEventAt = fields.String(allow_none=True)
    error = fields.Nested(ProviderErrorInfo, allow_none=True)
    members = fields.List(fields.Nested(Member))


class Counts(ma.Schema):
    total = fields.Integer(required=True)
    byType = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    deliveries = fields.Integer(required=True)
    duplicates = fields.Integer(required=True)
    fallbacks = fields.Integer(required=True)
    conflicts = fields.Integer(required=True)
    invalid = fields.Integer(required=True, metadata={
        "description": "Events kept as received, with a field not understood."})
    unknownType = fields.Integer(required=True)


class ConferenceView(Conference):
    events = fields.Nested(Counts, required=True)


class ConferencePage(ma.Schema):
    data = fields.List(fields.Nested(Conference), required=True)
    nextCursor = fields.String(allow_none=True, required=True)


class Tracked(ma.Schema):
    conference = fields.Nested(Conference, required=True)
    created = fields.Boolean(required=True, metadata={
        "description": "False when the conference was tracked already."})
    waitingEvents = fields.Integer(required=True, metadata={
        "description": "Stored events that name it but are not matched; re-match them."})


class MemberChange(ma.Schema):
    time = fields.String(required=True)
    state = fields.String(allow_none=True)
    mute = fields.Boolean(allow_none=True)
    hold = fields.Boolean(allow_none=True)
    activeMembers = fields.Integer(allow_none=True)


class MemberDetail(Member):
    durationSeconds = fields.Float(allow_none=True)
    history = fields.List(fields.Nested(MemberChange), required=True)


class MemberList(ma.Schema):
    data = fields.List(fields.Nested(MemberDetail), required=True)


class Event(ma.Schema):
    id = fields.Integer(required=True)
    eventType = fields.String(required=True)
    unknownType = fields.Boolean(required=True)
    conference = fields.String(allow_none=True)
    conferenceId = fields.String(allow_none=True)
    memberId = fields.String(allow_none=True)
    callId = fields.String(allow_none=True)
    status = fields.String(allow_none=True)
    tag = fields.String(allow_none=True)
    eventTime = fields.String(allow_none=True)
    receivedAt = fields.String(required=True)
    lastReceivedAt = fields.String(required=True)
    channel = fields.String(allow_none=True)
    channels = fields.List(fields.String(), required=True)
    method = fields.String(required=True)
    deliveries = fields.Integer(required=True)
    match = fields.String(required=True, validate=validate.OneOf(MATCH_STATES))
    matchReason = fields.String(allow_none=True, metadata={
        "description": "Why it is not matched; for `invalid`, the field not understood."})
    payload = fields.Dict(required=True)
    raw = fields.String(allow_none=True, metadata={
        "description": "The body or query string as received, when `payload` is not a "
                       "faithful copy of it (the event is then `invalid`)."})


class EventPage(ma.Schema):
    data = fields.List(fields.Nested(Event), required=True)
    nextCursor = fields.String(allow_none=True, required=True)


class RematchOne(ma.Schema):
    event = fields.Nested(Event, required=True)
    before = fields.String(required=True)
    after = fields.String(required=True)


class RematchReport(ma.Schema):
    examined = fields.Integer(required=True)
    matched = fields.Integer(required=True)
    conflict = fields.Integer(required=True)
    unmatched = fields.Integer(required=True)
    invalid = fields.Integer(required=True)
    remaining = fields.Integer(required=True)


class Refreshed(ma.Schema):
    conference = fields.Nested(Conference, required=True)
    changes = fields.List(fields.String(), required=True)


class Stats(ma.Schema):
    since = fields.String(required=True)
    until = fields.String(required=True)
    events = fields.Dict(required=True)
    rejectedDeliveries = fields.Dict(required=True)
    conferences = fields.Dict(required=True)
    ratesPerMinute = fields.Dict(required=True)
