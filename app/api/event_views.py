"""Event endpoints: list, export, one event, re-match; and stats."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from flask import Response, stream_with_context

from app import db, filters, queries
from app.api import (
    QUERY,
    bp,
    conference_or_404,
    document_errors,
    invalid_query,
    ok,
    schemas,
)
from app.delivery import filing
from app.errors import APIError
from app.filters import naive
from app.models import Event
from app.represent import event_json, stats_json

CSV_COLUMNS = ("id", "eventType", "unknownType", "conference", "conferenceId", "memberId",
               "callId", "status", "tag", "eventTime", "receivedAt", "lastReceivedAt",
               "channels", "method", "deliveries", "match", "matchReason", "payload")


def event_filter(args: dict[str, Any], conference_pk: str | None = None
                 ) -> queries.EventFilter:
    """The filter ``args`` ask for; ``conference`` (local or provider id) must exist."""
    if conference_pk is None and "conference" in args:
        conference_pk = conference_or_404(args["conference"]).id
    return filters.event_filter(args, conference_pk)


def event_page(flt: queries.EventFilter, args: dict[str, Any]) -> Response:
    try:
        page, cursor = filters.event_page(db.read_session(), flt, args, args["limit"])
    except queries.InvalidQuery as exc:
        raise invalid_query(exc) from None
    return ok({"data": [event_json(e) for e in page.items], "nextCursor": cursor})


@bp.get("/events")
@bp.arguments(schemas.EventListArgs, **QUERY)
@bp.response(200, schemas.EventPage)
@document_errors(400, 401, 404)
def list_events(args: dict[str, Any]) -> Response:
    """Events across all conferences, with filters and a cursor."""
    return event_page(event_filter(args), args)


@bp.get("/events/export")
@bp.arguments(schemas.ExportArgs, **QUERY)
@bp.response(200, description="Every matching event: NDJSON, one event a line, or CSV.",
             content_type="application/x-ndjson")
@document_errors(400, 401, 404)
def export_events(args: dict[str, Any]) -> Response:
    """Export a whole filtered set of events, streamed in constant memory."""
    flt = event_filter(args)
    descending = args["order"] == "desc"

    def rows() -> Iterator[dict[str, Any]]:
        yield from (event_json(e) for e in queries.iter_events(db.read_session(), flt,
                                                               descending=descending))

    if args["format"] == "csv":
        body: Iterator[str] = _csv(rows())
        mimetype, suffix = "text/csv", "csv"
    else:
        body = (json.dumps(row, separators=(",", ":")) + "\n" for row in rows())
        mimetype, suffix = "application/x-ndjson", "ndjson"
    return Response(stream_with_context(body), mimetype=mimetype, headers={
        "Content-Disposition": f'attachment; filename="events.{suffix}"'})


def _csv(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        row = {**row, "channels": "|".join(row["channels"]),
               "payload": json.dumps(row["payload"], separators=(",", ":"))}
        writer.writerow([_cell(row[name]) for name in CSV_COLUMNS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def _cell(value: Any) -> Any:
    # Keep spreadsheet programs from running a cell as a formula.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def event_or_404(event_id: int) -> Event:
    event = db.read_session().get(Event, event_id)
    if event is None:
        raise APIError(404, "not_found", "no such event", {"event": str(event_id)})
    return event


@bp.get("/events/<int(max=9223372036854775807):event_id>")
@bp.arguments(schemas.NoArgs, **QUERY)
@bp.response(200, schemas.Event)
@document_errors(400, 401, 404)
def get_event(args: dict[str, Any], event_id: int) -> Response:
    """One event, with its raw payload, deliveries and channels."""
    return ok(event_json(event_or_404(event_id)))


@bp.post("/events/<int(max=9223372036854775807):event_id>/rematch")
@bp.response(200, schemas.RematchOne)
@document_errors(401, 404)
def rematch_event(event_id: int) -> Response:
    """Match an unmatched or conflicting event again (e.g. now that its conference is known)."""
    session = db.write_session()
    event = session.get(Event, event_id)
    if event is None:
        raise APIError(404, "not_found", "no such event", {"event": str(event_id)})
    before = event.match
    filing.rematch(session, event)
    session.commit()
    return ok({"event": event_json(event), "before": before, "after": event.match})


@bp.post("/events/rematch")
@bp.arguments(schemas.RematchBody)
@bp.response(200, schemas.RematchReport)
@document_errors(401, 404)
def rematch_events(body: dict[str, Any]) -> Response:
    """Match every unmatched and/or conflicting event again; report the outcome.

    With ``conference``: that conference's events, and the unmatched ones naming its
    ``conferenceId`` (events of a conference tracked after they arrived).
    """
    conference = conference_or_404(body["conference"]) if "conference" in body else None
    session = db.write_session()
    report = filing.rematch_many(session, body["match"], conference, body["limit"])
    session.commit()
    return ok(report.__dict__)


@bp.get("/stats")
@bp.arguments(schemas.StatsArgs, **QUERY)
@bp.response(200, schemas.Stats)
@document_errors(400, 401)
def get_stats(args: dict[str, Any]) -> Response:
    """Counts and rates over a window: events, duplicates, fallbacks, rejections."""
    try:
        result = queries.stats(db.read_session(), naive(args.get("since")),
                               naive(args.get("until")))
    except queries.InvalidQuery as exc:
        raise invalid_query(exc) from None
    return ok(stats_json(result))
