"""Many deliveries at once into one app over real HTTP: each answered 204 is stored, once.

On SQLite the deliveries of a process are committed in groups by one writer thread (see
app/delivery/sqlite.py); on PostgreSQL each request commits its own. Both must hold the same
promises: a 204 only after the commit, duplicates collapsed, a bad delivery filed alone.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from flask import Flask
from flask.testing import FlaskClient

from app import delivery
from app.delivery.sqlite import SQLiteStore
from tests import events as ev
from tests.conftest import AUTH, create
from tests.servers import ThreadedServer


def test_a_burst_of_deliveries_is_stored_exactly_once(app: Flask, client: FlaskClient,
                                                       live_app: ThreadedServer) -> None:
    conferences = [create(client, tag=f"burst-{i}") for i in range(4)]
    jobs: list[tuple[str, dict[str, Any]]] = []
    for n in range(240):
        conference = conferences[n % 4]
        event = ev.member(conference["conferenceId"], f"m-{n % 7}", "active",
                          f"2024-05-01T10:{n // 60:02d}:{n % 60:02d}Z", active=n % 7 + 1,
                          tag=conference["tag"])
        jobs.append((conference["callbackUrl"], event))
        if n % 3 == 0:  # a third come twice, once through each URL
            jobs.append((conference["fallbackUrl"], event))
        if n % 40 == 0:  # and some are not understood, in the same bursts: kept as invalid
            jobs.append((conference["callbackUrl"], {**event, "activeMembers": -5}))

    def send(job: tuple[str, dict[str, Any]]) -> int:
        url, body = job
        return requests.post(url, json=body, timeout=30).status_code

    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(send, jobs))
    assert statuses == [204] * len(jobs)
    stored = []
    for i, conference in enumerate(conferences):
        view = client.get(f"/api/v1/conferences/{conference['id']}", headers=AUTH).get_json()
        stored.append((view["events"]["total"], view["events"]["deliveries"]))
        latest = max(n for n in range(240) if n % 4 == i)  # its event with the latest time
        assert view["activeMembers"] == latest % 7 + 1
    assert sum(total for total, _ in stored) == 240 + 6
    assert sum(deliveries for _, deliveries in stored) == 240 + 80 + 6
    invalid = client.get("/api/v1/events?match=invalid", headers=AUTH).get_json()["data"]
    assert len(invalid) == 6
    assert {e["matchReason"] for e in invalid} == {"activeMembers: not an integer from 0 to "
                                                   "100000"}
    committer = delivery.intake(app).store
    if isinstance(committer, SQLiteStore):  # the burst was committed in fewer, larger batches
        assert committer.deliveries >= 240 + 80 + 6
        assert committer.batches < committer.deliveries / 2, vars(committer)
