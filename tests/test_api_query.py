"""The query API: filters, pagination edges, views, members, export, re-match, stats."""

from __future__ import annotations

import csv
import io
import json
import logging
from typing import Any

import pytest
from flask.testing import FlaskClient

from app.keys import callback_key
from tests import events as ev
from tests.conftest import AUTH, SECRET, TOKEN, create
from tests.events import T0, deliver, life

SHARED = f"/callbacks/callback/shared/{callback_key(SECRET, 'shared')}"


def get(client: FlaskClient, url: str, **params: Any) -> Any:
    response = client.get(url, query_string=params, headers=AUTH)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def bad(client: FlaskClient, url: str, **params: Any) -> dict[str, Any]:
    response = client.get(url, query_string=params, headers=AUTH)
    assert response.status_code == 400, response.get_json()
    return response.get_json()["error"]  # type: ignore[no-any-return]


def every_page(client: FlaskClient, url: str, **params: Any) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        body = get(client, url, **query)
        pages.append(body["data"])
        cursor = body["nextCursor"]
        if cursor is None:
            return pages


@pytest.fixture
def world(client: FlaskClient) -> dict[str, Any]:
    """Three conferences with events: one played to the end, one live, one with problems."""
    done = create(client, tag="weekly")
    live = create(client, tag="daily", callbackHttpMethod="GET")
    odd = create(client, tag="odd")
    for event in life(done["conferenceId"]):
        deliver(client, done["callbackUrl"], event)
    deliver(client, done["fallbackUrl"], life(done["conferenceId"])[1])  # a duplicate
    cid = live["conferenceId"]
    deliver(client, live["callbackUrl"], ev.conference(cid, "created", tag="daily"), "GET")
    deliver(client, live["fallbackUrl"],
            ev.member(cid, "m-9", "active", "2024-05-01T11:00:00Z", active=1, tag="daily"),
            "GET")
    deliver(client, odd["callbackUrl"],
            ev.member(odd["conferenceId"], "m-1", "active", T0, active=1, tag="wrong"))
    client.post(SHARED, json=ev.media("speak", "conf-unknown", "done", T0))
    return {"done": done, "live": live, "odd": odd}


# -- conferences --------------------------------------------------------------------------------

def test_conferences_newest_first_and_filtered(client: FlaskClient,
                                               world: dict[str, Any]) -> None:
    url = "/api/v1/conferences"
    ids = [c["id"] for c in get(client, url)["data"]]
    assert ids == [world["odd"]["id"], world["live"]["id"], world["done"]["id"]]
    assert [c["id"] for c in get(client, url, sort="createdAt")["data"]] == ids[::-1]
    assert [c["id"] for c in get(client, url, tag="daily")["data"]] == [world["live"]["id"]]
    states = get(client, url, state="completed,active")["data"]
    assert {c["id"] for c in states} == {world["done"]["id"], world["live"]["id"]}
    conflicted = get(client, url, hasConflicts="true")["data"]
    assert [c["id"] for c in conflicted] == [world["odd"]["id"]]
    assert len(get(client, url, hasConflicts="false")["data"]) == 2
    created = world["done"]["createdAt"]
    after = get(client, url, createdAfter=created, sort="createdAt")["data"]
    assert [c["id"] for c in after] == ids[::-1]
    assert get(client, url, createdBefore=created)["data"] == []
    done = get(client, url, completedAfter="2024-05-01T12:05:00+02:00")["data"]
    assert [c["id"] for c in done] == [world["done"]["id"]]
    assert get(client, url, completedBefore="2024-05-01T10:05:00Z")["data"] == []
    assert get(client, url, tag="nobody") == {"data": [], "nextCursor": None}


def test_has_unmatched_finds_the_conference_its_events_name(client: FlaskClient) -> None:
    # The event names conf-1 before any conference here has that provider id.
    client.post(SHARED, json=ev.conference("conf-1", "created", tag="late"))
    conference = create(client, tag="late")  # the fake provider's conf-1
    other = create(client)
    found = get(client, "/api/v1/conferences", hasUnmatched="true")["data"]
    assert [c["id"] for c in found] == [conference["id"]]
    rest = get(client, "/api/v1/conferences", hasUnmatched="false")["data"]
    assert [c["id"] for c in rest] == [other["id"]]


def test_conference_pages_cover_everything_once(client: FlaskClient) -> None:
    made = [create(client, tag="paged")["id"] for _ in range(7)]
    pages = every_page(client, "/api/v1/conferences", limit=3, tag="paged")
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [c["id"] for p in pages for c in p] == made[::-1]
    exact = every_page(client, "/api/v1/conferences", limit=7, tag="paged")
    assert [len(p) for p in exact] == [7]  # a full last page has no next cursor


def test_conference_list_rejects_bad_parameters_by_name(client: FlaskClient) -> None:
    url = "/api/v1/conferences"
    for params, name in (({"limit": 0}, "limit"), ({"limit": 1001}, "limit"),
                         ({"limit": "many"}, "limit"), ({"state": "sleeping"}, "state"),
                         ({"createdAfter": "yesterday"}, "createdAfter"),
                         ({"sort": "tag"}, "sort"), ({"colour": "red"}, "colour"),
                         ({"hasConflicts": "perhaps"}, "hasConflicts"),
                         ({"cursor": "garbage"}, "cursor")):
        error = bad(client, url, **params)
        assert error["code"] == "invalid_parameter"
        assert name in error["details"], (params, error)


def test_nul_characters_are_refused_before_any_lookup(client: FlaskClient) -> None:
    # PostgreSQL stores no NUL character; each must be a 400 on either database, not a 503.
    for url, params, name in (("/api/v1/events", {"tag": "a\x00b"}, "tag"),
                              ("/api/v1/events", {"memberId": "\x00"}, "memberId"),
                              ("/api/v1/conferences", {"tag": "\x00"}, "tag"),
                              ("/api/v1/conferences/c%00f", {}, "path"),
                              ("/api/v1/conferences/c%00f/events", {}, "path")):
        error = bad(client, url, **params)
        assert error["details"] == {name: "NUL character"}, (url, error)
    response = client.post("/api/v1/conferences", headers=AUTH,
                           json={"from": "+19195551212", "tag": "ok", "x": ["\x00"]})
    assert response.status_code == 422
    assert response.get_json()["error"]["details"] == {"x[0]": "NUL character or lone surrogate"}


def test_cursor_from_another_query_is_refused(client: FlaskClient) -> None:
    for _ in range(3):
        create(client, tag="a")
    cursor = get(client, "/api/v1/conferences", limit=1, tag="a")["nextCursor"]
    error = bad(client, "/api/v1/conferences", limit=1, tag="b", cursor=cursor)
    assert "another query" in error["details"]["cursor"]
    # The same filters with another page size may continue.
    assert get(client, "/api/v1/conferences", limit=5, tag="a", cursor=cursor)["data"]


def test_conference_view_counts_events(client: FlaskClient, world: dict[str, Any]) -> None:
    view = get(client, f"/api/v1/conferences/{world['done']['id']}")
    assert view["state"] == "completed"
    assert view["events"] == {
        "total": 12, "byType": {"conference": 2, "conference-member": 6,
                                "conference-playback": 2, "conference-speak": 2},
        "deliveries": 13, "duplicates": 1, "fallbacks": 1, "conflicts": 0, "invalid": 0,
        "unknownType": 0}
    odd = get(client, f"/api/v1/conferences/{world['odd']['id']}")
    assert odd["events"]["conflicts"] == 1 and odd["members"] == []


def test_conference_view_supports_conditional_requests(client: FlaskClient,
                                                       world: dict[str, Any]) -> None:
    url = f"/api/v1/conferences/{world['live']['id']}"
    first = client.get(url, headers=AUTH)
    assert first.headers["ETag"] and first.headers["Last-Modified"]
    again = client.get(url, headers={**AUTH, "If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
    cid = world["live"]["conferenceId"]
    deliver(client, world["live"]["callbackUrl"],
            ev.member(cid, "m-9", "active", "2024-05-01T11:05:00Z", active=1, mute=True,
                      tag="daily"), "GET")
    changed = client.get(url, headers={**AUTH, "If-None-Match": first.headers["ETag"]})
    assert changed.status_code == 200


def test_members_have_durations_and_history(client: FlaskClient,
                                            world: dict[str, Any]) -> None:
    members = get(client, f"/api/v1/conferences/{world['done']['id']}/members")["data"]
    first, second = members
    assert first["memberId"] == "m-1" and first["durationSeconds"] == 295.0
    assert second["durationSeconds"] == 351.0
    assert [(h["time"], h["state"], h["mute"], h["hold"]) for h in second["history"]] == [
        ("2024-05-01T10:00:09.000Z", "active", False, False),
        ("2024-05-01T10:01:00.000Z", "active", True, False),
        ("2024-05-01T10:06:00.000Z", "completed", True, False)]
    live = get(client, f"/api/v1/conferences/{world['live']['id']}/members")["data"]
    assert live[0]["leftAt"] is None and live[0]["durationSeconds"] > 0


# -- events -----------------------------------------------------------------------------------

def test_event_filters(client: FlaskClient, world: dict[str, Any]) -> None:
    url = "/api/v1/events"
    everything = get(client, url, limit=1000)["data"]
    assert len(everything) == 12 + 2 + 1 + 1

    def ids(**params: Any) -> set[int]:
        return {e["id"] for e in get(client, url, limit=1000, **params)["data"]}

    def where(predicate: Any) -> set[int]:
        return {e["id"] for e in everything if predicate(e)}

    assert ids(eventType="conference-speak") == where(
        lambda e: e["eventType"] == "conference-speak")
    assert ids(eventType="conference,conference-playback") == where(
        lambda e: e["eventType"] in ("conference", "conference-playback"))
    assert ids(tag="weekly", eventType="conference-member") == where(
        lambda e: e["tag"] == "weekly" and e["eventType"] == "conference-member")
    assert ids(conference=world["live"]["id"]) == ids(
        conference=world["live"]["conferenceId"]) == where(
        lambda e: e["conference"] == world["live"]["id"])
    assert ids(memberId="m-2") == where(lambda e: e["memberId"] == "m-2")
    assert ids(callId="c-m-9") == where(lambda e: e["callId"] == "c-m-9")
    assert ids(match="conflict,unmatched") == where(lambda e: e["match"] != "matched")
    assert len(ids(match="unmatched")) == 1
    assert ids(channel="fallback") == where(lambda e: "fallback" in e["channels"])
    assert ids(since="2024-05-01T12:05:00+02:00") == where(
        lambda e: e["eventTime"] and e["eventTime"] >= "2024-05-01T10:05:00")
    assert ids(until="2024-05-01T10:00:05Z", since="2024-05-01T10:00:00Z") == where(
        lambda e: e["eventTime"] and "2024-05-01T10:00:00" <= e["eventTime"]
        < "2024-05-01T10:00:05")
    assert ids(unknownType="true") == set()
    assert get(client, url, conference=world["done"]["id"], eventType="nothing") == {
        "data": [], "nextCursor": None}
    response = client.get(url, query_string={"conference": "cf-none"}, headers=AUTH)
    assert response.status_code == 404


def test_event_pages_in_both_orders(client: FlaskClient, world: dict[str, Any]) -> None:
    url = f"/api/v1/conferences/{world['done']['id']}/events"
    pages = every_page(client, url, limit=5)
    assert [len(p) for p in pages] == [5, 5, 2]
    forward = [e["id"] for p in pages for e in p]
    backward = [e["id"] for p in every_page(client, url, limit=5, order="desc") for e in p]
    assert backward == forward[::-1]
    times = [e["eventTime"] for p in pages for e in p]
    assert times == sorted(times)
    error = bad(client, url, limit=5, order="desc", cursor=get(client, url, limit=5)[
        "nextCursor"])
    assert "cursor" in error["details"]


def test_one_event_and_its_404(client: FlaskClient, world: dict[str, Any]) -> None:
    first = get(client, "/api/v1/events", limit=1)["data"][0]
    assert get(client, f"/api/v1/events/{first['id']}") == first
    response = client.get("/api/v1/events/999999", headers=AUTH)
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


def test_export_streams_the_whole_filtered_set(client: FlaskClient,
                                               world: dict[str, Any]) -> None:
    listed = get(client, "/api/v1/events", limit=1000, tag="weekly")["data"]
    response = client.get("/api/v1/events/export", query_string={"tag": "weekly"},
                          headers=AUTH)
    assert response.status_code == 200 and response.is_streamed
    assert response.mimetype == "application/x-ndjson"
    lines = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    assert lines == listed
    response = client.get("/api/v1/events/export",
                          query_string={"format": "csv", "conference": world["done"]["id"],
                                        "order": "desc"}, headers=AUTH)
    assert response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [int(r["id"]) for r in rows] == [e["id"] for e in listed][::-1]
    assert json.loads(rows[0]["payload"])["eventType"] == "conference"
    assert rows[-1]["channels"] == "callback"


def test_csv_export_defuses_formulas(client: FlaskClient) -> None:
    client.post(SHARED, json={"eventType": "odd", "status": "=HYPERLINK(\"x\")"})
    response = client.get("/api/v1/events/export", query_string={"format": "csv"},
                          headers=AUTH)
    row = next(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert row["status"].startswith("'=")


# -- the indexes of events not matched ----------------------------------------------------------

def test_queries_of_events_not_matched_use_their_partial_indexes(app: Any,
                                                                 client: FlaskClient) -> None:
    """The indexes of ``match`` and of the provider's conference id hold only the events not
    matched; each query of such events, as the app sends it, is served by one of them."""
    from sqlalchemy import event as sa_event

    from app import conferences, queries
    from app.db import database, read_session

    client.post(SHARED, json=ev.member("conf-1", "m-1", "active", T0, active=1))
    engine = database(app).engine
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "'matched'" in statement:
            sent.append((statement, parameters))

    sa_event.listen(engine, "before_cursor_execute", capture)
    try:
        get(client, "/api/v1/events", match="unmatched,conflict")
        get(client, "/api/v1/conferences", hasUnmatched="true")
        assert 'confhook_events_needing_attention{match="unmatched"} 1.0' in client.get(
            "/metrics").get_data(as_text=True)
        with app.app_context():
            session = read_session()
            assert queries.problem_counts(session)["unmatched"] == 1
            assert conferences._waiting(session, "conf-1") == 1
    finally:
        sa_event.remove(engine, "before_cursor_execute", capture)
    assert len(sent) == 5
    with engine.connect() as conn:
        postgres = engine.dialect.name == "postgresql"
        if postgres:  # tables this small are scanned whole whatever their indexes
            conn.exec_driver_sql("SET enable_seqscan = off")
        for statement, parameters in sent:
            prefix = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
            plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(prefix + statement,
                                                                         parameters))
            assert "ix_event_unfiled_" in plan, (statement, plan)


# -- re-match -----------------------------------------------------------------------------------

def test_rematch_attaches_an_event_once_its_conference_is_known(client: FlaskClient) -> None:
    # The event names conf-1 before the conference exists here.
    client.post(SHARED, json=ev.member("conf-1", "m-1", "active", T0, active=1, tag="late"))
    [event] = get(client, "/api/v1/events", match="unmatched")["data"]
    conference = create(client, tag="late")
    assert conference["conferenceId"] == "conf-1"
    response = client.post(f"/api/v1/events/{event['id']}/rematch", headers=AUTH)
    body = response.get_json()
    assert (body["before"], body["after"]) == ("unmatched", "matched")
    assert body["event"]["conference"] == conference["id"]
    view = get(client, f"/api/v1/conferences/{conference['id']}")
    assert view["activeMembers"] == 1 and view["members"][0]["memberId"] == "m-1"
    again = client.post(f"/api/v1/events/{event['id']}/rematch", headers=AUTH).get_json()
    assert (again["before"], again["after"]) == ("matched", "matched")


def test_rematch_all_reports_the_outcome(client: FlaskClient) -> None:
    for member in ("m-1", "m-2"):
        client.post(SHARED, json=ev.member("conf-1", member, "active", T0, active=1))
    client.post(SHARED, json=ev.member("conf-99", "m-1", "active", T0, active=1))
    conference = create(client)
    deliver(client, conference["callbackUrl"],
            ev.member("conf-1", "m-3", "active", T0, active=1, tag="not-its-tag"))
    response = client.post("/api/v1/events/rematch", json={}, headers=AUTH)
    assert response.get_json() == {"examined": 4, "matched": 2, "conflict": 1,
                                   "unmatched": 1, "invalid": 0, "remaining": 0}
    limited = client.post("/api/v1/events/rematch", json={"match": ["unmatched"], "limit": 1},
                          headers=AUTH).get_json()
    assert limited["examined"] == 1 and limited["remaining"] == 0
    response = client.post("/api/v1/events/rematch", json={"match": ["matched"]},
                           headers=AUTH)
    assert response.status_code == 422
    assert "match" in response.get_json()["error"]["details"]


# -- stats and tokens ---------------------------------------------------------------------------

def test_stats_over_a_window(client: FlaskClient, world: dict[str, Any]) -> None:
    client.post("/callbacks/callback/shared/not-a-key", json={})
    stats = get(client, "/api/v1/stats")
    events = stats["events"]
    assert events["received"] == 16
    assert events["byType"]["conference-member"] == 8
    assert events["duplicates"] == 1
    assert events["fallbacks"] == 2
    assert (events["unmatched"], events["conflicts"]) == (1, 1)
    assert stats["rejectedDeliveries"] == {"total": 1, "byReason": {"bad_key": 1}}
    assert stats["conferences"] == {"created": 3, "failed": 0}
    assert stats["ratesPerMinute"]["received"] == round(16 / 60, 3)
    empty = get(client, "/api/v1/stats", until="2000-01-01T00:00:00Z")
    assert empty["events"]["received"] == 0
    error = bad(client, "/api/v1/stats", since="2030-01-01T00:00:00Z",
                until="2029-01-01T00:00:00Z")
    assert "since" in error["details"]


def test_tokens_never_reach_the_logs(client: FlaskClient, caplog: pytest.LogCaptureFixture
                                     ) -> None:
    caplog.set_level(logging.DEBUG)
    client.get("/api/v1/conferences", headers=AUTH)
    client.get("/api/v1/conferences", headers={"Authorization": "Bearer wrong-but-long-1234"})
    client.post("/callbacks/callback/shared/not-the-key", json={})
    assert TOKEN not in caplog.text and "wrong-but-long-1234" not in caplog.text
    assert "not-the-key" not in caplog.text
