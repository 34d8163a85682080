"""Callback deliveries: parsing, authentication, rejection, dedup, matching, views."""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, func, select, text

from app import db, delivery
from app.delivery.postgres import PostgresStore
from app.delivery.sqlite import SQLiteStore
from app.keys import callback_key
from app.models import Event, RejectedDelivery
from tests import events as ev
from tests.conftest import AUTH, SECRET, create, path_of
from tests.events import T0, deliver, life


@pytest.fixture
def conf(client: FlaskClient) -> dict[str, Any]:
    return create(client, tag="weekly")


def events_of(client: FlaskClient, conf: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/conferences/{conf['id']}/events", headers=AUTH)
    assert response.status_code == 200
    return response.get_json()["data"]  # type: ignore[no-any-return]


def view(client: FlaskClient, conf: dict[str, Any]) -> dict[str, Any]:
    return client.get(f"/api/v1/conferences/{conf['id']}", headers=AUTH).get_json()


def count(app: Flask, model: type) -> int:
    with app.app_context():
        return db.read_session().scalar(select(func.count()).select_from(model)) or 0


def rejected(app: Flask, reason: str) -> int:
    with app.app_context():
        return db.read_session().scalar(
            select(func.coalesce(func.sum(RejectedDelivery.count), 0))
            .where(RejectedDelivery.reason == reason)) or 0


EXPECTED_END = {
    "state": "completed", "activeMembers": 0,
    "createdTime": "2024-05-01T10:00:00.000Z", "completedTime": "2024-05-01T10:06:00.000Z",
}
EXPECTED_MEMBERS = [
    {"memberId": "m-1", "callId": "c-m-1", "state": "completed",
     "joinedAt": "2024-05-01T10:00:05.000Z", "leftAt": "2024-05-01T10:05:00.000Z",
     "mute": False, "hold": True},
    {"memberId": "m-2", "callId": "c-m-2", "state": "completed",
     "joinedAt": "2024-05-01T10:00:09.000Z", "leftAt": "2024-05-01T10:06:00.000Z",
     "mute": True, "hold": False},
]


@pytest.mark.parametrize(("method", "form"), [("POST", False), ("GET", False),
                                              ("POST", True)])
def test_every_event_type_is_understood_from_each_encoding(
        client: FlaskClient, conf: dict[str, Any], method: str, form: bool) -> None:
    for event in life(conf["conferenceId"]):
        response = deliver(client, conf["callbackUrl"], event, method, form)
        assert response.status_code == 204, response.get_json()
        assert response.data == b"" and "Content-Type" not in response.headers
    stored = events_of(client, conf)
    assert [e["eventType"] for e in stored] == [e["eventType"] for e in life("x")]
    assert all(e["match"] == "matched" and not e["unknownType"] for e in stored)
    assert all(e["method"] == method and e["channel"] == "callback" for e in stored)
    mute_change = stored[3]
    assert (mute_change["memberId"], mute_change["callId"], mute_change["status"]) == (
        "m-2", "c-m-2", "active")
    assert mute_change["eventTime"] == "2024-05-01T10:01:00.000Z"
    assert stored[4]["status"] == "started" and stored[7]["status"] == "done"
    state = view(client, conf)
    assert {k: state[k] for k in EXPECTED_END} == EXPECTED_END
    assert state["members"] == EXPECTED_MEMBERS


def test_get_values_are_understood_as_types(client: FlaskClient, conf: dict[str, Any]) -> None:
    cid = conf["conferenceId"]
    query = ev.as_query(ev.member(cid, "m-1", "active", T0, active=3, tag="weekly"))
    query.update(mute="1", hold="TRUE")
    assert client.get(path_of(conf["callbackUrl"]), query_string=query).status_code == 204
    state = view(client, conf)
    assert state["activeMembers"] == 3
    assert state["members"][0]["mute"] is True and state["members"][0]["hold"] is True


@pytest.mark.parametrize(("written", "utc"), [
    ("2013-07-12T20:53:11.646Z", "2013-07-12T20:53:11.646Z"),
    ("2013-07-12T16:26:55.685-02:00", "2013-07-12T18:26:55.685Z"),
    ("2013-07-12T15:22:47-02", "2013-07-12T17:22:47.000Z"),
    ("2013-07-12T15:22:47", "2013-07-12T15:22:47.000Z"),
    ("2013-07-12T15:22:47.123456+05:30", "2013-07-12T09:52:47.123Z"),
])
def test_times_are_normalised_to_utc(client: FlaskClient, conf: dict[str, Any],
                                     written: str, utc: str) -> None:
    event = ev.media("speak", conf["conferenceId"], "started", written, tag="weekly")
    assert deliver(client, conf["callbackUrl"], event).status_code == 204
    assert events_of(client, conf)[0]["eventTime"] == utc


def test_unknown_event_type_is_stored_whole_and_flagged(client: FlaskClient,
                                                        conf: dict[str, Any]) -> None:
    event = {"eventType": "conference-recording", "conferenceId": conf["conferenceId"],
             "tag": "weekly", "recordingUri": "https://x/r/1", "nested": {"a": [1, 2]}}
    assert deliver(client, conf["callbackUrl"], event).status_code == 204
    stored = events_of(client, conf)[0]
    assert stored["unknownType"] is True
    assert stored["payload"] == event
    assert stored["match"] == "matched"
    # The same unknown event by GET (values as strings) is the same event.
    query = {"eventType": "conference-recording", "conferenceId": conf["conferenceId"],
             "tag": "weekly", "recordingUri": "https://x/r/1",
             "nested": json.dumps({"a": [1, 2]}, separators=(",", ":"))}
    assert client.get(path_of(conf["fallbackUrl"]), query_string=query).status_code == 204
    assert events_of(client, conf)[0]["deliveries"] == 2


def test_payload_is_kept_raw(client: FlaskClient, conf: dict[str, Any]) -> None:
    event = ev.member(conf["conferenceId"], "m-9", "active", T0, active=1, tag="weekly")
    event["extra"] = "kept"
    deliver(client, conf["callbackUrl"], event)
    assert events_of(client, conf)[0]["payload"] == event


# -- rejection ---------------------------------------------------------------------------------

@pytest.mark.parametrize("tamper", ["key", "non-ascii key", "subject", "non-ascii subject",
                                    "channel"])
def test_bad_callback_url_is_rejected_counted_and_stores_nothing(
        client: FlaskClient, app: Flask, conf: dict[str, Any], tamper: str) -> None:
    path = path_of(conf["callbackUrl"])
    _, _, channel, subject, key = path.split("/")
    if tamper == "key":
        path = f"/callbacks/{channel}/{subject}/{key[:-2]}xx"
    elif tamper == "non-ascii key":  # found by schemathesis: it was a 500
        path = f"/callbacks/{channel}/{subject}/{key[:-2]}%C3%A9"
    elif tamper == "non-ascii subject":
        path = f"/callbacks/{channel}/caf%C3%A9/{key}"
    elif tamper == "subject":
        other = create(client)
        path = f"/callbacks/{channel}/{other['id']}/{key}"
    else:
        path = f"/callbacks/sideways/{subject}/{key}"
    response = client.post(path, json=ev.conference(conf["conferenceId"], "created"))
    assert response.status_code in (401, 404)
    assert "error" in response.get_json()
    assert count(app, Event) == 0
    if tamper != "channel":
        assert rejected(app, "bad_key") == 1


def test_key_from_an_old_secret_still_verifies(env: dict[str, str]) -> None:
    from app import create_app

    old = "old-secret-key-0123456789-abcdefghijkl"
    rotated = create_app({**env, "CONFHOOK_SECRET_KEY": "new" + SECRET,
                          "CONFHOOK_OLD_SECRET_KEYS": old})
    try:
        url = f"/callbacks/callback/shared/{callback_key(old, 'shared')}"
        response = rotated.test_client().post(url, json=ev.conference("c-old", "created"))
        assert response.status_code == 204
        stale = f"/callbacks/callback/shared/{callback_key('x' * 40, 'shared')}"
        assert rotated.test_client().post(stale, json={"eventType": "x"}).status_code == 401
    finally:
        db.database(rotated).engine.dispose()


@pytest.mark.parametrize(("kwargs", "status", "code"), [
    ({"data": b'\xff\xfe{}', "content_type": "application/json"}, 400, "invalid_body"),
    ({"data": b'{"eventType": "x"}\x00', "content_type": "application/json"}, 400,
     "invalid_body"),
    ({"data": b"<xml/>", "content_type": "text/xml"}, 415, "unsupported_media_type"),
    ({"json": {"eventType": "x", "pad": "y" * 70_000}}, 413, "payload_too_large"),
])
def test_what_is_not_a_delivery_gets_a_precise_4xx_and_stores_nothing(
        client: FlaskClient, app: Flask, conf: dict[str, Any], kwargs: dict[str, Any],
        status: int, code: str) -> None:
    response = client.post(path_of(conf["callbackUrl"]), **kwargs)
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code
    assert count(app, Event) == 0
    assert rejected(app, code) == 1


def test_oversized_query_string_is_414(client: FlaskClient, conf: dict[str, Any]) -> None:
    response = client.get(path_of(conf["callbackUrl"]),
                          query_string={"eventType": "x", "pad": "y" * 70_000})
    assert response.status_code == 414


def test_only_get_and_post_are_allowed(client: FlaskClient, conf: dict[str, Any]) -> None:
    for method in ("PUT", "HEAD", "DELETE"):
        response = client.open(path_of(conf["callbackUrl"]), method=method, json={})
        assert response.status_code == 405, method
        assert "POST" in response.headers["Allow"]
    assert client.put(path_of(conf["callbackUrl"])).get_json()["error"]["code"] == (
        "method_not_allowed")


# -- dedup -------------------------------------------------------------------------------------

def test_same_event_by_callback_and_fallback_get_and_post_is_stored_once(
        client: FlaskClient, app: Flask, conf: dict[str, Any]) -> None:
    event = ev.member(conf["conferenceId"], "m-1", "active", T0, active=1, tag="weekly")
    assert deliver(client, conf["callbackUrl"], event, "POST").status_code == 204
    assert deliver(client, conf["fallbackUrl"], event, "GET").status_code == 204
    response = deliver(client, conf["callbackUrl"], event, "POST")
    assert response.headers["X-Confhook-Event"].split("; ")[1] == "duplicate"
    stored = events_of(client, conf)
    assert len(stored) == 1
    assert stored[0]["deliveries"] == 3
    assert stored[0]["channels"] == ["callback", "fallback"]
    assert stored[0]["method"] == "POST"
    assert count(app, Event) == 1
    assert view(client, conf)["activeMembers"] == 1


def test_same_content_at_another_time_is_another_event(client: FlaskClient,
                                                       conf: dict[str, Any]) -> None:
    cid = conf["conferenceId"]
    deliver(client, conf["callbackUrl"], ev.media("speak", cid, "started", T0, tag="weekly"))
    deliver(client, conf["callbackUrl"],
            ev.media("speak", cid, "started", "2024-05-01T10:00:00.001Z", tag="weekly"))
    assert len(events_of(client, conf)) == 2


def test_equal_times_in_other_offsets_are_the_same_event(client: FlaskClient,
                                                         conf: dict[str, Any]) -> None:
    cid = conf["conferenceId"]
    deliver(client, conf["callbackUrl"],
            ev.media("playback", cid, "done", "2024-05-01T12:00:00Z", tag="weekly"))
    deliver(client, conf["fallbackUrl"],
            ev.media("playback", cid, "done", "2024-05-01T10:00:00-02:00", tag="weekly"))
    assert [e["deliveries"] for e in events_of(client, conf)] == [2]


# -- matching ----------------------------------------------------------------------------------

def test_wrong_tag_is_stored_as_conflict_and_not_applied(client: FlaskClient,
                                                         conf: dict[str, Any]) -> None:
    event = ev.member(conf["conferenceId"], "m-1", "active", T0, active=1, tag="other")
    assert deliver(client, conf["callbackUrl"], event).status_code == 204
    stored = events_of(client, conf)[0]
    assert (stored["match"], stored["matchReason"]) == ("conflict", "tag_mismatch")
    state = view(client, conf)
    assert state["members"] == [] and state["state"] == "created"


def test_wrong_conference_id_is_stored_as_conflict(client: FlaskClient,
                                                   conf: dict[str, Any]) -> None:
    event = ev.conference("conf-somebody-else", "completed", tag="weekly", completed=T0)
    assert deliver(client, conf["callbackUrl"], event).status_code == 204
    stored = events_of(client, conf)[0]
    assert (stored["match"], stored["matchReason"]) == ("conflict", "conference_id_mismatch")
    assert view(client, conf)["state"] == "created"


def test_event_without_tag_matches_a_tagged_conference(client: FlaskClient,
                                                       conf: dict[str, Any]) -> None:
    deliver(client, conf["callbackUrl"], ev.conference(conf["conferenceId"], "created"))
    assert events_of(client, conf)[0]["match"] == "matched"


def test_shared_url_matches_by_conference_id_or_keeps_unmatched(
        client: FlaskClient, app: Flask, conf: dict[str, Any]) -> None:
    shared = f"/callbacks/callback/shared/{callback_key(SECRET, 'shared')}"
    known = ev.member(conf["conferenceId"], "m-1", "active", T0, active=1, tag="weekly")
    unknown = ev.member("conf-elsewhere", "m-1", "active", T0, active=1)
    no_id = {"eventType": "conference-speak", "status": "done", "time": T0}
    for event in (known, unknown, no_id):
        assert client.post(shared, json=event).status_code == 204
    assert events_of(client, conf)[0]["match"] == "matched"
    assert view(client, conf)["activeMembers"] == 1
    with app.app_context():
        rows = db.read_session().scalars(
            select(Event).where(Event.conference_pk.is_(None)).order_by(Event.id)).all()
        assert [(r.match, r.match_reason) for r in rows] == [
            ("unmatched", "unknown_conference"), ("unmatched", "no_conference_id")]


# -- order -------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_views_do_not_depend_on_arrival_order(client: FlaskClient, conf: dict[str, Any],
                                              order: str) -> None:
    events = life(conf["conferenceId"])
    if order == "reversed":
        events.reverse()
    else:
        events = [events[i] for i in (11, 3, 0, 9, 1, 10, 5, 2, 8, 4, 7, 6)]
    for event in events:
        assert deliver(client, conf["callbackUrl"], event).status_code == 204
    state = view(client, conf)
    assert {k: state[k] for k in EXPECTED_END} == EXPECTED_END
    assert state["members"] == EXPECTED_MEMBERS


def test_late_active_never_reopens_a_completed_conference(client: FlaskClient,
                                                          conf: dict[str, Any]) -> None:
    cid = conf["conferenceId"]
    deliver(client, conf["callbackUrl"], ev.conference(cid, "completed", tag="weekly",
                                                       completed="2024-05-01T11:00:00Z"))
    deliver(client, conf["callbackUrl"],
            ev.member(cid, "m-1", "active", "2024-05-01T10:30:00Z", active=1, tag="weekly"))
    state = view(client, conf)
    assert (state["state"], state["activeMembers"]) == ("completed", 0)
    assert state["members"][0]["state"] == "active"  # its leave was never delivered


def test_events_page_with_a_cursor(client: FlaskClient, conf: dict[str, Any]) -> None:
    for event in life(conf["conferenceId"]):
        deliver(client, conf["callbackUrl"], event)
    url = f"/api/v1/conferences/{conf['id']}/events"
    first = client.get(url, query_string={"limit": 5}, headers=AUTH).get_json()
    assert len(first["data"]) == 5
    second = client.get(url, query_string={"limit": 10, "cursor": first["nextCursor"]},
                        headers=AUTH).get_json()
    assert len(second["data"]) == 7 and second["nextCursor"] is None
    times = [e["eventTime"] for e in first["data"] + second["data"]]
    assert times == sorted(times)
    for bad in ({"limit": 0}, {"limit": "x"}, {"cursor": "nope"}, {"sort": "id"}):
        response = client.get(url, query_string=bad, headers=AUTH)
        assert response.status_code == 400
        assert response.get_json()["error"]["details"]


def test_database_outage_is_503_with_retry_after_never_a_4xx(env: dict[str, str],
                                                              tmp_path: Any) -> None:
    from app import create_app

    # A database that cannot be opened: the provider must retry or fall back, not give up.
    broken = create_app({**env, "DATABASE_URL": f"sqlite:///{tmp_path / 'missing' / 'x.db'}"})
    try:
        url = f"/callbacks/callback/shared/{callback_key(SECRET, 'shared')}"
        response = broken.test_client().post(url, json=ev.conference("c-1", "created"))
        assert response.status_code == 503
        assert response.headers["Retry-After"]
        assert response.get_json()["error"]["code"] == "database_unavailable"
        response = broken.test_client().get("/api/v1/conferences/x", headers=AUTH)
        assert response.status_code == 503
    finally:
        db.database(broken).engine.dispose()


def test_an_exhausted_connection_pool_is_503_busy_not_500(app: Flask, client: FlaskClient
                                                           ) -> None:
    from sqlalchemy.pool import QueuePool

    engine = db.database(app).engine
    # A pool of one connection that waits 0.2 s for it; the test holds that one.
    engine.pool = QueuePool(engine.pool._creator, pool_size=1, max_overflow=0, timeout=0.2,
                            dialect=engine.dialect)
    held = engine.raw_connection()
    try:
        response = client.get("/api/v1/conferences", headers=AUTH)
        assert response.status_code == 503
        assert response.headers["Retry-After"]
        assert response.get_json()["error"]["code"] == "database_busy"
    finally:
        held.close()
    assert client.get("/api/v1/conferences", headers=AUTH).status_code == 200


def test_a_flood_of_refused_deliveries_is_counted_in_few_writes(env: dict[str, str]) -> None:
    from sqlalchemy import event as sa_event

    from app import create_app

    app = create_app({**env, "CONFHOOK_REJECTION_FLUSH_MS": "60000"})
    engine = db.database(app).engine
    writes: list[str] = []
    sa_event.listen(engine, "before_cursor_execute",
                    lambda _c, _cur, sql, *_: writes.append(sql)
                    if "rejected_delivery" in sql else None)
    client = app.test_client()
    bad = "/callbacks/callback/shared/" + "A" * 24
    try:
        for _ in range(50):
            assert client.post(bad, json={}).status_code == 401
        assert len(writes) == 1  # the first flushes, the next 49 wait for the interval
        delivery.intake(app).rejections.interval_s = 0
        assert client.post(bad, json={}).status_code == 401
        stats = client.get("/api/v1/stats", headers=AUTH).get_json()
        assert stats["rejectedDeliveries"]["total"] == 51
    finally:
        engine.dispose()


@contextmanager
def _lock_held_elsewhere(database_url: str, conference_id: str) -> Iterator[None]:
    """Hold what a delivery for ``conference_id`` must wait for, as another process would."""
    if database_url.startswith("sqlite"):
        # The writers' own lock, as another process's writer holds it while it commits.
        with open(f"{database_url.removeprefix('sqlite:///')}-writer.lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            yield
        return
    outside = create_engine(database_url)
    try:
        with outside.connect() as holder:
            holder.execute(text("SELECT id FROM conference WHERE conference_id = :c "
                                "FOR UPDATE"), {"c": conference_id})
            yield
            holder.rollback()
    finally:
        outside.dispose()


def test_a_delivery_kept_waiting_by_a_lock_is_503_busy_and_nothing_is_lost(
        env: dict[str, str], database_url: str) -> None:
    """A lock held elsewhere (a backup, a long transaction) makes a delivery wait at most
    CONFHOOK_DELIVERY_WAIT_MS, then answers 503; the provider's retry then stores it once."""
    from app import create_app

    app = create_app({**env, "CONFHOOK_DELIVERY_WAIT_MS": "300"})
    client = app.test_client()
    try:
        conf = create(client)
        event = ev.conference(conf["conferenceId"], "created")
        with _lock_held_elsewhere(database_url, conf["conferenceId"]):
            began = time.monotonic()
            response = deliver(client, conf["callbackUrl"], event)
            waited = time.monotonic() - began
            assert response.status_code == 503, response.get_json()
            assert response.get_json()["error"]["code"] == "database_busy"
            assert response.headers["Retry-After"]
            assert 0.25 <= waited < 5
        connections = delivery.intake(app).store
        if isinstance(connections, PostgresStore):
            # The server's lock_timeout answered: no connection was cut.
            assert connections.generation == 0
        # The lock is gone. The retry is stored, or recognised as the delivery that waited and
        # was stored once the lock was free (SQLite keeps it queued): one event either way.
        response = deliver(client, conf["callbackUrl"], event)
        assert response.status_code == 204
        assert response.headers["X-Confhook-Event"].split("; ")[1] == (
            "duplicate" if database_url.startswith("sqlite") else "stored")
        assert [e["eventType"] for e in events_of(client, conf)] == ["conference"]
    finally:
        db.database(app).engine.dispose()


def test_deliveries_that_arrive_while_the_writer_waits_for_the_lock_share_its_commit(
        app: Flask, client: FlaskClient, database_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    if not database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL commits each delivery in its own request")
    committer = delivery.intake(app).store
    assert isinstance(committer, SQLiteStore)
    conf = create(client)
    url = conf["callbackUrl"]
    # The first delivery takes the writer to the lock, which another process holds; the
    # others queue behind it meanwhile. Once the lock is free, one commit stores all eight.
    with ThreadPoolExecutor(8) as pool, _lock_held_elsewhere(database_url, conf["conferenceId"]):
        first = pool.submit(deliver, app.test_client(), url,
                            ev.member(conf["conferenceId"], "m-0", "active", T0, active=1))
        deadline = time.monotonic() + 5
        while (committer.thread is None or committer.jobs.qsize()) \
                and time.monotonic() < deadline:
            time.sleep(0.01)  # until the writer took the first delivery off the queue
        batches = committer.batches
        others = [pool.submit(deliver, app.test_client(), url,
                              ev.member(conf["conferenceId"], f"m-{n}", "active", T0,
                                        active=n + 1))
                  for n in range(1, 8)]
        while committer.jobs.qsize() < 7 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert committer.jobs.qsize() == 7
    assert [f.result().status_code for f in (first, *others)] == [204] * 8
    assert committer.batches == batches + 1
    assert len(view(client, conf)["members"]) == 8


def test_a_full_disk_is_503_loses_nothing_and_recovers_without_a_restart(
        app: Flask, client: FlaskClient, database_url: str) -> None:
    """SQLite's max_page_count makes the database "full" as a full disk would (SQLITE_FULL)."""
    from sqlalchemy import event as sa_event

    if not database_url.startswith("sqlite"):
        pytest.skip("the page cap is SQLite's")
    engine = db.database(app).engine
    committer = delivery.intake(app).store
    conf = create(client)
    with engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()

    def cap(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages + 3}")

    sa_event.listen(engine, "connect", cap)
    engine.dispose()  # every connection from now on, the writer's too, has the cap
    sent = [ev.media("speak", conf["conferenceId"], "started",
                     f"2024-05-01T11:{n // 60:02d}:{n % 60:02d}.000Z") | {"note": "x" * 2000}
            for n in range(40)]
    answers = [deliver(client, conf["callbackUrl"], event) for event in sent]
    statuses = [a.status_code for a in answers]
    assert 204 in statuses and 503 in statuses, statuses
    assert set(statuses) == {204, 503}
    assert {a.get_json()["error"]["code"] for a in answers if a.status_code == 503} == {
        "database_unavailable"}
    stored_first = {e["eventTime"] for e in events_of(client, conf)
                    if e["eventType"] == "conference-speak"}
    acknowledged = {event["time"] for event, status in zip(sent, statuses, strict=True)
                    if status == 204}
    assert stored_first == acknowledged  # every 204 is stored, nothing else is

    # Space comes back: the same process, its writer on the same connection, takes the retries.
    sa_event.remove(engine, "connect", cap)
    committer.connection.driver_connection.execute("PRAGMA max_page_count = 1073741823")
    retried = [deliver(client, conf["callbackUrl"], event).status_code
               for event, status in zip(sent, statuses, strict=True) if status == 503]
    assert retried and set(retried) == {204}
    speaks = [e for e in events_of(client, conf) if e["eventType"] == "conference-speak"]
    assert sorted(e["eventTime"] for e in speaks) == sorted(e["time"] for e in sent)


def test_connections_opened_read_only_are_replaced_once_writes_work_again(
        app: Flask, client: FlaskClient, database_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """A connection opened while the database refused writes stays read-only: never kept.

    SQLite opens a file it may not write read-only, without an error (as ``mode=ro`` does
    here), and a PostgreSQL primary turned standby by a failover refuses writes the same way
    (a read-only default transaction here). Every connection opened during the "outage" is
    so; once it is over, the writes must go to new connections, with no restart.
    """
    from sqlalchemy import event as sa_event

    engines = [db.database(app).engine]
    store = delivery.intake(app).store
    if isinstance(store, PostgresStore):
        engines.append(store.engine)
    conf = create(client)

    def open_read_only(_dialect: Any, _record: Any, cargs: list[Any],
                       cparams: dict[str, Any]) -> None:
        assert cparams["uri"] and cargs[0].endswith("?mode=rw"), cargs
        cargs[0] = cargs[0].replace("?mode=rw", "?mode=ro")

    def read_only_default(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute("SET default_transaction_read_only = on")
        dbapi_conn.commit()

    outage = (("do_connect", open_read_only) if database_url.startswith("sqlite")
              else ("connect", read_only_default))

    def send(n: int) -> Any:
        return deliver(client, conf["callbackUrl"], ev.media(
            "speak", conf["conferenceId"], "started", f"2024-05-01T11:00:{n:02d}.000Z"))

    for engine in engines:
        sa_event.listen(engine, *outage)
    try:
        engines[0].dispose()  # every connection from now on is read-only, the writer's too
        during = [send(n) for n in range(3)]
        assert [a.status_code for a in during] == [503] * 3
        assert {a.get_json()["error"]["code"] for a in during} == {"database_unavailable"}
        # The log names the driver's code, for whoever is on call.
        named = ("OperationalError (SQLITE_READONLY)" if database_url.startswith("sqlite")
                 else "ReadOnlySqlTransaction (25006)")
        assert f"database unavailable: {named}" in caplog.messages, caplog.messages
        assert client.get("/api/v1/conferences", headers=AUTH).status_code == 200  # reads do
        held = [engine.raw_connection() for engine in engines for _ in range(3)]
        for connection in held:
            connection.close()  # back to the pools: read-only connections to be reused
    finally:
        for engine in engines:
            sa_event.remove(engine, *outage)
    # Writable again: the read-only connections still in the pools are discarded at their
    # first refused write, by the API's sessions and by the deliveries (the SQLite writer's
    # own connection too).
    created = [client.post("/api/v1/conferences", json={"from": "+19195551212"},
                           headers=AUTH).status_code for _ in range(3)]
    assert created.count(503) <= 1 and created[-2:] == [201] * 2, created
    for connection in [engine.raw_connection() for engine in engines for _ in range(3)]:
        connection.close()
    after = [send(n).status_code for n in range(3, 9)]
    assert after.count(503) <= 1 and after[-5:] == [204] * 5, after
    stored = [e for e in events_of(client, conf) if e["eventType"] == "conference-speak"]
    assert len(stored) == after.count(204)


def test_a_database_file_removed_or_replaced_while_open_acknowledges_nothing_it_loses(
        app: Flask, client: FlaskClient, database_url: str) -> None:
    """An open SQLite connection keeps its file after ``rm``, or after a restore by rename:

    what it commits then goes where nobody reads. No such commit may be acknowledged, and
    once a file is back at the path, deliveries and the API must use it, with no restart.
    """
    import os
    import sqlite3

    from sqlalchemy.engine import make_url

    if not database_url.startswith("sqlite"):
        pytest.skip("a SQLite file")
    path = make_url(database_url).database
    conf = create(client)

    def send(n: int) -> Any:
        return deliver(client, conf["callbackUrl"], ev.media(
            "speak", conf["conferenceId"], "started", f"2024-05-01T11:00:{n:02d}.000Z"))

    assert send(1).status_code == 204
    backup = f"{path}.backup"
    with sqlite3.connect(path) as live, sqlite3.connect(backup) as copy:
        live.backup(copy)  # the operator's backup: the conference and event 1
    for suffix in ("", "-wal", "-shm"):
        os.remove(path + suffix)  # rm confhook.db*, by mistake
    gone = [send(2) for _ in range(3)]
    assert [a.status_code for a in gone] == [503] * 3
    assert client.get("/readyz").status_code == 503
    # and no new, empty database appears at the path: the restore below is the operator's
    assert not os.path.exists(path)

    for suffix in ("-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    os.replace(backup, path)  # restored by rename, the service still running
    answers = [send(2).status_code for _ in range(3)]
    assert answers.count(503) <= 1 and answers[-2:] == [204, 204], answers
    assert client.get("/readyz").status_code == 200
    times = sorted(e["eventTime"] for e in events_of(client, conf)
                   if e["eventType"] == "conference-speak")
    assert times == ["2024-05-01T11:00:01.000Z", "2024-05-01T11:00:02.000Z"]
