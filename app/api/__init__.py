"""The REST API under ``/api/v1``: JSON for people and programs, bearer-token auth.

flask-smorest generates the OpenAPI document (``/api/v1/openapi.json``) from the blueprint,
its argument schemas and its documented responses.
"""

from __future__ import annotations

import hmac
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from flask_smorest import Api, Blueprint
from marshmallow import RAISE

from app import conferences, delivery
from app.api import schemas
from app.catapult import CatapultAPIError, CatapultTimeout
from app.errors import APIError
from app.payload import decode_json, find_unstorable, is_json, reject_nul_in_request
from app.queries import InvalidQuery

bp = Blueprint("api", __name__, url_prefix="/api/v1",
               description="Conferences, their members and their callback events.")


class ConfhookApi(Api):  # type: ignore[misc]
    # Our one error shape, for the document; app.errors produces it.
    ERROR_SCHEMA = schemas.Error


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
    reject_nul_in_request()
    if request.method in ("POST", "PUT", "PATCH") and is_json(request.mimetype):
        json_body()  # refuses malformed JSON and NUL characters before any view reads it


@bp.after_request
def _conditional(response: Response) -> Response:
    response.headers["X-Content-Type-Options"] = "nosniff"
    # Answers hold conference data: no shared cache keeps them (a client's own ETag still
    # gets a 304 below).
    response.headers["Cache-Control"] = "no-store"
    # A strong ETag from the body is cheap at these sizes, and lets pollers get a 304.
    if request.method == "GET" and response.status_code == 200 and response.is_json:
        response.add_etag()
        response.make_conditional(request)
    return response


# -- helpers shared by the views ----------------------------------------------------------------

def json_body() -> Any:
    if not is_json(request.mimetype):
        raise APIError(415, "unsupported_media_type", "send Content-Type: application/json")
    body = decode_json(request.get_data(cache=True))
    where = find_unstorable(body)
    if where:
        raise APIError(422, "invalid_request", "a NUL character or a lone surrogate is not "
                       "allowed", {where[:64]: "NUL character or lone surrogate"})
    return body


def invalid_query(exc: InvalidQuery) -> APIError:
    return APIError(400, "invalid_parameter", str(exc), {exc.field: exc.problem})


def provider_error(exc: conferences.ProviderFailed, creating: bool = False) -> APIError:
    """Map a provider failure to our answer, carrying the provider's code and message."""
    error = exc.error
    details: dict[str, Any] = {"conference": exc.conference.id}
    headers: dict[str, str] = {}
    if isinstance(error, CatapultAPIError):
        details.update(providerStatus=error.status, providerCategory=error.category,
                       providerCode=error.code, providerMessage=error.message)
        if error.status in (400, 422):
            status, code = 422, "provider_rejected"
        elif error.status == 409 or (error.status == 403 and error.category == "forbidden"):
            # 403 forbidden / conference-error: the conference's state does not allow it.
            status, code = 409, "provider_conflict"
        elif error.status == 403 and error.category == "limit":
            status, code = 422, "provider_rejected"
        elif error.status == 404 and not creating:
            status, code = 404, "provider_not_found"
        elif error.status == 429:
            status, code = 429, "provider_rate_limited"
            headers["Retry-After"] = error.retry_after or "5"
        elif error.status in (401, 403):
            status, code = 502, "provider_auth_failed"
        else:
            status, code = 502, "provider_error"
        message = f"the provider refused: {error.message or error.code or error.status}"
    elif isinstance(error, conferences.ConferenceIdTaken):
        status, code, message = 409, "conference_id_taken", str(error)
        details.update(providerConferenceId=error.conference_id, takenBy=error.taken_by)
    elif isinstance(error, CatapultTimeout):
        status, code = 504, "provider_timeout"
        message = "the provider did not answer in time"
        if creating:
            message += "; the conference may exist there"
    else:
        status, code, message = 502, "provider_unavailable", "the provider could not be reached"
    return APIError(status, code, message, details, headers)


# Query strings are validated strictly: an unknown parameter is a 400 that names it.
QUERY = {"location": "query", "error_status_code": 400, "unknown": RAISE}
PROVIDER_ERRORS = (404, 409, 422, 429, 502, 504)


conference_or_404 = conferences.find_or_404


def document_errors(*statuses: int) -> Any:
    """Document that a view may answer these statuses with the error body."""
    def decorate(view: Any) -> Any:
        for status in statuses:
            view = bp.alt_response(status, schema=schemas.Error)(view)
        return view
    return decorate


def ok(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def init_app(app: Flask) -> None:
    app.config.update(
        API_TITLE="confhook", API_VERSION="v1", OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api/v1", OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS={
            "info": {"description": "Create conferences on the provider and read back every "
                                    "callback event they sent. All endpoints but this "
                                    "document need a bearer token."},
            "security": [{"bearerAuth": []}],
            "components": {"securitySchemes": {"bearerAuth": {"type": "http",
                                                              "scheme": "bearer"}}},
        },
    )
    # Here, not at the top: the views import this module's blueprint (a real cycle).
    from app.api import conference_views, event_views  # noqa: F401 - registers the views

    api = ConfhookApi(app)
    api.register_blueprint(bp)
    delivery.document(api.spec, app)
