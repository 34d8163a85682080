"""Heavy reads do not starve the provider's deliveries (the service under gunicorn).

One worker with four threads; clients flood it with large exports, some of which they never
read. The API's share of the worker is bounded (``CONFHOOK_READ_CONCURRENCY``, two of four
threads by default), so deliveries keep threads of their own and are answered well within the
provider's patience: under half the callback timeout (2 s), every one.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, insert

from app.models import Event, utcnow
from scripts.local import Stack, running
from tests import events as ev
from tests.servers import free_port

pytestmark = pytest.mark.system
EVENTS = 6000
FLOOD_S = 6.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from tests.conftest import POSTGRES_URL

    drop = None
    if POSTGRES_URL:
        from tests.conftest import fresh_postgres_database

        url, drop = fresh_postgres_database()
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('capacity') / 'confhook.db'}"
    logs: Path = tmp_path_factory.mktemp("capacity-logs")
    live = Stack(free_port(), free_port(), url, secrets.token_urlsafe(32),
                 "cap-" + secrets.token_urlsafe(16),
                 extra_env={"CONFHOOK_WORKERS": "1", "CONFHOOK_THREADS": "4"}, log_dir=logs)
    with running(live):
        _fill(url)
        yield live
    if drop:
        drop()


def _fill(url: str) -> None:
    """Enough stored events that an export takes a while and does not fit a socket buffer."""
    now = utcnow()
    rows = [{"event_type": "conference-member", "unknown_type": False, "conference_id": "c",
             "member_id": f"m-{n}", "status": "active", "occurred_at": now,
             "payload": {"eventType": "conference-member", "pad": "x" * 300, "n": n},
             "dedup_key": f"{n:064d}", "first_received_at": now, "last_received_at": now,
             "deliveries": 1, "channels": 1, "method": "POST", "match": "unmatched"}
            for n in range(EVENTS)]
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(insert(Event.__table__), rows)
    engine.dispose()


def test_a_flood_of_exports_leaves_deliveries_answered_in_time(stack: Stack) -> None:
    conference = requests.post(f"{stack.service_url}/api/v1/conferences", timeout=15,
                               json={"from": "+19195551212", "tag": "cap"},
                               headers=stack.auth()).json()
    export = f"{stack.service_url}/api/v1/events/export?format=ndjson"
    stop = time.monotonic() + FLOOD_S
    answers: list[int] = []

    def reader() -> None:
        while time.monotonic() < stop:
            try:
                answers.append(requests.get(export, headers=stack.auth(), timeout=30
                                            ).status_code)
            except requests.RequestException:
                answers.append(0)

    def stalled() -> None:
        # Asks for an export and never reads it, holding whatever serves it.
        while time.monotonic() < stop:
            with socket.create_connection(("127.0.0.1", stack.service_port), timeout=30) as s:
                s.sendall(f"GET /api/v1/events/export HTTP/1.1\r\nHost: x\r\n"
                          f"Authorization: Bearer {stack.api_token}\r\n\r\n".encode())
                time.sleep(2)

    waits: list[float] = []

    def deliveries() -> None:
        n = 0
        while time.monotonic() < stop:
            n += 1
            event = ev.member(conference["conferenceId"], f"d-{n}", "active",
                              f"2024-05-01T10:{n // 60 % 60:02d}:{n % 60:02d}Z", active=1,
                              tag="cap")
            began = time.monotonic()
            response = requests.post(conference["callbackUrl"], json=event, timeout=10)
            waits.append(time.monotonic() - began)
            assert response.status_code == 204
            time.sleep(0.05)

    with ThreadPoolExecutor(40) as pool:
        jobs = [pool.submit(reader) for _ in range(24)]
        jobs += [pool.submit(stalled) for _ in range(12)]
        time.sleep(0.5)  # the flood is on before the first delivery
        jobs.append(pool.submit(deliveries))
        for job in jobs:
            job.result()
    assert len(waits) > 20
    assert max(waits) < 1.0, sorted(waits)[-5:]  # half of the 2 s callback timeout
    # The flood was served, what did not fit told to come back: never a 5xx but 503.
    assert 200 in answers and set(answers) <= {200, 503, 0}
    assert threading.active_count() < 100
