"""Running it: two gunicorn instances on one database, probes, metrics, structured logs.

The instances run as in production (gunicorn, several workers, JSON logs) on the database the
suite runs on: SQLite, or PostgreSQL with CONFHOOK_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import json
import random
import secrets
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from scripts.local import Stack, running, wait_idle
from tests import events as ev
from tests.servers import free_port

pytestmark = pytest.mark.system  # real servers: `pytest -m 'not system'` skips them

METRICS_TOKEN = "metrics-" + secrets.token_urlsafe(16)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Stack]]:
    """Instance A (with the emulator) and instance B, sharing one database and secret."""
    from tests.conftest import POSTGRES_URL

    drop = None
    if POSTGRES_URL:
        from tests.conftest import fresh_postgres_database

        url, drop = fresh_postgres_database()
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('pair') / 'confhook.db'}"
    secret, token = secrets.token_urlsafe(32), "ops-" + secrets.token_urlsafe(16)
    env = {"CONFHOOK_WORKERS": "3", "CONFHOOK_THREADS": "4",
           "CONFHOOK_METRICS_TOKEN": METRICS_TOKEN}
    a = Stack(free_port(), free_port(), url, secret, token, extra_env=env,
              emulator_args=["--retry-delay", "0.2"], log_dir=tmp_path_factory.mktemp("a"))
    b = Stack(free_port(), a.emulator_port, url, secret, token, extra_env=env,
              with_emulator=False, log_dir=tmp_path_factory.mktemp("b"))
    # B's callback URLs are A's: both instances answer the same URLs, as behind a balancer.
    with running(a), running(b):
        yield a, b
    if drop:
        drop()


def create(stack: Stack, **body: Any) -> dict[str, Any]:
    response = requests.post(f"{stack.service_url}/api/v1/conferences", timeout=15,
                             json={"from": "+19195551212", **body}, headers=stack.auth())
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def on(stack: Stack, url: str) -> str:
    """The same callback URL, on ``stack``'s port."""
    path = url.split("/", 3)[3]
    return f"{stack.service_url}/{path}"


def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = requests.get(f"{stack.service_url}/metrics", timeout=10,
                            headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_concurrent_duplicates_at_two_instances_are_one_event(pair: tuple[Stack, Stack]
                                                               ) -> None:
    a, b = pair
    conference = create(a, tag="race")
    cid = conference["conferenceId"]
    bodies = [ev.member(cid, f"m-{i}", "active", f"2024-05-01T10:0{i}:00Z", active=i + 1,
                        tag="race") for i in range(6)]
    copies = 8
    jobs = [(stack, url, body) for body in bodies for n in range(copies)
            for stack, url in [((a, b)[n % 2], (conference["callbackUrl"],
                                                conference["fallbackUrl"])[n // 2 % 2])]]
    barrier = threading.Barrier(len(jobs))

    def send(job: tuple[Stack, str, dict[str, Any]]) -> int:
        stack, url, body = job
        barrier.wait()
        return requests.post(on(stack, url), json=body, timeout=30).status_code

    with ThreadPoolExecutor(len(jobs)) as pool:
        statuses = list(pool.map(send, jobs))
    assert statuses == [204] * len(jobs)
    stored = requests.get(f"{b.service_url}/api/v1/conferences/{conference['id']}/events",
                          params={"limit": 1000}, headers=b.auth(), timeout=10).json()["data"]
    members = [e for e in stored if e["eventType"] == "conference-member"]
    assert len(members) == len(bodies)
    assert all(e["deliveries"] == copies and e["channels"] == ["callback", "fallback"]
               and e["match"] == "matched" for e in members)
    view = requests.get(f"{a.service_url}/api/v1/conferences/{conference['id']}",
                        headers=a.auth(), timeout=10).json()
    assert view["activeMembers"] == len(bodies) and len(view["members"]) == len(bodies)


def test_two_instances_take_one_load_together(pair: tuple[Stack, Stack]) -> None:
    """Scale-out: one stream of deliveries spread over both instances, each event twice (once
    to each, as retries after a lost answer would); every event is stored once, with both
    deliveries counted, and the views come out as if one instance had taken them all."""
    a, b = pair
    conferences = [create(a, tag="load") for _ in range(4)]
    per_conference = 40
    jobs = []
    for conference in conferences:
        for i in range(per_conference):
            body = ev.member(conference["conferenceId"], f"m-{i}", "active",
                             f"2024-05-01T10:{i // 60:02d}:{i % 60:02d}Z", active=i + 1,
                             tag="load")
            jobs += [(a, conference["callbackUrl"], body), (b, conference["fallbackUrl"], body)]
    random.Random(7).shuffle(jobs)

    def send(job: tuple[Stack, str, dict[str, Any]]) -> int:
        stack, url, body = job
        with requests.Session() as session:
            for _ in range(20):  # as the provider retries a 503
                status = session.post(on(stack, url), json=body, timeout=30).status_code
                if status != 503:
                    return status
        return status

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(send, jobs))
    assert statuses == [204] * len(jobs)
    for conference in conferences:
        stored = requests.get(
            f"{b.service_url}/api/v1/conferences/{conference['id']}/events",
            params={"limit": 1000, "eventType": "conference-member"}, headers=b.auth(),
            timeout=10).json()["data"]
        assert len(stored) == per_conference
        assert all(e["deliveries"] == 2 and e["channels"] == ["callback", "fallback"]
                   for e in stored)
        view = requests.get(f"{a.service_url}/api/v1/conferences/{conference['id']}",
                            headers=a.auth(), timeout=10).json()
        assert view["activeMembers"] == per_conference
        assert len(view["members"]) == per_conference and view["state"] == "active"


def test_health_probes(pair: tuple[Stack, Stack]) -> None:
    a, _ = pair
    health = requests.get(f"{a.service_url}/healthz", timeout=5)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = requests.get(f"{a.service_url}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "migrations": "ok"}}
    assert ready.headers["Cache-Control"] == "no-store"


def test_metrics_add_up_across_workers(pair: tuple[Stack, Stack]) -> None:
    a, _ = pair
    assert requests.get(f"{a.service_url}/metrics", timeout=5).status_code == 401
    before = scrape(a)
    conference = create(a, tag="metrics")
    cid = conference["conferenceId"]
    events = [ev.media("speak", cid, "started", f"2024-05-01T10:00:0{i}Z", tag="metrics")
              for i in range(9)]
    with requests.Session() as http:  # new connections, so several workers answer
        for event in events:
            assert requests.post(conference["callbackUrl"], json=event,
                                 timeout=10).status_code == 204
        assert requests.post(conference["fallbackUrl"], json=events[0],
                             timeout=10).status_code == 204
        bad = conference["callbackUrl"].rsplit("/", 1)[0] + "/" + "A" * 24
        assert http.post(bad, json=events[0], timeout=10).status_code == 401
        # Not understood, so kept as received and flagged: still a 204.
        assert requests.post(conference["callbackUrl"], json={"eventType": 3},
                             timeout=10).status_code == 204
    wait_idle(a)  # the emulator's own "created" callback is one more delivery
    # Every scrape sees every worker's counts, whichever worker answers it.
    for _ in range(6):
        after = scrape(a)
        labels = {"event_type": "conference-speak", "method": "POST"}
        assert value(after, "confhook_deliveries_total", channel="callback", outcome="stored",
                     **labels) - value(before, "confhook_deliveries_total", channel="callback",
                                       outcome="stored", **labels) == 9
        assert value(after, "confhook_deliveries_total", channel="fallback",
                     outcome="duplicate", **labels) - value(
            before, "confhook_deliveries_total", channel="fallback", outcome="duplicate",
            **labels) == 1
        rejected = {"event_type": "none", "method": "POST", "channel": "callback"}
        assert value(after, "confhook_deliveries_total", outcome="rejected", **rejected) \
            - value(before, "confhook_deliveries_total", outcome="rejected", **rejected) == 1
        invalid = {**rejected, "event_type": "none"}
        assert value(after, "confhook_deliveries_total", outcome="invalid", **invalid) \
            - value(before, "confhook_deliveries_total", outcome="invalid", **invalid) == 1
        create_calls = {"operation": "POST conferences"}
        assert value(after, "confhook_provider_requests_total", outcome="ok", **create_calls) \
            - value(before, "confhook_provider_requests_total", outcome="ok",
                    **create_calls) == 1
        route = {"route": "/callbacks/<channel>/<subject>/<key>", "method": "POST",
                 "status": "204"}
        # 9 stored, 1 duplicate, 1 not understood, and the emulator's "created".
        assert value(after, "confhook_request_duration_seconds_count", **route) - value(
            before, "confhook_request_duration_seconds_count", **route) == 12
        assert value(after, "confhook_database_up") == 1
        assert value(after, "confhook_conferences", state="created") >= 1


def test_logs_are_json_lines_without_secrets(pair: tuple[Stack, Stack]) -> None:
    a, _ = pair
    conference = create(a, tag="logs")
    key = conference["callbackUrl"].rsplit("/", 1)[1]
    response = requests.get(conference["callbackUrl"], timeout=10, params={
        **ev.as_query(ev.conference(conference["conferenceId"], "created", tag="logs"))},
        headers={"X-Request-Id": "req-from-proxy-1"})
    assert response.status_code == 204
    assert response.headers["X-Request-Id"] == "req-from-proxy-1"
    odd = requests.get(f"{a.service_url}/healthz", headers={"X-Request-Id": "bad id <script>"},
                       timeout=5)
    assert len(odd.headers["X-Request-Id"]) == 16  # made here, not taken from the header
    # A request line gunicorn refuses (a raw non-ASCII byte) is logged by gunicorn itself,
    # with the line quoted: never with the key, nor the query string.
    path = "/" + conference["callbackUrl"].split("/", 3)[3]
    with socket.create_connection(("127.0.0.1", a.service_port), timeout=5) as raw:
        raw.sendall(b"GET " + path.encode() + b"?eventType=x&secret=\xff HTTP/1.1\r\n"
                    b"Host: x\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400")
    assert a.log_dir is not None
    lines = (Path(a.log_dir) / "service.log").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(records) > 10
    text = "\n".join(lines)
    assert key not in text and a.api_token not in text and METRICS_TOKEN not in text
    assert "secret=" not in text
    mine = [r for r in records if r.get("request_id") == "req-from-proxy-1"]
    assert len(mine) == 1, mine  # one line for the request and the delivery it carried
    line = mine[0]
    assert line["logger"] == "app.request"
    assert line["message"].startswith("GET /callbacks/callback/")
    assert "delivery stored (conference event" in line["message"]
    assert line["status"] == 204 and line["method"] == "GET"
    assert line["path"].endswith("/<key>") and line["duration_ms"] > 0
    assert {"time", "level", "logger"} <= set(line)
    assert line["outcome"] == "stored" and line["event_type"] == "conference"
    assert line["channel"] == "callback" and line["match"] == "matched"
    # gunicorn's own lines are JSON too.
    assert any(r.get("logger") == "gunicorn.error" for r in records)


# -- in-process: readiness failures, the metrics token --------------------------------------

def test_readiness_fails_clearly_and_says_nothing_more(env: dict[str, str],
                                                      tmp_path: Path) -> None:
    import sqlite3

    from app import create_app

    sqlite3.connect(tmp_path / "empty.db").close()  # a database, not migrated
    empty = create_app({**env, "DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"})
    response = empty.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unready",
                                   "checks": {"database": "ok", "migrations": "behind"}}
    missing = create_app({**env, "DATABASE_URL": f"sqlite:///{tmp_path / 'missing.db'}"})
    response = missing.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unready", "checks": {"database": "unreachable"}}
    assert not (tmp_path / "missing.db").exists()  # only `flask migrate` creates the file
    gone = create_app({**env, "DATABASE_URL": f"sqlite:///{tmp_path / 'no' / 'such.db'}"})
    response = gone.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unready", "checks": {"database": "unreachable"}}
    assert gone.test_client().get("/healthz").status_code == 200  # alive all the same


def test_readiness_on_postgresql_says_the_migrations_are_behind(env: dict[str, str]) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from app import create_app
    from app.db import database
    from tests.conftest import POSTGRES_URL

    if not POSTGRES_URL:
        pytest.skip("a PostgreSQL database: the suite runs on SQLite")
    name = f"confhook_unmigrated_{secrets.token_hex(4)}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
        empty = create_app({**env, "DATABASE_URL": url})
        response = empty.test_client().get("/readyz")
        database(empty).engine.dispose()
        assert response.status_code == 503
        assert response.get_json() == {"status": "unready",
                                       "checks": {"database": "ok", "migrations": "behind"}}
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_metrics_token_is_optional_and_checked(env: dict[str, str]) -> None:
    from app import create_app

    open_metrics = create_app(env).test_client().get("/metrics")
    assert open_metrics.status_code == 200
    assert b"confhook_deliveries_total" in open_metrics.data or \
        b"# HELP confhook_deliveries_total" in open_metrics.data
    guarded = create_app({**env, "CONFHOOK_METRICS_TOKEN": METRICS_TOKEN}).test_client()
    for header in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                   {"Authorization": f"Basic {METRICS_TOKEN}"}):
        response = guarded.get("/metrics", headers=header)
        assert response.status_code == 401 and response.get_json()["error"]["code"] == \
            "unauthorized"
    assert guarded.get("/metrics", headers={
        "Authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 200
