"""PostgreSQL: deliveries on connections of a pool of their own, without its ping.

Connections are reused without a round trip to check them; one that the server has closed is
found by the ping after idling, or by the delivery that meets it, and then replaced.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, event, text

from app import delivery
from app.delivery import postgres
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
