"""An emulator of the provider's v1 conference API that fires real HTTP callbacks.

A separate Flask app, never imported by the service: ``python -m app.emulator``. It keeps its
state in memory, answers with the provider's paths, auth, status codes, headers and error
bodies, and delivers callback events in the background like the provider does.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import threading
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from app.emulator.delivery import FAULTS, Deliverer, Target
from app.emulator.model import ProviderError, Store, bad_request, invalid_state, rate_limited
from app.emulator.scenario import Scenario, ScenarioRunner


@dataclass(frozen=True)
class EmulatorConfig:
    user_id: str = "u-local"
    token: str = "local-token"
    secret: str = "local-secret"
    retries: int = 1
    retry_delay_s: float = 1.0
    media_ms: int = 200


bp = Blueprint("provider", __name__, url_prefix="/v1/users/<user_id>")
control = Blueprint("control", __name__, url_prefix="/_emulator")


def _emulator() -> Emulator:
    return current_app.extensions["emulator"]  # type: ignore[no-any-return]


class Emulator:
    """The state behind the routes: store, deliverer, scenarios, config."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.store = Store()
        self.deliverer = Deliverer(config.retries, config.retry_delay_s)
        self.scenarios = ScenarioRunner(self)
        self.timers: list[threading.Timer] = []
        self.playing: dict[tuple[str, str], Playing] = {}

    def target(self, conference_id: str) -> Target:
        with self.store.lock:
            conference = self.store.get(conference_id)
            return Target(conference.callback_url, conference.fallback_url,
                          conference.callback_method, conference.callback_timeout_ms)

    def emit(self, conference_id: str, events: list[dict[str, Any]]) -> None:
        if events:
            self.deliverer.send(conference_id, lambda: self.target(conference_id), events)

    # The operations below are the API's, callable from scenarios without HTTP.

    def create(self, user_id: str, body: dict[str, Any]) -> str:
        conference, events = self.store.create(user_id, body)
        if self.deliverer.take_early():
            # The callback outruns the API's answer, as it can with the real provider.
            self.deliverer.send_now(self.target(conference.id), events[0], conference.id)
        else:
            self.emit(conference.id, events)
        return conference.id

    def update(self, user_id: str, conference_id: str, body: dict[str, Any]) -> None:
        self.emit(conference_id, self.store.update(user_id, conference_id, body))

    def add_member(self, user_id: str, conference_id: str, body: dict[str, Any]) -> str:
        member, events = self.store.add_member(user_id, conference_id, body)
        self.emit(conference_id, events)
        return member.id

    def update_member(self, user_id: str, conference_id: str, member_id: str,
                      body: dict[str, Any]) -> None:
        self.emit(conference_id,
                  self.store.update_member(user_id, conference_id, member_id, body))

    def audio(self, user_id: str, conference_id: str, body: dict[str, Any]) -> None:
        """Play or speak to the whole conference; an empty ``fileUrl`` or ``sentence``
        stops what plays. A new audio of a kind ends the one before it (its ``done``)."""
        kind, stop, tag = self.store.audio_request(body)
        with self.store.lock:
            conference = self.store.active(conference_id)
            before = self.playing.pop((conference_id, kind), None)
            started = None if stop else self.store.media_event(
                user_id, conference, kind, "started", tag)
        if before is not None:
            before.finish()
        if started is None:
            return
        self.emit(conference_id, [started])
        playing = Playing(self, user_id, conference_id, kind, tag)
        playing.start(self.config.media_ms / 1000)
        with self.store.lock:
            if not playing.done:
                self.playing[(conference_id, kind)] = playing

    def member_audio(self, user_id: str, conference_id: str, member_id: str,
                     body: dict[str, Any]) -> None:
        """Play or speak to one member. Its events are the member's *call's* playback and
        speak events, sent to the call's own callback URL, which this emulator does not
        model: none are sent, and none reach the conference's callback URL."""
        self.store.audio_request(body)
        with self.store.lock:
            self.store.active(conference_id)
            member = self.store.member(conference_id, member_id)
            if member.state != "active":
                raise invalid_state("conference member", member.id, member.state)


class Playing:
    """Audio that plays in a conference: its ``done`` event is sent once, when it ends or is
    stopped."""

    def __init__(self, emulator: Emulator, user_id: str, conference_id: str, kind: str,
                 tag: str | None) -> None:
        self.emulator = emulator
        self.user_id = user_id
        self.conference_id = conference_id
        self.kind = kind
        self.tag = tag
        self.lock = threading.Lock()
        self.done = False
        self.timer: threading.Timer | None = None

    def start(self, seconds: float) -> None:
        self.emulator.deliverer.expect()  # the done event is owed: not idle until sent
        self.timer = threading.Timer(seconds, self.finish)
        self.timer.daemon = True
        self.timer.start()

    def finish(self) -> None:
        with self.lock:
            if self.done:
                return
            self.done = True
        if self.timer is not None:
            self.timer.cancel()
        emulator, store = self.emulator, self.emulator.store
        try:
            with store.lock:
                if emulator.playing.get((self.conference_id, self.kind)) is self:
                    del emulator.playing[(self.conference_id, self.kind)]
                conference = store.get(self.conference_id)
                done = store.media_event(self.user_id, conference, self.kind, "done", self.tag)
            emulator.emit(self.conference_id, [done])
        finally:
            emulator.deliverer.fulfil()


# -- the provider's API -----------------------------------------------------------------------

@bp.before_request
def _authenticate() -> None:
    config = _emulator().config
    _check_credentials()
    user_id = (request.view_args or {}).get("user_id")
    if user_id != config.user_id:
        raise ProviderError(403, "forbidden", "forbidden",
                            "These credentials are not for this user")
    deliverer = _emulator().deliverer
    if deliverer.take_fault("rateLimit"):
        raise rate_limited(deliverer.faults.rateLimitMs)


def _check_credentials() -> None:
    config = _emulator().config
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    user = password = ""
    if scheme.lower() == "basic":
        with contextlib.suppress(binascii.Error, UnicodeDecodeError):
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    ok = hmac.compare_digest(user.encode(), config.token.encode())
    ok &= hmac.compare_digest(password.encode(), config.secret.encode())
    if not ok:
        raise ProviderError(401, "authentication", "unauthorized",
                            "Authentication is required: basic auth with token and secret")


def _body() -> dict[str, Any]:
    raw = request.get_data(cache=True)
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad_request("invalid-json", "The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("invalid-json", "The request body must be a JSON object")
    return body


@bp.get("/account")
def account(user_id: str) -> Response:
    return jsonify(balance="100.00", accountType="pre-pay")


def _empty(status: int, location: str | None = None) -> Response:
    """A success without a body: no content type either (Flask's default is HTML). A
    ``Location`` is absolute, as some of the provider's clients need it."""
    response = Response(status=status)
    del response.headers["Content-Type"]
    if location is not None:
        response.headers["Location"] = request.host_url.rstrip("/") + location
    return response


@bp.post("/conferences")
def create_conference(user_id: str) -> Response:
    conference_id = _emulator().create(user_id, _body())
    return _empty(201, f"/v1/users/{user_id}/conferences/{conference_id}")


@bp.get("/conferences/<conference_id>")
def get_conference(user_id: str, conference_id: str) -> Response:
    store = _emulator().store
    with store.lock:
        return jsonify(store.conference_json(store.get(conference_id)))


@bp.post("/conferences/<conference_id>")
def update_conference(user_id: str, conference_id: str) -> Response:
    _emulator().update(user_id, conference_id, _body())
    return _empty(200)


@bp.post("/conferences/<conference_id>/audio")
def conference_audio(user_id: str, conference_id: str) -> Response:
    _emulator().audio(user_id, conference_id, _body())
    return _empty(200)


@bp.get("/conferences/<conference_id>/members")
def list_members(user_id: str, conference_id: str) -> Response:
    store = _emulator().store
    with store.lock:
        conference = store.get(conference_id)
        return jsonify([store.member_json(user_id, m) for m in conference.members.values()])


@bp.post("/conferences/<conference_id>/members")
def add_member(user_id: str, conference_id: str) -> Response:
    member_id = _emulator().add_member(user_id, conference_id, _body())
    return _empty(201, f"/v1/users/{user_id}/conferences/{conference_id}/members/{member_id}")


@bp.get("/conferences/<conference_id>/members/<member_id>")
def get_member(user_id: str, conference_id: str, member_id: str) -> Response:
    store = _emulator().store
    with store.lock:
        return jsonify(store.member_json(user_id, store.member(conference_id, member_id)))


@bp.post("/conferences/<conference_id>/members/<member_id>")
def update_member(user_id: str, conference_id: str, member_id: str) -> Response:
    _emulator().update_member(user_id, conference_id, member_id, _body())
    return _empty(200)


@bp.post("/conferences/<conference_id>/members/<member_id>/audio")
def member_audio(user_id: str, conference_id: str, member_id: str) -> Response:
    _emulator().member_audio(user_id, conference_id, member_id, _body())
    return _empty(200)


# -- the emulator's own controls --------------------------------------------------------------

@control.before_request
def _authenticate_control() -> None:
    """The controls make the emulator call out (scenarios) and show every callback URL with
    its key (the logs): they need the emulator's credentials too. Only ``idle`` is open."""
    if request.endpoint != "control.idle":
        _check_credentials()


@control.get("/deliveries")
def deliveries() -> Response:
    deliverer = _emulator().deliverer
    conference = request.args.get("conferenceId")
    with deliverer.cond:
        rows = [r for r in deliverer.log if conference in (None, r["conferenceId"])]
    return jsonify(data=rows)


@control.get("/events")
def emitted_events() -> Response:
    deliverer = _emulator().deliverer
    conference = request.args.get("conferenceId")
    with deliverer.cond:
        rows = [dict(r) for r in deliverer.events if conference in (None, r["conferenceId"])]
    return jsonify(data=rows)


@control.delete("/deliveries")
def clear_deliveries() -> Response:
    _emulator().deliverer.clear()
    return Response(status=204)


@control.get("/idle")
def idle() -> Response:
    try:
        wait = min(float(request.args.get("wait", "0")), 60.0)
    except ValueError:
        raise bad_request("invalid-property", "wait must be seconds") from None
    deliverer = _emulator().deliverer
    # Scenarios first: a running one still emits events after the deliverer drains.
    done = _emulator().scenarios.wait_idle(wait) and deliverer.wait_idle(wait)
    return jsonify(idle=done, pending=deliverer.pending)


@control.get("/faults")
def get_faults() -> Response:
    return jsonify(_emulator().deliverer.set_faults({}))


@control.post("/faults")
def set_faults() -> Response:
    body = _body()
    unknown = sorted(set(body) - set(FAULTS))
    bad = [k for k, v in body.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0]
    if unknown or bad:
        raise bad_request("invalid-property", f"faults are non-negative integers named "
                          f"{', '.join(FAULTS)}", (unknown or bad)[0], "")
    return jsonify(_emulator().deliverer.set_faults(body))


@control.post("/scenarios")
def start_scenario() -> tuple[Response, int]:
    scenario = Scenario.from_json(_body())
    run = _emulator().scenarios.start(scenario)
    return jsonify(run.summary()), 202


@control.get("/scenarios/<int:run_id>")
def get_scenario(run_id: int) -> Response:
    run = _emulator().scenarios.get(run_id)
    if run is None:
        raise ProviderError(404, "not-found", "scenario-not-found", "No such scenario")
    return jsonify(run.summary())


def create_app(config: EmulatorConfig | None = None) -> Flask:
    """Build the emulator app."""
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    emulator = Emulator(config or EmulatorConfig())
    app.extensions["emulator"] = emulator
    app.register_blueprint(bp)
    app.register_blueprint(control)

    @app.before_request
    def _base_url() -> None:
        emulator.store.base_url = request.host_url.rstrip("/")

    @app.errorhandler(ProviderError)
    def _provider_error(exc: ProviderError) -> Response:
        response = jsonify(exc.body())
        response.status_code = exc.status
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        category = {404: "not-found", 405: "method-not-allowed"}.get(status, "bad-request")
        response = jsonify(category=category, code=category, message=exc.description,
                           details=[])
        response.status_code = status
        return response

    return app
