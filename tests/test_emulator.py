"""The provider emulator against the provider's API description, and its callbacks."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, Response, request
from flask.testing import FlaskClient

from app.emulator import EmulatorConfig, create_app
from tests.servers import ThreadedServer

USER = "u-emu"
BASE = f"/v1/users/{USER}"
BASIC = {"Authorization": "Basic " + base64.b64encode(b"tok:sec").decode()}


class Receiver:
    """A callback receiver on loopback that records every request and answers as told."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.status: dict[str, int] = {}
        self.lock = threading.Lock()
        app = Flask("receiver")

        @app.route("/<path:path>", methods=["GET", "POST"])
        def hook(path: str) -> Response:
            with self.lock:
                self.calls.append({"path": path, "method": request.method,
                                   "json": request.get_json(silent=True),
                                   "args": dict(request.args),
                                   "auth": request.headers.get("Authorization")})
            return Response(status=self.status.get(path, 204))

        self.server = ThreadedServer(app).start()
        self.url = self.server.url

    def events(self, path: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [c["json"] or c["args"] for c in self.calls
                    if path is None or c["path"] == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.server.stop()


@pytest.fixture
def emulator() -> Flask:
    return create_app(EmulatorConfig(user_id=USER, token="tok", secret="sec", retries=1,
                                     retry_delay_s=0.05, media_ms=20))


@pytest.fixture
def emu(emulator: Flask) -> FlaskClient:
    return emulator.test_client()


def idle(emu: FlaskClient) -> None:
    assert emu.get("/_emulator/idle?wait=10").get_json()["idle"] is True


def make(emu: FlaskClient, receiver: Receiver | None = None, **body: Any) -> str:
    body.setdefault("from", "+19195551212")
    if receiver is not None:
        body.setdefault("callbackUrl", f"{receiver.url}/cb")
        body.setdefault("fallbackUrl", f"{receiver.url}/fb")
    response = emu.post(f"{BASE}/conferences", json=body, headers=BASIC)
    assert response.status_code == 201, response.get_json()
    assert response.data == b"" and "Content-Type" not in response.headers
    location = response.headers["Location"]
    # Absolute, as the provider's .NET and Java clients need it.
    assert location.startswith(f"http://localhost{BASE}/conferences/")
    return location.rsplit("/", 1)[1]


def add(emu: FlaskClient, cid: str, call: str, **body: Any) -> str:
    response = emu.post(f"{BASE}/conferences/{cid}/members", json={"callId": call, **body},
                        headers=BASIC)
    assert response.status_code == 201, response.get_json()
    return response.headers["Location"].rsplit("/", 1)[1]


# -- auth and errors --------------------------------------------------------------------------

@pytest.mark.parametrize(("headers", "path", "status"), [
    ({}, BASE, 401),
    ({"Authorization": "Basic " + base64.b64encode(b"tok:wrong").decode()}, BASE, 401),
    ({"Authorization": "Basic !!!"}, BASE, 401),
    ({"Authorization": "Bearer tok"}, BASE, 401),
    (BASIC, "/v1/users/someone-else", 403),
])
def test_api_requires_basic_auth_for_the_user(emu: FlaskClient, headers: dict[str, str],
                                              path: str, status: int) -> None:
    response = emu.post(f"{path}/conferences", json={"from": "+19195551212"}, headers=headers)
    assert response.status_code == status
    body = response.get_json()
    assert set(body) >= {"category", "code", "message"}


@pytest.mark.parametrize(("body", "code", "name"), [
    ({}, "missing-property", "from"),
    ({"from": "919"}, "invalid-number", "from"),
    ({"from": "+19195551212", "callbackHttpMethod": "PUT"}, "invalid-property",
     "callbackHttpMethod"),
    ({"from": "+19195551212", "callbackTimeout": 10001}, "invalid-property",
     "callbackTimeout"),
    ({"from": "+19195551212", "callbackUrl": "not a url"}, "invalid-property", "callbackUrl"),
    ({"from": "+19195551212", "tag": "x" * 257}, "invalid-property", "tag"),
])
def test_validation_errors_use_the_provider_error_format(emu: FlaskClient, body: dict,
                                                          code: str, name: str) -> None:
    response = emu.post(f"{BASE}/conferences", json=body, headers=BASIC)
    assert response.status_code == 400
    error = response.get_json()
    assert (error["category"], error["code"]) == ("bad-request", code)
    assert error["details"][0]["name"] == name


def test_malformed_json_and_unknown_ids(emu: FlaskClient) -> None:
    response = emu.post(f"{BASE}/conferences", data=b"{", headers=BASIC,
                        content_type="application/json")
    assert (response.status_code, response.get_json()["code"]) == (400, "invalid-json")
    response = emu.get(f"{BASE}/conferences/conf-none", headers=BASIC)
    assert (response.status_code, response.get_json()["category"]) == (404, "not-found")
    cid = make(emu)
    response = emu.get(f"{BASE}/conferences/{cid}/members/member-none", headers=BASIC)
    assert response.status_code == 404


# -- conferences ------------------------------------------------------------------------------

def test_get_conference_shows_what_was_set(emu: FlaskClient) -> None:
    cid = make(emu, callbackUrl="http://127.0.0.1:9/cb", callbackHttpMethod="get",
               callbackTimeout="2000", tag="t")
    body = emu.get(f"{BASE}/conferences/{cid}", headers=BASIC).get_json()
    assert body["id"] == cid
    assert body["state"] == "created"
    assert body["from"] == "+19195551212"
    assert body["callbackUrl"] == "http://127.0.0.1:9/cb"
    assert body["callbackHttpMethod"] == "GET"
    assert body["callbackTimeout"] == 2000
    assert body["tag"] == "t"
    assert body["activeMembers"] == 0
    assert body["createdTime"].endswith("Z")


def test_created_event_is_posted_as_json_with_the_tag(emu: FlaskClient,
                                                      receiver: Receiver) -> None:
    cid = make(emu, receiver, tag="weekly")
    idle(emu)
    [event] = receiver.events("cb")
    assert event["eventType"] == "conference"
    assert event["status"] == "created"
    assert event["conferenceId"] == cid
    assert event["tag"] == "weekly"
    assert event["conferenceUri"].endswith(f"{BASE}/conferences/{cid}")
    assert receiver.calls[0]["method"] == "POST"


def test_get_callbacks_carry_fields_as_query_strings(emu: FlaskClient,
                                                     receiver: Receiver) -> None:
    cid = make(emu, receiver, callbackHttpMethod="GET")
    add(emu, cid, "c-1")
    idle(emu)
    assert [c["method"] for c in receiver.calls] == ["GET", "GET"]
    member = receiver.calls[1]["args"]
    assert member["activeMembers"] == "1" and member["mute"] == "false"


def test_basic_auth_in_the_callback_url_is_sent(emu: FlaskClient, receiver: Receiver) -> None:
    host = receiver.url.split("//", 1)[1]
    make(emu, callbackUrl=f"http://hook:pa55@{host}/cb")
    idle(emu)
    assert receiver.calls[0]["auth"] == "Basic " + base64.b64encode(b"hook:pa55").decode()
    log = emu.get("/_emulator/deliveries", headers=BASIC).get_json()["data"]
    assert "pa55" not in log[0]["url"]


def test_failing_callback_falls_back_and_then_retries(emu: FlaskClient,
                                                      receiver: Receiver) -> None:
    receiver.status["cb"] = 500
    receiver.status["fb"] = 503
    make(emu, receiver)
    idle(emu)
    # callback, fallback, then one retry of both
    assert [c["path"] for c in receiver.calls] == ["cb", "fb", "cb", "fb"]
    log = emu.get("/_emulator/deliveries", headers=BASIC).get_json()["data"]
    assert [(r["channel"], r["status"], r["attempt"], r["fallbackUsed"]) for r in log] == [
        ("callback", 500, 1, False), ("fallback", 503, 1, True),
        ("callback", 500, 2, False), ("fallback", 503, 2, True)]
    assert all(r["latencyMs"] >= 0 for r in log)
    [record] = emu.get("/_emulator/events", headers=BASIC).get_json()["data"]
    assert record["outcome"] == "failed"


def test_slow_callback_times_out_and_uses_the_fallback(emu: FlaskClient,
                                                       receiver: Receiver) -> None:
    slow = Flask("slow")

    @slow.post("/cb")
    def answer_late() -> Response:
        time.sleep(0.5)
        return Response(status=204)

    server = ThreadedServer(slow).start()
    try:
        make(emu, callbackUrl=f"{server.url}/cb", fallbackUrl=f"{receiver.url}/fb",
             callbackTimeout=100)
        idle(emu)
    finally:
        server.stop()
    log = emu.get("/_emulator/deliveries", headers=BASIC).get_json()["data"]
    assert [(r["channel"], r["error"]) for r in log] == [("callback", "timeout"),
                                                        ("fallback", None)]
    assert len(receiver.events("fb")) == 1


# -- members, audio, termination ---------------------------------------------------------------

def test_members_join_change_and_leave(emu: FlaskClient, receiver: Receiver) -> None:
    cid = make(emu, receiver, tag="t")
    first = add(emu, cid, "c-1")
    second = add(emu, cid, "c-2", mute=True)
    conference = emu.get(f"{BASE}/conferences/{cid}", headers=BASIC).get_json()
    assert (conference["state"], conference["activeMembers"]) == ("active", 2)
    members = emu.get(f"{BASE}/conferences/{cid}/members", headers=BASIC).get_json()
    assert [m["id"] for m in members] == [first, second]
    member = emu.get(f"{BASE}/conferences/{cid}/members/{second}", headers=BASIC).get_json()
    assert member["mute"] is True and member["state"] == "active"
    assert member["call"].endswith(f"/v1/users/{USER}/calls/c-2")
    assert emu.post(f"{BASE}/conferences/{cid}/members/{first}", json={"hold": "true"},
                    headers=BASIC).status_code == 200
    for member_id in (first, second):
        assert emu.post(f"{BASE}/conferences/{cid}/members/{member_id}",
                        json={"state": "completed"}, headers=BASIC).status_code == 200
    idle(emu)
    events = receiver.events("cb")
    assert [(e["eventType"], e.get("state") or e.get("status"), e.get("activeMembers"))
            for e in events] == [
        ("conference", "created", None),
        ("conference-member", "active", 1), ("conference-member", "active", 2),
        ("conference-member", "active", 2),
        ("conference-member", "completed", 1), ("conference-member", "completed", 0),
        ("conference", "completed", None)]
    assert events[3]["hold"] is True and events[3]["memberId"] == first
    assert all(e["tag"] == "t" for e in events)
    assert events[-1]["completedTime"].endswith("Z")
    final = emu.get(f"{BASE}/conferences/{cid}", headers=BASIC).get_json()
    assert final["state"] == "completed"
    response = emu.post(f"{BASE}/conferences/{cid}/members", json={"callId": "c-3"},
                        headers=BASIC)
    assert (response.status_code, response.get_json()["category"],
            response.get_json()["code"]) == (403, "forbidden", "conference-error")


def test_member_rules(emu: FlaskClient) -> None:
    cid = make(emu)
    response = emu.post(f"{BASE}/conferences/{cid}/members", json={}, headers=BASIC)
    assert (response.status_code, response.get_json()["code"]) == (400, "missing-property")
    for n in range(20):
        add(emu, cid, f"c-{n}")
    response = emu.post(f"{BASE}/conferences/{cid}/members", json={"callId": "c-20"},
                        headers=BASIC)
    assert (response.status_code, response.get_json()["category"],
            response.get_json()["code"]) == (403, "limit", "conference-max-members")
    response = emu.post(f"{BASE}/conferences/{cid}/members", json={"callId": "c-1"},
                        headers=BASIC)
    assert response.status_code == 409


def test_audio_and_speech_start_and_finish(emu: FlaskClient, receiver: Receiver) -> None:
    cid = make(emu, receiver)
    response = emu.post(f"{BASE}/conferences/{cid}/audio",
                        json={"fileUrl": "https://a/x.mp3"}, headers=BASIC)
    assert (response.status_code, response.get_json()["code"]) == (403, "conference-error")
    add(emu, cid, "c-1")
    assert emu.post(f"{BASE}/conferences/{cid}/audio", json={"fileUrl": "https://a/x.mp3"},
                    headers=BASIC).status_code == 200
    time.sleep(0.1)
    assert emu.post(f"{BASE}/conferences/{cid}/audio", json={"sentence": "hello"},
                    headers=BASIC).status_code == 200
    time.sleep(0.1)
    for bad in ({}, {"fileUrl": "https://a/x.mp3", "sentence": "both"},
                {"sentence": "x" * 1001}, {"fileUrl": "not a url"}):
        response = emu.post(f"{BASE}/conferences/{cid}/audio", json=bad, headers=BASIC)
        assert response.status_code == 400
    idle(emu)
    media = [(e["eventType"], e["status"]) for e in receiver.events("cb")
             if e["eventType"] in ("conference-playback", "conference-speak")]
    assert media == [("conference-playback", "started"), ("conference-playback", "done"),
                     ("conference-speak", "started"), ("conference-speak", "done")]


def test_terminating_removes_members_then_completes(emu: FlaskClient,
                                                    receiver: Receiver) -> None:
    cid = make(emu, receiver)
    add(emu, cid, "c-1")
    add(emu, cid, "c-2")
    response = emu.post(f"{BASE}/conferences/{cid}", json={"state": "active"}, headers=BASIC)
    assert response.status_code == 400
    assert emu.post(f"{BASE}/conferences/{cid}", json={"state": "completed"},
                    headers=BASIC).status_code == 200
    idle(emu)
    tail = [(e["eventType"], e.get("state") or e.get("status")) for e in receiver.events()][-3:]
    assert tail == [("conference-member", "completed"), ("conference-member", "completed"),
                    ("conference", "completed")]
    response = emu.post(f"{BASE}/conferences/{cid}", json={"mute": True}, headers=BASIC)
    assert (response.status_code, response.get_json()["code"]) == (403, "conference-error")


def test_update_changes_callback_settings(emu: FlaskClient, receiver: Receiver) -> None:
    cid = make(emu, callbackUrl="http://127.0.0.1:9/old")
    assert emu.post(f"{BASE}/conferences/{cid}", json={"callbackUrl": f"{receiver.url}/new",
                                                       "callbackHttpMethod": "GET"},
                    headers=BASIC).status_code == 200
    add(emu, cid, "c-1")
    idle(emu)
    assert [c["path"] for c in receiver.calls][-1] == "new"
    assert receiver.calls[-1]["method"] == "GET"


# -- faults and scenarios ---------------------------------------------------------------------

def test_faults_drop_and_duplicate(emu: FlaskClient, receiver: Receiver) -> None:
    assert emu.post("/_emulator/faults", headers=BASIC,
                    json={"drop": 1, "duplicate": 1}).status_code == 200
    cid = make(emu, receiver)
    add(emu, cid, "c-1")
    idle(emu)
    outcomes = [r["outcome"]
                for r in emu.get("/_emulator/events", headers=BASIC).get_json()["data"]]
    assert outcomes == ["dropped", "delivered"]
    assert len(receiver.events("cb")) == 2  # the member event, twice
    assert receiver.events("cb")[0] == receiver.events("cb")[1]
    response = emu.post("/_emulator/faults", headers=BASIC, json={"explode": 1})
    assert response.status_code == 400


def test_slow_callback_fault_delivers_then_falls_back_however_fast_the_answer(
        emu: FlaskClient, receiver: Receiver) -> None:
    emu.post("/_emulator/faults", headers=BASIC, json={"slowCallback": 1})
    make(emu, receiver)  # the receiver answers at once; the fault still takes it as too late
    idle(emu)
    log = emu.get("/_emulator/deliveries", headers=BASIC).get_json()["data"]
    assert [(r["channel"], r["status"], r["error"]) for r in log] == [
        ("callback", None, "timeout"), ("fallback", 204, None)]
    assert receiver.events("cb") == receiver.events("fb")  # the same event, both ways


def test_early_fault_delivers_before_answering(emu: FlaskClient, receiver: Receiver) -> None:
    emu.post("/_emulator/faults", headers=BASIC, json={"early": 1})
    make(emu, receiver)
    assert len(receiver.events("cb")) == 1  # already there when the 201 came back


def test_scenario_plays_a_whole_conference(emu: FlaskClient, receiver: Receiver) -> None:
    response = emu.post("/_emulator/scenarios", headers=BASIC, json={
        "create": {"from": "+19195551212", "callbackUrl": f"{receiver.url}/cb", "tag": "s"},
        "members": 2, "stepMs": 5})
    assert response.status_code == 202
    run_id = response.get_json()["id"]
    idle(emu)
    run = emu.get(f"/_emulator/scenarios/{run_id}", headers=BASIC).get_json()
    assert run["status"] == "done" and run["error"] is None
    kinds = [(e["eventType"], e.get("state") or e.get("status")) for e in receiver.events()]
    assert kinds[0] == ("conference", "created") and kinds[-1] == ("conference", "completed")
    assert ("conference-speak", "done") in kinds and ("conference-playback", "done") in kinds
    assert sum(1 for k in kinds if k == ("conference-member", "completed")) == 2
    assert emu.post("/_emulator/scenarios", headers=BASIC, json={"members": 2}).status_code == 400
    assert emu.post("/_emulator/scenarios", headers=BASIC, json={"conferenceId": "conf-none"}
                    ).status_code == 404


def test_audio_events_carry_the_audio_requests_tag_and_empty_values_stop_it(
        receiver: Receiver) -> None:
    # Audio that would play for a minute: only the stop can end it within the test.
    emu = create_app(EmulatorConfig(user_id=USER, token="tok", secret="sec",
                                    media_ms=60_000)).test_client()
    cid = make(emu, receiver, tag="room-7")
    add(emu, cid, "c-1")
    url = f"{BASE}/conferences/{cid}/audio"
    assert emu.post(url, json={"fileUrl": "https://a/x.mp3", "tag": "music-1"},
                    headers=BASIC).status_code == 200
    assert emu.post(url, json={"fileUrl": ""}, headers=BASIC).status_code == 200  # stop
    assert emu.post(url, json={"sentence": ""}, headers=BASIC).status_code == 200  # nothing
    assert emu.post(url, json={"sentence": "hello", "tag": "notice"},
                    headers=BASIC).status_code == 200
    assert emu.post(url, json={"sentence": ""}, headers=BASIC).status_code == 200  # stop
    idle(emu)
    media = [(e["eventType"], e["status"], e.get("tag")) for e in receiver.events("cb")
             if e["eventType"] in ("conference-playback", "conference-speak")]
    assert media == [("conference-playback", "started", "music-1"),
                     ("conference-playback", "done", "music-1"),
                     ("conference-speak", "started", "notice"),
                     ("conference-speak", "done", "notice")]
    others = [e for e in receiver.events("cb") if e["eventType"] in ("conference",
                                                                    "conference-member")]
    assert others and all(e["tag"] == "room-7" for e in others)


def test_audio_to_one_member_is_accepted_and_sends_no_conference_event(
        emu: FlaskClient, receiver: Receiver) -> None:
    cid = make(emu, receiver)
    member = add(emu, cid, "c-1")
    idle(emu)
    before = len(receiver.events("cb"))
    response = emu.post(f"{BASE}/conferences/{cid}/members/{member}/audio",
                        json={"sentence": "just you"}, headers=BASIC)
    assert response.status_code == 200 and "Content-Type" not in response.headers
    response = emu.post(f"{BASE}/conferences/{cid}/members/nobody/audio",
                        json={"sentence": "x"}, headers=BASIC)
    assert (response.status_code, response.get_json()["code"]) == (
        404, "conference-member-not-found")
    assert isinstance(response.get_json()["details"], list)
    idle(emu)
    assert len(receiver.events("cb")) == before


def test_enum_values_in_any_case_and_the_profile(emu: FlaskClient, receiver: Receiver) -> None:
    cid = make(emu, receiver, callbackHttpMethod="post")
    view = emu.get(f"{BASE}/conferences/{cid}", headers=BASIC).get_json()
    assert view["profile"] == "interpret_digits" and view["callbackHttpMethod"] == "POST"
    assert emu.post(f"{BASE}/conferences/{cid}", json={"state": "Completed"},
                    headers=BASIC).status_code == 200
    other = make(emu, profile="passthru_digits")
    assert emu.get(f"{BASE}/conferences/{other}", headers=BASIC).get_json()["profile"] == (
        "passthru_digits")
    response = emu.post(f"{BASE}/conferences", json={"from": "+19195551212",
                                                     "profile": "loud"}, headers=BASIC)
    assert response.status_code == 400


def test_errors_always_carry_a_message_and_a_list_of_details(emu: FlaskClient) -> None:
    response = emu.get(f"{BASE}/conferences/conf-none")
    body = response.get_json()
    assert (response.status_code, body["category"]) == (401, "authentication")
    assert body["message"] and body["details"] == []
    body = emu.get(f"{BASE}/conferences/conf-none", headers=BASIC).get_json()
    assert body["code"] == "conference-not-found" and body["details"] == []


def test_the_controls_need_the_emulators_credentials(emu: FlaskClient) -> None:
    for method, path in (("GET", "/_emulator/deliveries"), ("GET", "/_emulator/events"),
                         ("POST", "/_emulator/scenarios"), ("POST", "/_emulator/faults"),
                         ("DELETE", "/_emulator/deliveries")):
        response = emu.open(path, method=method, json={})
        assert response.status_code == 401, path
    assert emu.get("/_emulator/idle").status_code == 200


def test_a_rate_limit_fault_answers_429_with_the_reset_time(emu: FlaskClient) -> None:
    assert emu.post("/_emulator/faults", headers=BASIC,
                    json={"rateLimit": 1, "rateLimitMs": 5000}).status_code == 200
    before = time.time() * 1000
    response = emu.post(f"{BASE}/conferences", json={"from": "+19195551212"}, headers=BASIC)
    assert response.status_code == 429
    body = response.get_json()
    assert (body["category"], body["code"]) == ("too-many-requests", "rate-limit-reached")
    assert body["message"]
    reset = int(response.headers["X-RateLimit-Reset"])
    assert before + 4000 <= reset <= before + 7000
    assert body["details"] == [{"name": "rateLimitResetTime", "value": str(reset)}]
    assert emu.post(f"{BASE}/conferences", json={"from": "+19195551212"},
                    headers=BASIC).status_code == 201  # only the next one
