"""The provider may call back before its 201 reaches us: over real HTTP, nothing is lost."""

from __future__ import annotations

from flask.testing import FlaskClient

from tests import events as ev
from tests.conftest import AUTH
from tests.fakeprovider import Answer, FakeProvider
from tests.servers import ThreadedServer


def test_callback_that_outruns_the_201_is_matched(client: FlaskClient, provider: FakeProvider,
                                                  live_app: ThreadedServer) -> None:
    created = {k: v for k, v in ev.conference("", "created").items() if k != "conferenceId"}
    joined = {k: v for k, v in ev.member("", "m-1", "active", "2024-05-01T10:00:01Z",
                                         active=1).items() if k != "conferenceId"}
    provider.queue(Answer(callbacks_first=[created, joined]))
    response = client.post("/api/v1/conferences", json={"from": "+19195551212", "tag": "t1"},
                           headers=AUTH)
    assert response.status_code == 201
    conference = response.get_json()
    # The events arrived (and were committed) while our create call was still waiting.
    assert conference["conferenceId"] == "conf-1"
    assert conference["state"] == "active"
    events = client.get(f"/api/v1/conferences/{conference['id']}/events",
                        headers=AUTH).get_json()["data"]
    assert [(e["eventType"], e["match"], e["conferenceId"]) for e in events] == [
        ("conference", "matched", "conf-1"), ("conference-member", "matched", "conf-1")]
    assert conference["activeMembers"] == 1


def test_events_after_a_provider_timeout_revive_the_conference(
        client: FlaskClient, provider: FakeProvider, live_app: ThreadedServer) -> None:
    created = {k: v for k, v in ev.conference("", "created").items() if k != "conferenceId"}
    provider.queue(Answer(callbacks_first=[created], delay_s=3.6))
    response = client.post("/api/v1/conferences", json={"from": "+19195551212"}, headers=AUTH)
    assert response.status_code == 504
    ident = response.get_json()["error"]["details"]["conference"]
    conference = client.get(f"/api/v1/conferences/{ident}", headers=AUTH).get_json()
    # The provider did create it, as its callback proved: the view follows the evidence.
    assert (conference["state"], conference["conferenceId"]) == ("created", "conf-1")
    assert conference["error"]["code"] == "provider_timeout"
