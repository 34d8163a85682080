"""The REST API under ``/api/v1``: JSON for people and programs, bearer-token auth."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from datetime import datetime
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request, url_for
from sqlalchemy import select, tuple_

from app import conferences, db, events
from app.catapult import CatapultAPIError, CatapultClient, CatapultTimeout
from app.errors import APIError
from app.models import Conference, Event, Member
from app.payload import decode_json, is_json

bp = Blueprint("api", __name__, url_prefix="/api/v1")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


# -- auth -------------------------------------------------------------------------------------

def token_valid(offered: str, tokens: list[str]) -> bool:
    """Compare ``offered`` with every configured token in constant time."""
    ok = False
    for token in tokens:
        ok |= hmac.compare_digest(offered.encode(), token.encode())
    return ok


@bp.before_request
def _authenticate() -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, offered = header.partition(" ")
    if scheme.lower() != "bearer" or not offered.strip():
        raise APIError(401, "unauthorized", "send Authorization: Bearer <token>",
                       headers={"WWW-Authenticate": 'Bearer realm="confhook"'})
    if not token_valid(offered.strip(), current_app.config["CONFHOOK_API_TOKENS"]):
        raise APIError(401, "unauthorized", "invalid token",
                       headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


# -- representation ---------------------------------------------------------------------------

def iso(value: datetime | None) -> str | None:
    """Return a stored (naive UTC) time as ISO 8601 with ``Z``."""
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds") + "Z"


def conference_json(conference: Conference, members: list[Member] | None = None
                    ) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": conference.id,
        "conferenceId": conference.conference_id,
        "from": conference.from_number,
        "tag": conference.tag,
        "state": conference.state,
        "callbackUrl": conference.callback_url,
        "fallbackUrl": conference.fallback_url,
        "callbackHttpMethod": conference.callback_method,
        "callbackTimeout": conference.callback_timeout_ms,
        "createdAt": iso(conference.created_at),
        "createdTime": iso(conference.created_time),
        "completedTime": iso(conference.completed_time),
        "activeMembers": conference.active_members,
        "lastEventAt": iso(conference.last_event_at),
        "error": None,
    }
    if conference.error_code or conference.error_message or conference.error_status:
        body["error"] = {"status": conference.error_status, "code": conference.error_code,
                         "message": conference.error_message}
    if members is not None:
        body["members"] = [member_json(m) for m in members]
    return body


def member_json(member: Member) -> dict[str, Any]:
    return {
        "memberId": member.member_id,
        "callId": member.call_id,
        "state": member.state,
        "joinedAt": iso(member.joined_at),
        "leftAt": iso(member.left_at),
        "mute": member.mute,
        "hold": member.hold,
    }


def event_json(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "eventType": event.event_type,
        "unknownType": event.unknown_type,
        "conference": event.conference_pk,
        "conferenceId": event.conference_id,
        "memberId": event.member_id,
        "callId": event.call_id,
        "status": event.status,
        "tag": event.tag,
        "eventTime": iso(event.event_time),
        "receivedAt": iso(event.first_received_at),
        "lastReceivedAt": iso(event.last_received_at),
        "channel": events.channels_of(event.channels)[0] if event.channels else None,
        "channels": events.channels_of(event.channels),
        "method": event.method,
        "deliveries": event.deliveries,
        "match": event.match,
        "matchReason": event.match_reason,
        "payload": event.payload,
    }


# -- request parsing --------------------------------------------------------------------------

def json_body() -> Any:
    if not is_json(request.mimetype):
        raise APIError(415, "unsupported_media_type", "send Content-Type: application/json")
    return decode_json(request.get_data(cache=True))


def query(allowed: tuple[str, ...]) -> dict[str, str]:
    unknown = sorted(set(request.args) - set(allowed))
    if unknown:
        raise APIError(400, "unknown_parameter", "unknown query parameter",
                       {name[:64]: f"not one of {', '.join(allowed)}" for name in unknown[:10]})
    return {name: request.args[name] for name in allowed if name in request.args}


def parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise APIError(400, "invalid_parameter", "bad limit",
                       {"limit": f"an integer from 1 to {MAX_LIMIT}"})
    return int(raw)


def encode_cursor(*values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(values, default=str).encode()).decode()


def decode_cursor(raw: str, kinds: tuple[type, ...]) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(raw.encode()))
        if not isinstance(values, list) or len(values) != len(kinds):
            raise ValueError
        return [datetime.fromisoformat(v) if k is datetime else k(v)
                for v, k in zip(values, kinds, strict=True)]
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise APIError(400, "invalid_parameter", "bad cursor",
                       {"cursor": "not a cursor this endpoint gave"}) from None


# -- provider client --------------------------------------------------------------------------

_CLIENT = "confhook.catapult"


def provider(app: Flask | None = None) -> CatapultClient:
    return (app or current_app).extensions[_CLIENT]  # type: ignore[no-any-return]


def provider_error(exc: conferences.ProviderFailed) -> APIError:
    """Map a provider failure to our answer, carrying the provider's code and message."""
    error = exc.error
    details: dict[str, Any] = {"conference": exc.conference.id}
    headers: dict[str, str] = {}
    if isinstance(error, CatapultAPIError):
        details.update(providerStatus=error.status, providerCategory=error.category,
                       providerCode=error.code, providerMessage=error.message)
        if error.status in (400, 409, 422):
            status, code = 422, "provider_rejected"
        elif error.status == 429:
            status, code = 429, "provider_rate_limited"
            headers["Retry-After"] = error.retry_after or "5"
        elif error.status in (401, 403):
            status, code = 502, "provider_auth_failed"
        else:
            status, code = 502, "provider_error"
        message = f"the provider refused the conference: {error.message or error.code}"
    elif isinstance(error, CatapultTimeout):
        status, code = 504, "provider_timeout"
        message = "the provider did not answer in time; the conference may exist there"
    else:
        status, code, message = 502, "provider_unavailable", "the provider could not be reached"
    return APIError(status, code, message, details, headers)


# -- conferences ------------------------------------------------------------------------------

@bp.post("/conferences")
def create_conference() -> tuple[Response, int, dict[str, str]]:
    try:
        create = conferences.parse_create(json_body(), current_app.config)
    except conferences.InvalidRequest as exc:
        raise APIError(422, "invalid_request", str(exc), exc.details) from None
    session = db.write_session()
    conference = conferences.prepare(session, create, current_app.config)
    # Committed before the provider is called: its callbacks may arrive before its answer.
    session.commit()
    try:
        conferences.submit(session, provider(), conference)
    except conferences.ProviderFailed as exc:
        session.commit()
        raise provider_error(exc) from None
    session.commit()
    location = url_for("api.get_conference", ident=conference.id)
    return jsonify(conference_json(conference, [])), 201, {"Location": location}


def _conference_or_404(ident: str) -> Conference:
    conference = conferences.find(db.read_session(), ident)
    if conference is None:
        raise APIError(404, "not_found", "no such conference", {"conference": ident[:128]})
    return conference


@bp.get("/conferences/<ident>")
def get_conference(ident: str) -> Response:
    query(())
    conference = _conference_or_404(ident)
    return jsonify(conference_json(conference,
                                   conferences.members(db.read_session(), conference)))


@bp.get("/conferences/<ident>/events")
def conference_events(ident: str) -> Response:
    args = query(("limit", "cursor"))
    limit = parse_limit(args.get("limit"))
    conference = _conference_or_404(ident)
    stmt = (select(Event).where(Event.conference_pk == conference.id)
            .order_by(Event.occurred_at, Event.id).limit(limit + 1))
    if "cursor" in args:
        after_time, after_id = decode_cursor(args["cursor"], (datetime, int))
        stmt = stmt.where(tuple_(Event.occurred_at, Event.id) > tuple_(after_time, after_id))
    rows = list(db.read_session().scalars(stmt))
    page, more = rows[:limit], len(rows) > limit
    cursor = encode_cursor(page[-1].occurred_at.isoformat(), page[-1].id) if more else None
    return jsonify(data=[event_json(e) for e in page], nextCursor=cursor)


def init_app(app: Flask) -> None:
    config = app.config
    app.extensions[_CLIENT] = CatapultClient(
        config["CATAPULT_API_URL"], config["CATAPULT_USER_ID"],
        config["CATAPULT_API_TOKEN"], config["CATAPULT_API_SECRET"],
        connect_timeout=config["CATAPULT_CONNECT_TIMEOUT_S"],
        read_timeout=config["CATAPULT_READ_TIMEOUT_S"], retries=config["CATAPULT_RETRIES"],
    )
    app.register_blueprint(bp)
