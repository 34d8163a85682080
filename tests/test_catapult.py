"""The provider client against a real HTTP server that plays the provider."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from flask import Flask, Response, jsonify, request

from app.catapult import (
    CatapultAPIError,
    CatapultClient,
    CatapultTimeout,
    CatapultUnavailable,
    id_from_location,
)
from tests.servers import ThreadedServer, free_port


class Script:
    """Answers the next requests in order; remembers what it received."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, object, dict[str, str], float]] = []
        self.seen: list[tuple[str, str, object]] = []


@pytest.fixture
def script() -> Iterator[tuple[Script, str]]:
    state = Script()
    app = Flask("script")

    @app.route("/<path:path>", methods=["GET", "POST"])
    def any_path(path: str) -> Response:
        state.seen.append((request.method, "/" + path, request.get_json(silent=True)))
        status, body, headers, delay = state.answers.pop(0)
        if delay:
            time.sleep(delay)
        response = jsonify(body) if body is not None else Response()
        response.status_code = status
        response.headers.update(headers)
        return response

    server = ThreadedServer(app).start()
    yield state, server.url
    server.stop()


def client_for(url: str, **kw: float) -> CatapultClient:
    return CatapultClient(url, "u-1", "tok", "sec", connect_timeout=1.0,
                          read_timeout=kw.get("read_timeout", 1.0), retries=2)


@pytest.mark.parametrize("location", [
    "/v1/users/u-1/conferences/conf-42",
    "https://api.example.com/v1/users/u-1/conferences/conf-42",
    "/v1/users/u-1/conferences/conf-42/",
])
def test_create_takes_the_id_from_location(location: str) -> None:
    assert id_from_location(location) == "conf-42"


def test_create_sends_json_and_returns_the_new_id(script: tuple[Script, str]) -> None:
    state, url = script
    state.answers.append((201, None, {"Location": "/v1/users/u-1/conferences/conf-7"}, 0))
    created = client_for(url).create_conference({"from": "+19195551212", "tag": "t"})
    assert created.id == "conf-7"
    assert state.seen == [("POST", "/v1/users/u-1/conferences",
                           {"from": "+19195551212", "tag": "t"})]


def test_provider_error_body_is_carried_in_the_error(script: tuple[Script, str]) -> None:
    state, url = script
    state.answers.append((400, {"category": "bad-request", "code": "invalid-number",
                                "message": "from is not a number you own",
                                "details": [{"name": "from", "value": "+1"}]}, {}, 0))
    with pytest.raises(CatapultAPIError) as info:
        client_for(url).create_conference({"from": "+1"})
    error = info.value
    assert (error.status, error.category, error.code) == (400, "bad-request", "invalid-number")
    assert error.message == "from is not a number you own"
    assert error.details == [{"name": "from", "value": "+1"}]


def test_create_is_not_retried_on_5xx(script: tuple[Script, str]) -> None:
    state, url = script
    state.answers.append((503, {"message": "busy"}, {}, 0))
    with pytest.raises(CatapultAPIError) as info:
        client_for(url).create_conference({"from": "+19195551212"})
    assert info.value.status == 503
    assert len(state.seen) == 1  # a retried POST could create a second conference


def test_reads_are_retried_on_5xx(script: tuple[Script, str]) -> None:
    state, url = script
    state.answers.append((503, {"message": "busy"}, {}, 0))
    state.answers.append((200, {"id": "conf-1", "state": "created"}, {}, 0))
    assert client_for(url).get_conference("conf-1")["state"] == "created"
    assert [s[0] for s in state.seen] == ["GET", "GET"]


def test_slow_provider_raises_timeout(script: tuple[Script, str]) -> None:
    state, url = script
    state.answers.append((201, None, {"Location": "/x/conf-1"}, 1.5))
    with pytest.raises(CatapultTimeout):
        client_for(url, read_timeout=0.3).create_conference({"from": "+19195551212"})
    assert len(state.seen) == 1


def test_unreachable_provider_raises_unavailable() -> None:
    with pytest.raises(CatapultUnavailable):
        client_for(f"http://127.0.0.1:{free_port()}").create_conference({"from": "+1"})


def test_create_without_location_is_an_error(script: tuple[Script, str]) -> None:
    state, url = script
    state.answers.append((201, None, {}, 0))
    with pytest.raises(CatapultUnavailable):
        client_for(url).create_conference({"from": "+19195551212"})


def _reset_in(seconds: float) -> dict[str, str]:
    return {"X-RateLimit-Reset": str(int((time.time() + seconds) * 1000))}


def test_a_read_waits_for_the_rate_limit_to_reset_then_is_retried(
        script: tuple[Script, str]) -> None:
    state, url = script
    limited = {"category": "too-many-requests", "code": "rate-limit", "message": "slow down"}
    state.answers += [(429, limited, _reset_in(0.6), 0), (200, {"id": "c-1"}, {}, 0)]
    began = time.monotonic()
    assert client_for(url).get_conference("c-1") == {"id": "c-1"}
    assert 0.4 <= time.monotonic() - began < 3  # it waited for the reset, not 0.2 s
    assert len(state.seen) == 2


def test_a_rate_limit_past_the_callers_patience_is_raised_saying_when(
        script: tuple[Script, str]) -> None:
    state, url = script
    state.answers += [(429, {"code": "rate-limit"}, _reset_in(42), 0)]
    began = time.monotonic()
    with pytest.raises(CatapultAPIError) as caught:
        client_for(url).get_conference("c-1")
    assert time.monotonic() - began < 1 and len(state.seen) == 1  # no retry, no wait
    assert caught.value.status == 429 and 41 <= int(caught.value.retry_after or 0) <= 43


def test_a_create_refused_by_the_rate_limit_is_not_retried(script: tuple[Script, str]) -> None:
    state, url = script
    state.answers += [(429, {"code": "rate-limit"}, {"Retry-After": "1"}, 0)]
    with pytest.raises(CatapultAPIError) as caught:
        client_for(url).create_conference({"from": "+19195551212"})
    assert caught.value.retry_after == "1" and len(state.seen) == 1
