"""Conference endpoints: create, list, view, members, events, terminate, refresh."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from flask import Response, current_app, url_for
from sqlalchemy.exc import IntegrityError

from app import catapult, conferences, db, filters, queries
from app.api import (
    PROVIDER_ERRORS,
    QUERY,
    bp,
    conference_or_404,
    document_errors,
    invalid_query,
    json_body,
    ok,
    provider_error,
    schemas,
)
from app.api.event_views import event_filter, event_page
from app.errors import APIError
from app.models import Conference
from app.represent import conference_json, counts_json, member_detail_json


@bp.post("/conferences")
@bp.doc(requestBody={"required": True, "content": {
    "application/json": {"schema": schemas.ConferenceCreateBody}}})
@bp.response(201, schemas.Conference, headers={"Location": {
    "description": "The new conference's URL", "schema": {"type": "string"}}})
@document_errors(400, 401, 413, 415, 422, *PROVIDER_ERRORS)
def create_conference() -> Response:
    """Create a conference on the provider with this service's callback URLs."""
    try:
        conference = conferences.create(db.write_session(), catapult.client(), json_body(),
                                        current_app.config)
    except conferences.InvalidRequest as exc:
        raise APIError(422, "invalid_request", str(exc), exc.details) from None
    except conferences.ProviderFailed as exc:
        raise provider_error(exc, creating=True) from None
    return ok(conference_json(conference, []), 201,
              {"Location": url_for("api.get_conference", ident=conference.id)})


@bp.post("/conferences/track")
@bp.arguments(schemas.TrackBody, location="json", error_status_code=422)
@bp.response(201, schemas.Tracked)
@bp.alt_response(200, schema=schemas.Tracked, description="Tracked already")
@document_errors(400, 401, 413, 415, 422, *PROVIDER_ERRORS)
def track_conference(body: dict[str, Any]) -> Response:
    """Track a conference that another system created on the provider.

    Its callbacks are expected at the shared callback URL (``flask shared-callback-url``);
    from now on they match it. Events stored before as unmatched are counted in
    ``waitingEvents``: re-match them with ``POST /api/v1/events/rematch``.
    """
    session = db.write_session()
    try:
        tracked = conferences.track(session, catapult.client(), body["conferenceId"],
                                    current_app.config)
        session.commit()
    except conferences.ProviderFailed as exc:
        session.rollback()
        error = provider_error(exc)
        if error.details:
            error.details["conference"] = body["conferenceId"]
        raise error from None
    except IntegrityError:
        # Tracked at the same moment by another request: answer with that one.
        session.rollback()
        tracked = conferences.track(session, catapult.client(), body["conferenceId"],
                                    current_app.config)
    members = conferences.members(session, tracked.conference)
    return ok({"conference": conference_json(tracked.conference, members),
               "created": tracked.created, "waitingEvents": tracked.waiting},
              201 if tracked.created else 200,
              {"Location": url_for("api.get_conference", ident=tracked.conference.id)})


@bp.get("/conferences")
@bp.arguments(schemas.ConferenceListArgs, **QUERY)
@bp.response(200, schemas.ConferencePage)
@document_errors(400, 401)
def list_conferences(args: dict[str, Any]) -> Response:
    """List conferences, newest first by default, with filters and a cursor."""
    try:
        page, cursor = filters.conference_page(db.read_session(), args, args["limit"])
    except queries.InvalidQuery as exc:
        raise invalid_query(exc) from None
    return ok({"data": [conference_json(c) for c in page.items], "nextCursor": cursor})


@bp.get("/conferences/<ident>")
@bp.arguments(schemas.NoArgs, **QUERY)
@bp.response(200, schemas.ConferenceView)
@document_errors(400, 401, 404)
def get_conference(args: dict[str, Any], ident: str) -> Response:
    """One conference (by local id or provider conferenceId): its view, members and counts."""
    conference = conference_or_404(ident)
    session = db.read_session()
    body = conference_json(conference, conferences.members(session, conference))
    body["events"] = counts_json(queries.conference_counts(session, conference.id))
    response = ok(body)
    response.last_modified = max(filter(None, (conference.updated_at,
                                               conference.last_event_at))).replace(tzinfo=UTC)
    return response


@bp.get("/conferences/<ident>/members")
@bp.arguments(schemas.NoArgs, **QUERY)
@bp.response(200, schemas.MemberList)
@document_errors(400, 401, 404)
def conference_members(args: dict[str, Any], ident: str) -> Response:
    """Each member's join and leave times, duration, and its state/mute/hold history."""
    conference = conference_or_404(ident)
    histories = queries.member_histories(db.read_session(), conference)
    return ok({"data": [member_detail_json(h) for h in histories]})


@bp.get("/conferences/<ident>/events")
@bp.arguments(schemas.ConferenceEventListArgs, **QUERY)
@bp.response(200, schemas.EventPage)
@document_errors(400, 401, 404)
def conference_events(args: dict[str, Any], ident: str) -> Response:
    """A conference's events in event-time order, with filters and a cursor."""
    conference = conference_or_404(ident)
    return event_page(event_filter(args, conference.id), args)


@bp.post("/conferences/<ident>/terminate")
@bp.response(202, schemas.Conference)
@document_errors(401, 404, 409, *PROVIDER_ERRORS)
def terminate_conference(ident: str) -> Response:
    """Ask the provider to end the conference; its callbacks then complete the view."""
    conference = conference_or_404(ident)
    try:
        conferences.terminate(catapult.client(), conference)
    except conferences.NotOnProvider:
        raise APIError(409, "not_on_provider", "the conference was never created on the "
                       "provider", {"conference": conference.id, "state": conference.state}
                       ) from None
    except conferences.ProviderFailed as exc:
        raise provider_error(exc) from None
    return ok(conference_json(conference), 202)


@bp.post("/conferences/<ident>/refresh")
@bp.response(200, schemas.Refreshed)
@document_errors(401, 404, 409, *PROVIDER_ERRORS)
def refresh_conference(ident: str) -> Response:
    """Reconcile the view with the provider's own record, for when callbacks were lost."""
    conference = conference_or_404(ident)
    session = db.write_session()
    conference = session.get(Conference, conference.id) or conference
    try:
        changes = conferences.refresh(session, catapult.client(), conference)
    except conferences.NotOnProvider:
        raise APIError(409, "not_on_provider", "the conference was never created on the "
                       "provider", {"conference": conference.id, "state": conference.state}
                       ) from None
    except conferences.ProviderFailed as exc:
        raise provider_error(exc) from None
    session.commit()
    members = conferences.members(session, conference)
    return ok({"conference": conference_json(conference, members), "changes": changes})

