"""PostgreSQL stops answering without closing anything: a delivery still answers in time.

Stopping the server (``test_faults``) closes its connections, and the service sees it at
once. A server frozen by a storage stall, or its host gone from the network, closes nothing:
the service's connections stay open, and without bounds of its own a delivery (or a
readiness probe) waits for as long as TCP does: minutes, or for ever while the frozen
server's kernel still acknowledges. The service reaches the database through a relay
(``tests/netfault.py``) that can freeze, or whose port ``tc`` can cut off.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy.engine import make_url

from app import create_app, db, delivery
from tests import events as ev
from tests.conftest import AUTH, create, path_of
from tests.netfault import Blackhole, Relay

pytestmark = pytest.mark.system  # real servers: `pytest -m 'not system'` skips them

WAIT_MS = 1000
GRACE_S = 0.5  # the watchdog's, after the wait: min(1 s, half the wait)


@pytest.fixture
def relay(database_url: str) -> Iterator[Relay]:
    if database_url.startswith("sqlite"):
        pytest.skip("a PostgreSQL fault: the suite runs on SQLite")
    url = make_url(database_url)
    relay = Relay(url.host or "127.0.0.1", url.port or 5432)
    yield relay
    relay.close()


@pytest.fixture
def relayed(env: dict[str, str], database_url: str, relay: Relay) -> Iterator[Flask]:
    url = make_url(database_url).set(host="127.0.0.1", port=relay.port)
    app = create_app({**env, "DATABASE_URL": url.render_as_string(hide_password=False),
                      "CONFHOOK_DELIVERY_WAIT_MS": str(WAIT_MS)})
    yield app
    relay.thaw()
    db.database(app).engine.dispose()


def _timed(call: Callable[[], Any], limit_s: float) -> tuple[Any, float]:
    """``call()``'s result and how long it took; None if it did not return within
    ``limit_s`` (it goes on in its thread)."""
    result: list[Any] = []
    began = time.monotonic()
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(limit_s)
    return (result[0] if result else None), time.monotonic() - began


def _tries(call: Callable[[], Any], wanted: int) -> list[int]:
    """The statuses of up to 3 tries of ``call()``, until one answers ``wanted``; each must
    answer within the wait and a connect."""
    statuses = []
    for _ in range(3):
        answer, took = _timed(call, 15)
        assert answer is not None, "it waited on a dead host's connection"
        assert took < WAIT_MS / 1000 + GRACE_S + 2
        statuses.append(answer.status_code)
        if answer.status_code == wanted:
            break
    return statuses


def _deliver(app: Flask, conf: dict[str, Any], n: int) -> Any:
    return app.test_client().post(path_of(conf["callbackUrl"]), json=ev.member(
        conf["conferenceId"], f"m-{n}", "active", f"2024-05-01T10:00:{n:02d}.000Z",
        active=1))


def _member_events(app: Flask, conf: dict[str, Any]) -> list[dict[str, Any]]:
    events = app.test_client().get(f"/api/v1/conferences/{conf['id']}/events", headers=AUTH)
    return [e for e in events.get_json()["data"] if e["eventType"] == "conference-member"]


def test_a_delivery_to_a_frozen_server_is_a_503_within_the_wait(relayed: Flask,
                                                                relay: Relay) -> None:
    conf = create(relayed.test_client())
    assert _deliver(relayed, conf, 0).status_code == 204
    connections = delivery.intake(relayed).store
    generation = connections.generation
    relay.freeze()
    answer, took = _timed(lambda: _deliver(relayed, conf, 1), 10 * WAIT_MS / 1000)
    assert answer is not None, "the delivery waited on the frozen server"
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert answer.get_json()["error"]["code"] == "database_busy"
    assert WAIT_MS / 1000 <= took < WAIT_MS / 1000 + GRACE_S + 1.5
    assert connections.generation == generation + 1  # the others are retired too
    relay.thaw()
    # The provider's retry, and the next event: stored on a new connection, no restart.
    assert [_deliver(relayed, conf, n).status_code for n in (1, 2)] == [204, 204]
    stored = _member_events(relayed, conf)
    assert sorted(e["memberId"] for e in stored) == ["m-0", "m-1", "m-2"]


def test_readiness_on_a_frozen_server_is_unready_within_the_wait(relayed: Flask,
                                                                 relay: Relay) -> None:
    client = relayed.test_client()
    assert client.get("/readyz").status_code == 200
    relay.freeze()
    answer, took = _timed(lambda: relayed.test_client().get("/readyz"), 10 * WAIT_MS / 1000)
    assert answer is not None, "readiness waited on the frozen server"
    assert answer.status_code == 503
    assert answer.get_json() == {"status": "unready", "checks": {"database": "unreachable"}}
    assert took < WAIT_MS / 1000 + GRACE_S + 1.5
    assert relayed.test_client().get("/healthz").status_code == 200
    relay.thaw()
    assert client.get("/readyz").get_json() == {"status": "ready", "checks": {
        "database": "ok", "migrations": "ok"}}


def test_a_delivery_answered_in_time_leaves_the_watchdog_asleep(relayed: Flask) -> None:
    conf = create(relayed.test_client())
    watchdog = delivery.intake(relayed).store.watchdog
    assert _deliver(relayed, conf, 0).status_code == 204  # its thread starts
    time.sleep(0.1)
    woken = watchdog.wakes
    for n in range(1, 11):
        assert _deliver(relayed, conf, n).status_code == 204
    assert not watchdog.watches
    assert watchdog.wakes - woken <= 1  # its period (the wait, 1 s) may end meanwhile


@pytest.fixture
def blackhole(relay: Relay) -> Iterator[Blackhole]:
    if not Blackhole.available():
        pytest.skip("cutting a port off needs root, CAP_NET_ADMIN and tc's htb")
    hole = Blackhole(relay.port)
    yield hole
    hole.stop()


def test_after_a_failover_the_dead_hosts_connections_are_dropped_and_a_standby_serves(
        relayed: Flask, blackhole: Blackhole) -> None:
    """The primary's host dies with the service's connections open, and a standby takes its
    address: new connections get answers, the old ones never again."""
    client = relayed.test_client()
    conf = create(client)
    assert _deliver(relayed, conf, 0).status_code == 204
    assert client.get("/readyz").status_code == 200
    blackhole.start()
    assert blackhole.silence_open_connections() >= 2  # the API's pool and the deliveries'
    blackhole.restore_port()
    # Readiness asks on a delivery connection: the first probe may meet the dead one and
    # say unreachable within the wait; the connections opened before are retired with it.
    assert _tries(lambda: relayed.test_client().get("/readyz"), 200) in ([200], [503, 200])
    # A delivery that meets a dead connection (its statements are never acknowledged) is a
    # 503 within the wait, and every connection opened before it is retired. The retry is
    # stored on a new connection.
    assert _tries(lambda: _deliver(relayed, conf, 1), 204) in ([204], [503, 204])
    assert sorted(e["memberId"] for e in _member_events(relayed, conf)) == ["m-0", "m-1"]


def test_a_server_gone_from_the_network_is_unready_within_the_wait(
        relayed: Flask, blackhole: Blackhole) -> None:
    client = relayed.test_client()
    conf = create(client)
    assert _deliver(relayed, conf, 0).status_code == 204
    blackhole.start()
    # The pooled connection's ping gets no acknowledgement, a new connection no answer
    # (connect_timeout, at least 2 s).
    answer, took = _timed(lambda: relayed.test_client().get("/readyz"), 15)
    assert answer is not None, "readiness waited on a server gone from the network"
    assert answer.status_code == 503
    assert answer.get_json()["checks"]["database"] == "unreachable"
    assert took < WAIT_MS / 1000 + 2 + 2
    answer, took = _timed(lambda: _deliver(relayed, conf, 1), 15)
    assert answer is not None, "the delivery waited on a server gone from the network"
    assert answer.status_code == 503 and took < 2 + 2
    blackhole.stop()
    assert _deliver(relayed, conf, 1).status_code == 204
