"""The provider-facing endpoints: one GET/POST route per channel, thin over ``events``."""

from __future__ import annotations

import logging
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from sqlalchemy.engine import make_url
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Request

from app import db, deliveryconn, events, groupcommit, metrics
from app.errors import APIError
from app.keys import CHANNELS
from app.payload import decode_json, is_json, single_values

bp = Blueprint("callbacks", __name__, url_prefix="/callbacks")
log = logging.getLogger(__name__)

FORM_TYPE = "application/x-www-form-urlencoded"


def read_fields(req: Request, max_bytes: int) -> dict[str, Any]:
    """Return the delivery's fields from the query string (GET) or the body (POST).

    ``req`` is Flask's request, or a plain Werkzeug one on the fast path (``app/fastdelivery``).
    """
    if len(req.query_string) > max_bytes:
        raise APIError(414, "uri_too_long", f"query string over {max_bytes} bytes")
    if req.method == "GET":
        return single_values(req.args, "invalid_event")
    mimetype = req.mimetype
    if req.content_length is not None and req.content_length > max_bytes:
        raise APIError(413, "payload_too_large", f"body over {max_bytes} bytes")
    try:
        raw = req.get_data(cache=True)
    except RequestEntityTooLarge:
        raise APIError(413, "payload_too_large", f"body over {max_bytes} bytes") from None
    if len(raw) > max_bytes:
        raise APIError(413, "payload_too_large", f"body over {max_bytes} bytes")
    if not raw and req.args:
        # A POST with its fields in the query string: take them as a GET would be taken.
        return single_values(req.args, "invalid_event")
    if is_json(mimetype):
        return decode_json(raw)  # type: ignore[no-any-return]
    if mimetype == FORM_TYPE:
        return single_values(req.form, "invalid_event")
    raise APIError(415, "unsupported_media_type",
                   "send application/json or application/x-www-form-urlencoded")


def store(subject: str, channel: str, method: str, event: events.Parsed) -> events.Outcome:
    """Store one parsed, authenticated delivery; return its outcome once committed.

    In an app context. On SQLite the process's writer commits it with whatever else is
    waiting (``app/groupcommit.py``); on PostgreSQL this thread's own connection does, in a
    transaction of its own (``app/deliveryconn.py``). Raises :class:`events.Rejected` for an
    event that must not be stored (nothing is).
    """
    committer = current_app.extensions.get(groupcommit.EXTENSION)
    if committer is not None:
        wait_s = current_app.config["CONFHOOK_DELIVERY_WAIT_MS"] / 1000
        return committer.receive(groupcommit.Job(subject, channel, method, event), wait_s)
    connections: deliveryconn.DeliveryConnections = current_app.extensions[
        deliveryconn.EXTENSION]
    return connections.run(lambda run: events.record(
        run, subject=subject, channel=channel, method=method, event=event))


def busy_error() -> APIError:
    """The answer when the writer did not take a delivery within CONFHOOK_DELIVERY_WAIT_MS."""
    # It may still be stored; a retry of it would then count as a duplicate.
    return APIError(503, "database_busy", "the database did not take the event in time; "
                    "retry later", headers={"Retry-After": "5"})


ROUTE = "/callbacks/<channel>/<subject>/<key>"


@bp.route("/<channel>/<subject>/<key>", methods=["GET", "POST"])
def deliver(channel: str, subject: str, key: str) -> Response:
    if channel not in CHANNELS:
        raise APIError(404, "not_found", "no such callback URL")
    secrets = [current_app.config["CONFHOOK_SECRET_KEY"],
               *current_app.config["CONFHOOK_OLD_SECRET_KEYS"]]
    fields: Any = None
    try:
        events.authenticate(secrets, subject, key)
        fields = read_fields(request, current_app.config["CONFHOOK_MAX_BODY_BYTES"])
        outcome = store(subject, channel, request.method, events.parse(fields))
    except FuturesTimeout:
        raise busy_error() from None
    except (events.Rejected, APIError) as exc:
        reason = exc.reason if isinstance(exc, events.Rejected) else exc.code
        counter = current_app.extensions[REJECTIONS]
        counter.add(reason)
        counter.flush_if_due(db.database().writer)
        rejected = isinstance(exc, events.Rejected) and exc.status in (401, 404)
        event_type = fields.get("eventType") if isinstance(fields, dict) else None
        metrics.delivery(event_type, channel, request.method,
                         "rejected" if rejected else "invalid")
        # Never log the key: it is the credential.
        log.warning("delivery %s: %s", "rejected" if rejected else "invalid", reason, extra={
            "reason": reason, "channel": channel, "subject": subject[:40],
            "event_type": metrics.event_type_label(event_type)})
        if isinstance(exc, events.Rejected):
            code = "unauthorized" if exc.status == 401 else "invalid_event"
            raise APIError(exc.status, code, str(exc), exc.details) from None
        raise
    # The request's own log line carries the delivery (app/logs.py): one line, not two.
    g.delivery, header = delivered(outcome, channel, request.method)
    response = Response(status=204)
    del response.headers["Content-Type"]  # no content, so no type (Flask's default is HTML)
    response.headers["X-Confhook-Event"] = header
    return response


def delivered(outcome: events.Outcome, channel: str, method: str) -> tuple[dict[str, Any], str]:
    """Count a stored (or duplicate) delivery; return its log fields and X-Confhook-Event."""
    result = "duplicate" if outcome.duplicate else "stored"
    metrics.delivery(outcome.event_type, channel, method, result)
    fields = {"outcome": result, "event_id": outcome.event_id,
              "event_type": outcome.event_type, "channel": channel, "match": outcome.match,
              "conference": outcome.conference_pk}
    return fields, f"{outcome.event_id}; {result}; {outcome.match}"


REJECTIONS = "confhook.rejections"


def init_app(app: Flask) -> None:
    app.extensions[REJECTIONS] = events.RejectionCounter(
        app.config["CONFHOOK_REJECTION_FLUSH_MS"] / 1000)
    url = make_url(app.config["DATABASE_URL"])
    if url.get_backend_name() == "sqlite":
        path = url.database if url.database not in (None, "", ":memory:") else None
        app.extensions[groupcommit.EXTENSION] = groupcommit.GroupCommitter(
            db.database(app).engine, f"{path}-writer.lock" if path else None)
    else:
        engine = db.make_engine(app.config["DATABASE_URL"],
                                lock_timeout_ms=app.config["CONFHOOK_DELIVERY_WAIT_MS"],
                                pool_pre_ping=False, pool_use_lifo=True,
                                pool_timeout=app.config["CONFHOOK_DELIVERY_WAIT_MS"] / 1000)
        app.extensions[deliveryconn.EXTENSION] = deliveryconn.DeliveryConnections(
            engine, db.database(app).engine, app.config["CONFHOOK_DELIVERY_WAIT_MS"] / 1000)
    app.register_blueprint(bp)
    # Well-formed deliveries are served beneath Flask, the rest by the route above.
    from app.fastdelivery import FastDeliveries

    app.wsgi_app = FastDeliveries(app, app.wsgi_app)  # type: ignore[method-assign]


_DELIVERY_ANSWERS = {
    "400": "Malformed JSON, invalid UTF-8, NaN, nesting deeper than the parser allows.",
    "401": "The URL's key does not verify: nothing stored.",
    "404": "No such callback channel.",
    "408": "The request did not arrive whole within CONFHOOK_REQUEST_READ_TIMEOUT.",
    "413": "A body over CONFHOOK_MAX_BODY_BYTES.",
    "414": "A query string over CONFHOOK_MAX_BODY_BYTES.",
    "415": "A body that is neither JSON nor form-encoded.",
    "422": "An event that cannot be understood (no eventType, a known field with a bad "
           "value, NUL characters, too deep, too many fields).",
    "503": "The database is unavailable or busy: retry later (Retry-After). Never a 4xx for "
           "our own failure.",
}


def document(spec: Any, app: Flask) -> None:
    """Describe the provider-facing endpoint in the API's OpenAPI document."""
    rule = next(r for r in app.url_map.iter_rules() if r.endpoint == f"{bp.name}.deliver")
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    responses: dict[str, Any] = {
        "204": {"description": "Stored, or recognised as a duplicate of a stored event.",
                "headers": {"X-Confhook-Event": {
                    "description": "`<event id>; stored|duplicate; <match>`",
                    "schema": {"type": "string"}}}},
        **{status: {"description": text, **error} for status, text in _DELIVERY_ANSWERS.items()},
    }
    parameters = [
        {"name": "channel", "in": "path", "required": True,
         "schema": {"type": "string", "enum": list(CHANNELS)}},
        {"name": "subject", "in": "path", "required": True,
         "description": "The conference's id, or `shared`.", "schema": {"type": "string"}},
        {"name": "key", "in": "path", "required": True,
         "description": "The key issued for the subject: the URL is the credential.",
         "schema": {"type": "string"}},
    ]
    common = {"tags": ["callbacks"], "security": [], "responses": responses}
    spec.path(rule=rule, parameters=parameters, operations={
        "get": {**common, "summary": "A callback event from the provider, as a query string",
                "parameters": [{"name": "event", "in": "query", "style": "form",
                                "explode": True, "schema": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"}}}]},
        "post": {**common, "summary": "A callback event from the provider, as JSON",
                 "requestBody": {"required": True, "content": {
                     "application/json": {"schema": {"type": "object"}},
                     "application/x-www-form-urlencoded": {"schema": {
                         "type": "object", "additionalProperties": {"type": "string"}}}}}},
    })
