"""The intake's rule: a delivery whose key verifies is stored; interpretation decides only how.

One table of what the provider (or anything holding a valid URL) may send, run on whichever
database the suite runs on (CI runs it on SQLite and on PostgreSQL): each is stored with the
same outcome, its text kept where the stored fields could not be, and the next good delivery
is stored as usual. Then isolation: whatever fails while storing one delivery fails it alone.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from app import create_app, db, delivery
from app.delivery import filing
from app.statements import Runner
from tests import events as ev
from tests.conftest import AUTH, create, path_of
from tests.events import T0


@pytest.fixture
def conf(client: FlaskClient) -> dict[str, Any]:
    return create(client, tag="weekly")


def _member(cid: str, **changes: Any) -> dict[str, Any]:
    return {**ev.member(cid, "m-1", "active", T0, active=1, tag="weekly"), **changes}


# (name, what to send, match, match reason, what the stored event says)
CASES: list[tuple[str, Any, str, str | None, dict[str, Any]]] = [
    ("lone surrogate", lambda c: ("json-text", '{"eventType":"x\\ud800"}'),
     "invalid", "eventType: NUL or lone surrogate in text", {"eventType": "x\ufffd"}),
    ("NUL in a value", lambda c: ("json", {"eventType": "odd", "v": "a\x00b"}),
     "invalid", "v: NUL or lone surrogate in text", {"payload": {"eventType": "odd",
                                                                  "v": "a\ufffdb"}}),
    ("status longer than its column", lambda c: ("json", {
        "eventType": "conference-recording", "conferenceId": c, "status": "s" * 100}),
     "invalid", "status: over 64 characters", {"status": None}),
    ("conferenceId longer than its column", lambda c: ("json", {
        "eventType": "conference", "conferenceId": "c" * 200, "status": "created"}),
     "invalid", "conferenceId: over 128 characters", {"conferenceId": None}),
    ("number that overflows", lambda c: ("json-text", json.dumps(_member(c))[:-1]
                                         + ', "extra": 1e400}'),
     "invalid", "extra: number out of range", {"status": "active"}),
    ("activeMembers that overflows", lambda c: ("json-text", json.dumps(
        {k: v for k, v in _member(c).items() if k != "activeMembers"})[:-1]
        + ', "activeMembers": 1e400}'),
     "invalid", "activeMembers: number out of range", {}),
    ("NaN", lambda c: ("json-text", '{"eventType": "conference", "n": NaN}'),
     "invalid", "body: not valid JSON", {"payload": {}}),
    ("JSON cut short", lambda c: ("json-text", '{"eventType": "conference",'),
     "invalid", "body: not valid JSON", {"payload": {}}),
    ("not an object", lambda c: ("json", [1, 2]), "invalid", "body: not a JSON object", {}),
    ("no eventType", lambda c: ("json", {"conferenceId": c}), "invalid", "eventType: missing",
     {"eventType": ""}),
    ("nested too deeply", lambda c: ("json", {"eventType": "odd", "v": _nested(20)}),
     "invalid", "v: nested more than 16 levels", {}),
    ("time out of range", lambda c: ("json", {"eventType": "conference", "conferenceId": c,
                                              "status": "created", "tag": "weekly",
                                              "createdTime": "9999-12-31T23:59:59-02:00"}),
     "invalid", "createdTime: not an ISO 8601 time", {}),
    ("unknown member state", lambda c: ("json", _member(c, state="ringing")),
     "invalid", "state: unknown value", {"status": "ringing"}),
    ("unknown conference status", lambda c: ("json", ev.conference(c, "exploded", tag="weekly")),
     "invalid", "status: unknown value", {"status": "exploded"}),
    ("mute neither true nor false", lambda c: ("json", _member(c, mute="maybe")),
     "invalid", "mute: not true or false", {}),
    ("field given twice by GET", lambda c: ("query", f"eventType=conference&conferenceId={c}"
                                            "&status=created&status=completed"),
     "invalid", "status: given more than once", {"method": "GET"}),
    ("state in capitals", lambda c: ("json", _member(c, state="ACTIVE")),
     "matched", None, {"status": "active"}),
    ("status capitalised", lambda c: ("json", ev.conference(c, "Created", tag="weekly")),
     "matched", None, {"status": "created"}),
    ("playback status capitalised", lambda c: ("json", ev.media("playback", c, "Started", T0,
                                                                tag="audio-7")),
     "matched", None, {"status": "started", "tag": "audio-7"}),
    ("event type capitalised", lambda c: ("json", _member(c, eventType="Conference-Member")),
     "matched", None, {"eventType": "conference-member"}),
    ("booleans and numbers as strings", lambda c: ("json", _member(
        c, mute="TRUE", hold="0", activeMembers="2")), "matched", None, {"status": "active"}),
]


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"k": value}
    return value


def _send(client: FlaskClient, url: str, what: tuple[str, Any]) -> Any:
    kind, body = what
    if kind == "json":
        return client.post(path_of(url), json=body)
    if kind == "json-text":
        return client.post(path_of(url), data=body, content_type="application/json")
    return client.get(path_of(url) + "?" + body)


def _event(client: FlaskClient, event_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/events/{event_id}", headers=AUTH)
    assert response.status_code == 200
    return json.loads(response.get_data(as_text=True))  # type: ignore[no-any-return]


@pytest.mark.parametrize(("name", "make", "match", "reason", "expected"), CASES,
                         ids=[case[0] for case in CASES])
def test_every_delivery_under_a_valid_key_is_stored_and_the_next_one_too(
        client: FlaskClient, conf: dict[str, Any], name: str, make: Any, match: str,
        reason: str | None, expected: dict[str, Any]) -> None:
    what = make(conf["conferenceId"])
    response = _send(client, conf["callbackUrl"], what)
    assert response.status_code == 204, response.get_data()
    event_id, outcome, filed = response.headers["X-Confhook-Event"].split("; ")
    assert (outcome, filed) == ("invalid" if match == "invalid" else "stored", match)
    stored = _event(client, event_id)
    assert (stored["match"], stored["matchReason"]) == (match, reason)
    assert {k: stored[k] for k in expected} == expected
    if match == "invalid":
        # What was received is kept as it came, whenever the payload is not a faithful copy.
        kind, body = what
        if kind != "json" or stored["payload"] != body:
            assert stored["raw"] == (body if isinstance(body, str) else json.dumps(body))
        listed = client.get("/api/v1/events?match=invalid", headers=AUTH).get_json()["data"]
        assert [e["id"] for e in listed] == [stored["id"]]
        assert stored["conference"] == conf["id"]  # filed with the conference the URL names
    # The same delivery again is a duplicate of it, not a second row.
    again = _send(client, conf["fallbackUrl"], what)
    assert again.headers["X-Confhook-Event"].split("; ")[:2] == [event_id, "duplicate"]
    began = time.monotonic()
    good = client.post(path_of(conf["callbackUrl"]), json=ev.conference(
        conf["conferenceId"], "created", tag="weekly"))
    assert good.status_code == 204 and time.monotonic() - began < 5


def test_an_invalid_event_is_counted_and_can_be_filed_again(
        app: Flask, client: FlaskClient, conf: dict[str, Any]) -> None:
    """An event a former version could not interpret is filed again from what was received."""
    body = _member(conf["conferenceId"], mute=True)
    response = client.post(path_of(conf["callbackUrl"]), json=body)
    event_id = int(response.headers["X-Confhook-Event"].split(";")[0])
    with app.app_context():  # as an older version would have stored it
        session = db.database().writer()
        session.execute(text("UPDATE event SET match = 'invalid', match_reason = 'x: old', "
                             "event_type = '', status = NULL, raw = :raw WHERE id = :id"),
                        {"raw": json.dumps(body), "id": event_id})
        session.execute(text("DELETE FROM member"))
        session.commit()
    view = client.get(f"/api/v1/conferences/{conf['id']}", headers=AUTH).get_json()
    assert view["events"]["invalid"] == 1 and view["members"] == []
    stats = client.get("/api/v1/stats", headers=AUTH).get_json()
    assert stats["events"]["invalid"] == 1
    again = client.post(f"/api/v1/events/{event_id}/rematch", headers=AUTH)
    assert again.status_code == 200, again.get_json()
    stored = _event(client, str(event_id))
    assert (stored["match"], stored["eventType"], stored["status"]) == (
        "matched", "conference-member", "active")
    members = client.get(f"/api/v1/conferences/{conf['id']}", headers=AUTH).get_json()["members"]
    assert [(m["memberId"], m["mute"]) for m in members] == [("m-1", True)]


def test_invalid_events_show_in_metrics_and_on_the_problems_page(
        app: Flask, client: FlaskClient, conf: dict[str, Any]) -> None:
    assert client.post(path_of(conf["callbackUrl"]),
                       json=_member(conf["conferenceId"], state="ringing")).status_code == 204
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'confhook_events_needing_attention{match="invalid"} 1.0' in metrics


# -- isolation ---------------------------------------------------------------------------------

def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _writable_elsewhere(database_url: str) -> None:
    """Another process's writer can take the database's write lock at once."""
    if not database_url.startswith("sqlite"):
        return
    other = sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=1,
                            isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Make storing fail, where the test says: ``where["at"]`` is ``record`` (inside one
    delivery's work) or ``end`` (as it is committed: SQLite's savepoint release, which fails
    the whole batch, or PostgreSQL's one statement, which is its own transaction)."""
    where = {"at": ""}
    record = filing.record
    driver_sql = Runner.driver_sql
    execute = Runner.execute

    def failing_record(run: Runner, **kwargs: Any) -> filing.Outcome:
        if where["at"] == "record" and kwargs["event"].payload.get("boom"):
            raise RuntimeError("injected")
        return record(run, **kwargs)

    def failing_driver_sql(self: Runner, sql: str) -> None:
        if where["at"] == "end" and sql == "RELEASE delivery":
            # As a value the driver cannot encode fails: in the cursor, mid-statement.
            self.cursor.execute("SELECT 1 WHERE 1 = ?", ("x\ud800",))
        driver_sql(self, sql)

    def failing_execute(self: Runner, prepared: Any, params: dict[str, Any]) -> Any:
        if where["at"] == "end" and self.dialect.name == "postgresql" and self.autocommit:
            self.cursor.execute("SELECT 1 WHERE 1 = %s", ("x\ud800",))
        return execute(self, prepared, params)

    monkeypatch.setattr(filing, "record", failing_record)
    monkeypatch.setattr(Runner, "driver_sql", failing_driver_sql)
    monkeypatch.setattr(Runner, "execute", failing_execute)
    yield where


def test_an_exception_inside_one_delivery_fails_it_alone(
        app: Flask, conf: dict[str, Any], database_url: str, failing: dict[str, str]) -> None:
    failing["at"] = "record"
    url = path_of(conf["callbackUrl"])
    cid = conf["conferenceId"]
    results: dict[str, Any] = {}

    def send(name: str, body: dict[str, Any]) -> None:
        results[name] = app.test_client().post(url, json=body)

    fds = 0
    for round_no in range(5):
        # At once, so that on SQLite they share the writer's batches.
        bodies = {f"good-{n}": ev.member(cid, f"m-{round_no}-{n}", "active", T0, active=n,
                                         tag="weekly") for n in range(6)}
        bodies["bad"] = {**bodies["good-0"], "memberId": f"bad-{round_no}", "boom": True}
        threads = [threading.Thread(target=send, args=item) for item in bodies.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results["bad"].status_code == 503
        assert results["bad"].get_json()["error"]["code"] == "storing_failed"
        assert results["bad"].headers["Retry-After"]
        assert [results[f"good-{n}"].status_code for n in range(6)] == [204] * 6
        fds = fds or _open_fds()  # once the first round opened what the pools keep
    _writable_elsewhere(database_url)
    assert _open_fds() <= fds + 2
    client = app.test_client()
    members = client.get(f"/api/v1/conferences/{conf['id']}", headers=AUTH).get_json()["members"]
    assert len(members) == 30 and not any(m["memberId"].startswith("bad") for m in members)


def test_a_failure_of_the_whole_transaction_leaves_no_lock_and_no_descriptor(
        app: Flask, client: FlaskClient, conf: dict[str, Any], database_url: str,
        failing: dict[str, str]) -> None:
    url = path_of(conf["callbackUrl"])
    fds = _open_fds()
    for n in range(20):
        failing["at"] = "end"
        response = client.post(url, json=ev.member(conf["conferenceId"], f"m-{n}", "active",
                                                   T0, active=1, tag="weekly"))
        assert response.status_code == 503 and response.headers["Retry-After"]
        failing["at"] = ""
        _writable_elsewhere(database_url)  # the failed transaction holds no lock
        began = time.monotonic()
        retried = client.post(url, json=ev.member(conf["conferenceId"], f"m-{n}", "active",
                                                  T0, active=1, tag="weekly"))
        assert retried.status_code == 204 and time.monotonic() - began < 5
    assert _open_fds() <= fds + 2  # the failed connections are closed, not leaked


# -- readiness ---------------------------------------------------------------------------------

@contextmanager
def _write_lock_held_elsewhere(database_url: str) -> Iterator[None]:
    """Hold what the readiness probe's write must wait for, as another process would."""
    if database_url.startswith("sqlite"):
        holder = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            yield
            holder.execute("ROLLBACK")
        finally:
            holder.close()
        return
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            connection.execute(text("LOCK TABLE readiness_probe IN ACCESS EXCLUSIVE MODE"))
            yield
            connection.rollback()
    finally:
        engine.dispose()


def test_readiness_is_unready_while_a_delivery_could_not_be_written(
        env: dict[str, str], database_url: str) -> None:
    """A write lock held elsewhere (a long transaction, a backup) makes readiness fail within
    the delivery wait, as it makes deliveries fail; then it is ready again."""
    app = create_app({**env, "CONFHOOK_DELIVERY_WAIT_MS": "400",
                      "CONFHOOK_SQLITE_BUSY_TIMEOUT_MS": "300"})
    client = app.test_client()
    try:
        assert client.get("/readyz").status_code == 200
        with _write_lock_held_elsewhere(database_url):
            began = time.monotonic()
            response = client.get("/readyz")
            assert response.status_code == 503
            assert response.get_json()["checks"]["database"] == "unreachable"
            assert time.monotonic() - began < 3
        deadline = time.monotonic() + 5
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        db.database(app).engine.dispose()


def test_readiness_writes_through_the_deliveries_store(app: Flask, client: FlaskClient) -> None:
    assert client.get("/readyz").status_code == 200
    with app.app_context():
        assert db.read_session().execute(text("SELECT count(*) FROM readiness_probe")
                                         ).scalar() == 1
    assert delivery.intake(app).store is not None


# -- the door ----------------------------------------------------------------------------------

def test_bodies_that_do_not_arrive_whole_are_400_and_store_nothing(
        client: FlaskClient, conf: dict[str, Any]) -> None:
    url = path_of(conf["callbackUrl"])
    body = json.dumps(ev.conference(conf["conferenceId"], "created", tag="weekly")).encode()
    for length in ("abc", str(len(body) + 10)):
        response = client.post(url, data=body, content_type="application/json",
                               environ_overrides={"CONTENT_LENGTH": length})
        assert response.status_code == 400, length
        assert response.get_json()["error"]["code"] == "invalid_body"
    assert client.get(f"/api/v1/conferences/{conf['id']}/events",
                      headers=AUTH).get_json()["data"] == []


def test_a_chunked_body_is_read_and_one_over_the_limit_refused(
        live_app: Any, conf: dict[str, Any]) -> None:
    import requests

    event = ev.conference(conf["conferenceId"], "created", tag="weekly")
    chunks = iter([json.dumps(event).encode()])
    response = requests.post(conf["callbackUrl"], data=chunks, timeout=10,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 204, response.text
    big = iter([b'{"eventType": "x", "pad": "', b"y" * 70_000, b'"}'])
    response = requests.post(conf["callbackUrl"], data=big, timeout=10,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_paths_that_are_not_a_callback_url_are_404_json(client: FlaskClient) -> None:
    for path in ("/callbacks/", "/callbacks/callback/x", "/callbacks/elsewhere/a/b",
                 "/callbacks/callback/a/b/c"):
        response = client.post(path, json={"eventType": "conference"})
        assert response.status_code == 404, path
        assert response.get_json()["error"]["code"] == "not_found"
