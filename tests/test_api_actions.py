"""Conference actions through the provider, with the emulator playing the provider."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from app.emulator import EmulatorConfig
from app.emulator import create_app as create_emulator
from tests.conftest import AUTH, create
from tests.servers import ThreadedServer

USER = "u-test"
BASIC = {"Authorization": "Basic " + base64.b64encode(b"tok:sec").decode()}


@pytest.fixture
def emulator() -> Iterator[ThreadedServer]:
    server = ThreadedServer(create_emulator(EmulatorConfig(
        user_id=USER, token="tok", secret="sec", retries=0, media_ms=10))).start()
    yield server
    server.stop()


@pytest.fixture
def env(env: dict[str, str], emulator: ThreadedServer) -> dict[str, str]:
    return {**env, "CATAPULT_API_URL": emulator.url}


def idle(emulator: ThreadedServer) -> None:
    assert requests.get(f"{emulator.url}/_emulator/idle", params={"wait": 10},
                        timeout=15).json()["idle"]


def play(emulator: ThreadedServer, conference: dict[str, Any], **options: Any) -> None:
    response = requests.post(f"{emulator.url}/_emulator/scenarios", auth=("tok", "sec"),
                             timeout=5, json={
        "conferenceId": conference["conferenceId"], "stepMs": 5, **options})
    assert response.status_code == 202
    idle(emulator)


def provider_view(emulator: ThreadedServer, conference: dict[str, Any]) -> dict[str, Any]:
    return requests.get(f"{emulator.url}/v1/users/{USER}/conferences/"
                        f"{conference['conferenceId']}", headers=BASIC, timeout=5).json()


def test_terminate_ends_the_conference_through_the_provider(
        client: FlaskClient, emulator: ThreadedServer, live_app: ThreadedServer) -> None:
    conference = create(client, tag="ending")
    play(emulator, conference, members=2, playback=False, speak=False, mute=False,
         hold=False, terminate=False)
    # The scenario's members left; start a new one that stays in the conference.
    conference = create(client, tag="ending")
    requests.post(f"{emulator.url}/v1/users/{USER}/conferences/{conference['conferenceId']}"
                  "/members", json={"callId": "c-1"}, headers=BASIC, timeout=5)
    idle(emulator)
    response = client.post(f"/api/v1/conferences/{conference['id']}/terminate", headers=AUTH)
    assert response.status_code == 202
    idle(emulator)
    view = client.get(f"/api/v1/conferences/{conference['id']}", headers=AUTH).get_json()
    assert view["state"] == "completed" and view["activeMembers"] == 0
    assert view["members"][0]["state"] == "completed"
    assert provider_view(emulator, conference)["state"] == "completed"
    again = client.post(f"/api/v1/conferences/{conference['id']}/terminate", headers=AUTH)
    assert again.status_code == 409
    assert again.get_json()["error"]["details"]["providerCode"] == "conference-error"


def test_terminate_needs_a_conference_the_provider_knows(client: FlaskClient,
                                                         app: Flask) -> None:
    from app.catapult import client as provider

    provider(app).base = "http://127.0.0.1:9/v1/users/u"  # the create fails: never created
    response = client.post("/api/v1/conferences", json={"from": "+19195551212"},
                           headers=AUTH)
    ident = response.get_json()["error"]["details"]["conference"]
    for action in ("terminate", "refresh"):
        response = client.post(f"/api/v1/conferences/{ident}/{action}", headers=AUTH)
        assert response.status_code == 409
        assert response.get_json()["error"]["code"] == "not_on_provider"
    assert client.post("/api/v1/conferences/nope/terminate", headers=AUTH).status_code == 404


def test_refresh_reconciles_a_view_whose_callbacks_were_lost(
        client: FlaskClient, emulator: ThreadedServer, live_app: ThreadedServer) -> None:
    conference = create(client, tag="lossy")
    requests.post(f"{emulator.url}/_emulator/faults", auth=("tok", "sec"), json={"drop": 100},
                  timeout=5)
    play(emulator, conference, members=3, terminate=True)
    requests.post(f"{emulator.url}/_emulator/faults", auth=("tok", "sec"), json={"drop": 0},
                  timeout=5)
    before = client.get(f"/api/v1/conferences/{conference['id']}", headers=AUTH).get_json()
    assert before["state"] == "created" and before["members"] == []
    response = client.post(f"/api/v1/conferences/{conference['id']}/refresh", headers=AUTH)
    assert response.status_code == 200
    body = response.get_json()
    assert "state created -> completed" in body["changes"]
    assert sum(1 for c in body["changes"] if c.endswith(" added")) == 3
    view = body["conference"]
    theirs = provider_view(emulator, conference)
    assert (view["state"], view["activeMembers"]) == ("completed", 0)
    assert view["completedTime"] == theirs["completedTime"]
    assert len(view["members"]) == 3
    assert all(m["state"] == "completed" and m["leftAt"] for m in view["members"])
    second = client.post(f"/api/v1/conferences/{conference['id']}/refresh", headers=AUTH)
    assert second.get_json()["changes"] == []


def test_refresh_maps_provider_errors(client: FlaskClient, emulator: ThreadedServer,
                                      app: Flask, live_app: ThreadedServer) -> None:
    conference = create(client)
    from app.catapult import client as provider

    provider(app).session.auth = ("tok", "wrong")
    response = client.post(f"/api/v1/conferences/{conference['id']}/refresh", headers=AUTH)
    assert response.status_code == 502
    assert response.get_json()["error"]["code"] == "provider_auth_failed"


def test_track_a_conference_created_elsewhere(client: FlaskClient, emulator: ThreadedServer,
                                              live_app: ThreadedServer, app: Flask) -> None:
    from app.keys import SHARED, callback_urls

    shared, _ = callback_urls(app.config, SHARED)
    # Another system creates a conference on the provider, pointed at the shared URL, with
    # credentials in the URL that must not be kept.
    elsewhere = shared.replace("http://", "http://who:pw@")
    created = requests.post(f"{emulator.url}/v1/users/{USER}/conferences", headers=BASIC,
                            timeout=5, json={"from": "+19195550000", "tag": "outside",
                                             "callbackUrl": elsewhere,
                                             "callbackHttpMethod": "GET"})
    cid = created.headers["Location"].rsplit("/", 1)[-1]
    requests.post(f"{emulator.url}/v1/users/{USER}/conferences/{cid}/members",
                  json={"callId": "c-1"}, headers=BASIC, timeout=5)
    idle(emulator)
    unmatched = client.get("/api/v1/events", query_string={"match": "unmatched"},
                           headers=AUTH).get_json()["data"]
    assert {e["conferenceId"] for e in unmatched} == {cid} and len(unmatched) == 2

    response = client.post("/api/v1/conferences/track", json={"conferenceId": cid},
                           headers=AUTH)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    conference = body["conference"]
    assert body["created"] is True and body["waitingEvents"] == 2
    assert conference["tag"] == "outside" and conference["from"] == "+19195550000"
    assert conference["callbackHttpMethod"] == "GET" and "pw" not in conference["callbackUrl"]
    assert conference["state"] == "active" and conference["activeMembers"] == 1
    assert [m["callId"] for m in conference["members"]] == ["c-1"]
    assert response.headers["Location"] == f"/api/v1/conferences/{conference['id']}"

    again = client.post("/api/v1/conferences/track", json={"conferenceId": cid}, headers=AUTH)
    assert again.status_code == 200 and again.get_json()["conference"]["id"] == conference["id"]

    report = client.post("/api/v1/events/rematch", json={"conference": cid},
                         headers=AUTH).get_json()
    assert report["matched"] == 2
    # What comes next matches at once.
    requests.post(f"{emulator.url}/v1/users/{USER}/conferences/{cid}", json={
        "state": "completed"}, headers=BASIC, timeout=5)
    idle(emulator)
    view = client.get(f"/api/v1/conferences/{cid}", headers=AUTH).get_json()
    assert view["state"] == "completed" and view["events"]["conflicts"] == 0
    assert client.get("/api/v1/events", query_string={"match": "unmatched"},
                      headers=AUTH).get_json()["data"] == []


def test_track_maps_provider_errors(client: FlaskClient, emulator: ThreadedServer) -> None:
    response = client.post("/api/v1/conferences/track", json={"conferenceId": "conf-nope"},
                           headers=AUTH)
    assert response.status_code == 404
    error = response.get_json()["error"]
    assert error["code"] == "provider_not_found" and error["details"]["conference"] == "conf-nope"
    assert client.post("/api/v1/conferences/track", json={}, headers=AUTH).status_code == 422


def test_the_providers_rate_limit_reaches_the_caller_as_its_reset_time(
        client: FlaskClient, emulator: ThreadedServer, live_app: ThreadedServer) -> None:
    conference = create(client, tag="limited")
    idle(emulator)
    requests.post(f"{emulator.url}/_emulator/faults", auth=("tok", "sec"), timeout=5,
                  json={"rateLimit": 1, "rateLimitMs": 30_000})
    response = client.post(f"/api/v1/conferences/{conference['id']}/refresh", headers=AUTH)
    assert response.status_code == 429
    assert response.get_json()["error"]["code"] == "provider_rate_limited"
    assert 29 <= int(response.headers["Retry-After"]) <= 31
    # A short wait is waited out: the read is retried once the limit resets.
    requests.post(f"{emulator.url}/_emulator/faults", auth=("tok", "sec"), timeout=5,
                  json={"rateLimit": 1, "rateLimitMs": 300})
    response = client.post(f"/api/v1/conferences/{conference['id']}/refresh", headers=AUTH)
    assert response.status_code == 200, response.get_json()


def test_strings_from_the_provider_are_read_as_its_clients_read_them(
        client: FlaskClient, app: Flask) -> None:
    from app import db, reconcile
    from app.models import Conference

    conference = create(client, tag="strings")
    with app.app_context():
        session = db.database().writer()
        row = session.get(Conference, conference["id"])
        assert row is not None
        changes = reconcile.reconcile(
            session, row, {"state": "ACTIVE", "activeMembers": "1"},
            [{"id": "m-1", "state": "Active", "mute": "true", "hold": "false",
              "call": "https://x/v1/users/u/calls/c-1"}])
        session.commit()
        assert "activeMembers 0 -> 1" in changes and "member m-1 added" in changes
    view = client.get(f"/api/v1/conferences/{conference['id']}", headers=AUTH).get_json()
    assert view["state"] == "active" and view["activeMembers"] == 1
    assert [(m["memberId"], m["mute"], m["hold"]) for m in view["members"]] == [
        ("m-1", True, False)]
