"""PostgreSQL: deliveries on connections of a pool of their own, without its ping, each
delivery one statement.

Connections are reused without a round trip to check them; one that the server has closed is
found by the ping after idling, or by the delivery that meets it, and then replaced. A
delivery is one statement, its own transaction, filed as the steps SQLite takes would file it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, event, text

from app import delivery
from app.delivery import filing, postgres
from app.delivery.interpret import interpret, read_body
from app.keys import SHARED
from app.models import Conference
from app.statements import Runner
from tests import events as ev
from tests.conftest import AUTH, create, path_of


@pytest.fixture
def connections(app: Flask, database_url: str) -> postgres.PostgresStore:
    if database_url.startswith("sqlite"):
        pytest.skip("on SQLite the group committer stores deliveries")
    return delivery.intake(app).store  # type: ignore[no-any-return]


def _opened(connections: postgres.PostgresStore) -> list[int]:
    opened: list[int] = []
    event.listen(connections.engine, "connect", lambda *_: opened.append(1))
    return opened


def _send(client: FlaskClient, conf: dict[str, Any], n: int) -> Any:
    return client.post(path_of(conf["callbackUrl"]), json=ev.member(
        conf["conferenceId"], f"m-{n}", "active", f"2024-05-01T10:00:{n:02d}.000Z", active=1))


def _cut_delivery_connections(database_url: str) -> int:
    """Close, from the server's side, every connection but this one (as a restart would)."""
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            return len(conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")).all())
    finally:
        engine.dispose()


def test_deliveries_reuse_one_connection(client: FlaskClient,
                                         connections: postgres.PostgresStore) -> None:
    conf = create(client)
    opened = _opened(connections)
    pinged: list[int] = []
    original = connections.engine.dialect.do_ping
    connections.engine.dialect.do_ping = lambda c: pinged.append(1) or original(c)  # type: ignore[method-assign]
    try:
        assert [_send(client, conf, n).status_code for n in range(20)] == [204] * 20
    finally:
        del connections.engine.dialect.do_ping  # type: ignore[method-assign]
    assert len(opened) == 1 and pinged == []
    members = client.get(f"/api/v1/conferences/{conf['id']}/members", headers=AUTH)
    assert len(members.get_json()["data"]) == 20


def test_a_connection_keeps_its_cursor_and_a_new_connection_gets_its_own(
        client: FlaskClient, connections: postgres.PostgresStore, database_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Any] = []
    new_cursor = Runner.new_cursor

    def counted(*args: Any) -> Any:
        made.append(new_cursor(*args))
        return made[-1]

    monkeypatch.setattr(Runner, "new_cursor", staticmethod(counted))
    conf = create(client)
    assert [_send(client, conf, n).status_code for n in range(5)] == [204] * 5
    assert len(made) == 1  # the connection's one cursor, kept across deliveries
    assert _cut_delivery_connections(database_url) >= 1
    assert _send(client, conf, 5).status_code == 503  # the delivery that meets the dead one
    assert _send(client, conf, 5).status_code == 204  # its retry, on a new connection
    assert len(made) == 2 and made[1].connection is not made[0].connection
    assert made[0].closed or made[0].connection.closed


def test_a_transaction_that_work_left_open_is_rolled_back_before_the_connection_is_reused(
        app: Flask, connections: postgres.PostgresStore) -> None:
    class Failed(Exception):
        pass

    def half_done(run: Runner) -> None:
        run.begin()
        run.driver_sql("CREATE TEMPORARY TABLE half_done (n integer)")
        raise Failed

    with app.app_context(), pytest.raises(Failed):
        connections.run(half_done)

    def status(run: Runner) -> Any:
        run.driver_sql("SELECT to_regclass('pg_temp.half_done') IS NULL, "
                       "pg_current_xact_id_if_assigned() IS NULL")
        return run.cursor.fetchone()

    with app.app_context():  # the same connection (LIFO), with nothing of that transaction
        assert connections.run(status) == (True, True)


def test_a_connection_closed_while_idle_is_replaced_before_use(
        client: FlaskClient, connections: postgres.PostgresStore,
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = create(client)
    assert _send(client, conf, 0).status_code == 204
    assert _cut_delivery_connections(database_url) >= 1
    monkeypatch.setattr(postgres, "IDLE_PING_S", 0.0)  # every connection counts as idle
    opened = _opened(connections)
    assert _send(client, conf, 1).status_code == 204  # the ping found it dead: no 503
    assert len(opened) == 1


def test_a_dead_connection_met_mid_delivery_is_a_503_and_all_older_ones_are_retired(
        client: FlaskClient, connections: postgres.PostgresStore,
        database_url: str) -> None:
    conf = create(client)
    assert _send(client, conf, 0).status_code == 204
    generation = connections.generation
    assert _cut_delivery_connections(database_url) >= 1
    failed = _send(client, conf, 1)  # used at once: no ping, so the delivery meets it
    assert failed.status_code == 503 and failed.headers["Retry-After"]
    assert failed.get_json()["error"]["code"] == "database_unavailable"
    assert connections.generation == generation + 1
    opened = _opened(connections)
    assert [_send(client, conf, n).status_code for n in (1, 2)] == [204, 204]  # the retry
    assert len(opened) == 1
    events = client.get(f"/api/v1/conferences/{conf['id']}/events", headers=AUTH)
    member_events = [e for e in events.get_json()["data"]
                     if e["eventType"] == "conference-member"]
    assert len(member_events) == 3 and all(e["deliveries"] == 1 for e in member_events)


# -- a delivery in one statement -----------------------------------------------------------------

def test_a_delivery_is_one_statement_and_one_transaction(
        client: FlaskClient, connections: postgres.PostgresStore, database_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A delivery sends one statement (one round trip; no BEGIN, no COMMIT), and what it
    writes, the event and its views, is one transaction's."""
    conf = create(client, tag="weekly")
    sent: list[str] = []
    execute, driver_sql = Runner.execute, Runner.driver_sql
    monkeypatch.setattr(Runner, "execute", lambda self, prepared, params: sent.append(
        prepared.sql) or execute(self, prepared, params))
    monkeypatch.setattr(Runner, "driver_sql", lambda self, sql: sent.append(sql) or driver_sql(
        self, sql))
    cid = conf["conferenceId"]
    for n, body in enumerate([ev.member(cid, "m-1", "active", ev.T0, active=1),
                              ev.member(cid, "m-1", "active", ev.T0, active=1),  # again
                              ev.member(cid, "m-2", "active", ev.T0, active=2),
                              ev.media("speak", cid, "started", ev.T0, tag="tts"),
                              ev.conference(cid, "completed", tag="weekly")]):
        answer = client.post(path_of(conf["callbackUrl"]), json=body)
        assert answer.status_code == 204 and len(sent) == n + 1, sent
    assert not any(sql in ("BEGIN", "COMMIT") for sql in sent)
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            written = conn.execute(text(
                "SELECT (SELECT xmin FROM event WHERE member_id = 'm-2'), "
                "(SELECT xmin FROM member WHERE member_id = 'm-2')")).one()
            assert written[0] == written[1]
            completed = conn.execute(text(
                "SELECT (SELECT xmin FROM event WHERE status = 'completed'), "
                "(SELECT xmin FROM conference WHERE id = :pk)"), {"pk": conf["id"]}).one()
            assert completed[0] == completed[1]
    finally:
        engine.dispose()
    view = client.get(f"/api/v1/conferences/{conf['id']}", headers=AUTH).get_json()
    assert view["state"] == "completed" and view["events"]["deliveries"] == 5


def _conference_row(pk: str, cid: str | None) -> dict[str, Any]:
    now = datetime(2024, 5, 1, 9)
    return {"id": pk, "conference_id": cid, "tag": "weekly", "from_number": "+19195551212",
            "callback_url": "http://example.com/c", "fallback_url": "http://example.com/f",
            "callback_method": "POST", "callback_timeout_ms": 2000, "state": "pending",
            "created_at": now, "updated_at": now, "active_members": 0}


def _file_all(engine: Any, at_once: bool, p: str) -> tuple[list[Any], Any, Any]:
    """File the same story of deliveries with one path; what it answered and left behind,
    with its conferences' names in place of their ids."""
    with engine.begin() as conn:
        conn.execute(Conference.__table__.insert(), [
            _conference_row(f"{p}main", f"{p}-1"), _conference_row(f"{p}bare", None),
            _conference_row(f"{p}late", None), _conference_row(f"{p}holder", f"{p}-held")])
    story: list[tuple[str, dict[str, Any]]] = [
        ("main", ev.conference(f"{p}-1", "created", tag="weekly")),
        ("main", ev.member(f"{p}-1", "m-1", "active", "2024-05-01T10:00:01Z", active=1)),
        ("main", ev.member(f"{p}-1", "m-1", "active", "2024-05-01T10:00:01Z", active=1)),
        ("main", ev.member(f"{p}-1", "m-2", "active", "2024-05-01T10:00:03Z", active=2,
                           mute=True, tag="weekly")),
        ("main", {**ev.member(f"{p}-1", "m-1", "active", "2024-05-01T10:00:02Z", active=2),
                  "hold": True}),  # older than m-2's count: the count stays 2
        ("main", ev.member(f"{p}-1", "m-1", "completed", "2024-05-01T10:00:05Z", active=1)),
        ("main", ev.member(f"{p}-other", "m-3", "active", ev.T0, active=1)),  # id mismatch
        ("main", ev.member(f"{p}-1", "m-4", "active", ev.T0, active=1, tag="daily")),
        ("main", ev.media("speak", f"{p}-1", "started", "2024-05-01T10:00:06Z", tag="tts")),
        ("main", {**ev.member(f"{p}-1", "m-5", "active", ev.T0, active=1),
                  "state": "levitating"}),  # invalid, kept with its conference
        ("shared", ev.member(f"{p}-1", "m-6", "active", "2024-05-01T10:00:04Z", active=3)),
        ("shared", ev.member(f"{p}-nobody", "m-7", "active", ev.T0, active=1)),
        ("shared", {"eventType": "conference-member", "memberId": f"{p}m-8",
                    "state": "active"}),
        ("nobody", ev.member(f"{p}-1", "m-9", "active", ev.T0, active=1)),
        ("bare", ev.conference(f"{p}-2", "created", tag="weekly")),  # fills in the id
        ("bare", ev.member(f"{p}-2", "m-1", "active", ev.T0, active=1)),
        ("late", ev.member(f"{p}-held", "m-1", "active", ev.T0, active=1)),  # id taken
        ("late", {"eventType": "conference-member", "memberId": f"{p}m-2", "state": "active",
                  "time": ev.T0, "activeMembers": 1}),  # matched, no id filled in
        ("main", ev.conference(f"{p}-1", "completed", tag="weekly",
                               created="2024-05-01T09:59:00Z")),
        ("main", ev.conference(f"{p}-1", "completed", tag="weekly",
                               created="2024-05-01T09:58:00Z")),  # completed once only
        ("main", ev.conference(f"{p}-1", "created", tag="weekly")),  # does not reopen it
    ]
    outcomes = []
    for role, body in story:
        subject = SHARED if role == "shared" else f"{p}{role}"
        parsed = interpret(read_body(json.dumps(body).encode(), "application/json"))
        raw = engine.raw_connection()
        try:
            raw.driver_connection.autocommit = at_once
            run = Runner(raw.driver_connection, engine.dialect, autocommit=at_once)
            outcome = filing.record(run, subject=subject, channel="callback", method="POST",
                                    event=parsed)
            if run.began or not at_once:
                raw.driver_connection.commit()
            run.close()
        finally:
            raw.driver_connection.autocommit = False
            raw.close()
        outcomes.append((outcome.duplicate, outcome.match, outcome.match_reason,
                         (outcome.conference_pk or "").removeprefix(p)))
    with engine.connect() as conn:
        conferences = [(r.id.removeprefix(p), (r.conference_id or "").removeprefix(p), *r[2:])
                       for r in conn.execute(text(
                           "SELECT id, conference_id, state, created_time, completed_time, "
                           "active_members, active_members_at, last_event_at FROM conference "
                           "WHERE id LIKE :p ORDER BY id"), {"p": f"{p}%"})]
        members = [(r[0].removeprefix(p), r[1].removeprefix(p), *r[2:]) for r in conn.execute(text(
            "SELECT conference_pk, member_id, call_id, state, joined_at, left_at, mute, hold, "
            "status_at, last_event_at FROM member WHERE conference_pk LIKE :p "
            "ORDER BY conference_pk, member_id"), {"p": f"{p}%"})]
    return outcomes, conferences, members


def test_one_statement_files_as_the_steps_do(database_url: str) -> None:
    """The rule is written twice, as steps (SQLite, re-matching) and as one statement
    (PostgreSQL's deliveries): the same story filed both ways gives the same answers and
    leaves the same rows."""
    if database_url.startswith("sqlite"):
        pytest.skip("one statement is PostgreSQL's")
    engine = create_engine(database_url)
    try:
        at_once = _file_all(engine, True, "a")
        steps = _file_all(engine, False, "s")
    finally:
        engine.dispose()
    for part, (one, other) in enumerate(zip(at_once, steps, strict=True)):
        for n, (a, b) in enumerate(zip(one, other, strict=True)):
            assert a == b, (("outcome", "conference", "member")[part], n)
    outcomes, conferences, members = at_once
    assert [o[1] for o in outcomes].count("matched") == 14
    assert {o[2] for o in outcomes} == {
        None, "conference_id_mismatch", "tag_mismatch", "state: unknown value",
        "unknown_conference", "no_conference_id", "conference_not_found",
        "conference_id_taken"}, outcomes
    assert [c[:3] for c in conferences] == [
        ("bare", "-2", "active"), ("holder", "-held", "pending"), ("late", "", "active"),
        ("main", "-1", "completed")]
    assert [m[:4] + m[6:8] for m in members] == [
        ("bare", "m-1", "c-m-1", "active", False, False),
        ("late", "m-2", None, "active", False, False),
        ("main", "m-1", "c-m-1", "completed", False, False),
        ("main", "m-2", "c-m-2", "active", True, False),
        ("main", "m-6", "c-m-6", "active", False, False)]
