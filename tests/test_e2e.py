"""The whole product over real HTTP: the service under gunicorn, the emulator on loopback.

Every check reads over HTTP only: the service's REST API and the emulator's own record.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from scripts.local import EMULATOR_AUTH, Stack, running, verify, wait_idle
from tests.servers import free_port

pytestmark = pytest.mark.system  # real servers: `pytest -m 'not system'` skips them


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from tests.conftest import POSTGRES_URL

    if POSTGRES_URL:
        from tests.conftest import fresh_postgres_database

        url, drop = fresh_postgres_database()
    else:
        url, drop = f"sqlite:///{tmp_path_factory.mktemp('e2e') / 'confhook.db'}", None
    logs: Path = tmp_path_factory.mktemp("e2e-logs")
    live = Stack(free_port(), free_port(), url, secrets.token_urlsafe(32),
                 "e2e-" + secrets.token_urlsafe(16),
                 extra_env={"CONFHOOK_WORKERS": "2", "CONFHOOK_THREADS": "4"},
                 emulator_args=["--retry-delay", "0.2", "--media-ms", "50"], log_dir=logs)
    with running(live):
        yield live
    if drop:
        drop()


def faults(stack: Stack, **counts: int) -> None:
    requests.post(f"{stack.emulator_url}/_emulator/faults", auth=EMULATOR_AUTH, json=counts,
                  timeout=5).raise_for_status()


def create(stack: Stack, **body: Any) -> dict[str, Any]:
    response = requests.post(f"{stack.service_url}/api/v1/conferences",
                             json={"from": "+19195551212", **body}, headers=stack.auth(),
                             timeout=15)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def play(stack: Stack, conference: dict[str, Any], **options: Any) -> dict[str, Any]:
    response = requests.post(f"{stack.emulator_url}/_emulator/scenarios", auth=EMULATOR_AUTH,
                             json={"conferenceId": conference["conferenceId"], "members": 3,
                                   "stepMs": 20, **options}, timeout=5)
    assert response.status_code == 202, response.text
    wait_idle(stack)
    run = requests.get(f"{stack.emulator_url}/_emulator/scenarios/{response.json()['id']}",
                       auth=EMULATOR_AUTH, timeout=5).json()
    assert run["status"] == "done", run
    return run  # type: ignore[no-any-return]


def service(stack: Stack, path: str) -> Any:
    response = requests.get(f"{stack.service_url}/api/v1{path}", headers=stack.auth(),
                            timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def emulator(stack: Stack, path: str) -> Any:
    response = requests.get(f"{stack.emulator_url}{path}", timeout=10,
                            headers={"Authorization": "Basic bG9jYWwtdG9rZW46bG9jYWwtc2VjcmV0"})
    assert response.status_code == 200, response.text
    return response.json()


def assert_views_agree(stack: Stack, conference: dict[str, Any]) -> None:
    """The service's view of the conference equals the emulator's own record of it."""
    mine = service(stack, f"/conferences/{conference['id']}")
    base = f"/v1/users/u-local/conferences/{conference['conferenceId']}"
    theirs = emulator(stack, base)
    their_members = emulator(stack, f"{base}/members")
    assert mine["state"] == theirs["state"]
    assert mine["activeMembers"] == theirs["activeMembers"]
    assert mine["createdTime"] == theirs["createdTime"]
    assert mine["completedTime"] == theirs.get("completedTime")
    assert sorted((m["memberId"], m["state"], m["mute"], m["hold"]) for m in mine["members"]) \
        == sorted((m["id"], m["state"], m["mute"], m["hold"]) for m in their_members)


CASES = {
    "post": ({}, {}),
    "get": ({"callbackHttpMethod": "GET"}, {}),
    "fallback after a slow callback": ({}, {"slowCallback": 3}),
    "fallback after a failing callback": ({}, {"failCallback": 3}),
    "provider duplicates": ({}, {"duplicate": 5}),
    "out of order": ({}, {"reorder": 3}),
    "callback before the 201": ({"callbackHttpMethod": "GET"}, {"early": 1}),
    "terminated with members in": ({}, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_delivered_event_is_stored_once_and_matched(stack: Stack, case: str) -> None:
    body, injected = CASES[case]
    faults(stack, **injected)
    try:
        conference = create(stack, tag=f"e2e {case}", **body)
        play(stack, conference, terminate=case.startswith("terminated"))
    finally:
        faults(stack, **dict.fromkeys(injected, 0))
    report = verify(stack, [conference["id"]])
    assert report.ok, (report.missing, report.stored_twice,
                       [(e["eventType"], e["matchReason"]) for e in report.unmatched])
    assert report.delivered == report.emitted > 10
    assert report.stored == report.delivered
    assert_views_agree(stack, conference)
    events = service(stack, f"/conferences/{conference['id']}/events?limit=1000")["data"]
    method = body.get("callbackHttpMethod", "POST")
    assert {e["method"] for e in events} == {method}
    if "fallback" in case:
        both = [e for e in events if e["channels"] == ["callback", "fallback"]]
        only_fallback = [e for e in events if e["channels"] == ["fallback"]]
        if "slow" in case:  # we stored it, the emulator gave up waiting and fell back
            # (A fallback answered after its own timeout on a loaded machine is retried:
            # a third delivery of the same, still one row.)
            assert len(both) == 3 and all(e["deliveries"] >= 2 for e in both)
        else:
            assert len(only_fallback) == 3
    # Playback and speak events carry the audio request's tag, not the conference's: they
    # are the conference's all the same, and their tag is kept as the audio's.
    audio = {(e["eventType"], e["tag"], e["match"]) for e in events
             if e["eventType"] in ("conference-playback", "conference-speak")}
    assert audio == {("conference-playback", "hold-music", "matched"),
                     ("conference-speak", "recording-notice", "matched")}
    if case == "provider duplicates":
        assert sum(e["deliveries"] - 1 for e in events) == 5


def test_dropped_deliveries_are_reported_not_invented(stack: Stack) -> None:
    faults(stack, drop=2)
    try:
        conference = create(stack, tag="lossy")
        play(stack, conference)
    finally:
        faults(stack, drop=0)
    report = verify(stack, [conference["id"]])
    assert report.ok and report.dropped == 2
    assert report.stored == report.delivered == report.emitted - 2


def test_delivery_log_shows_each_request(stack: Stack) -> None:
    faults(stack, failCallback=1)
    try:
        conference = create(stack, tag="log")
        wait_idle(stack)
    finally:
        faults(stack, failCallback=0)
    log = requests.get(f"{stack.emulator_url}/_emulator/deliveries", auth=EMULATOR_AUTH,
                       params={"conferenceId": conference["conferenceId"]}, timeout=5).json()
    rows = log["data"]
    assert [(r["channel"], r["ok"], r["fallbackUsed"]) for r in rows] == [
        ("callback", False, False), ("fallback", True, True)]
    assert rows[1]["status"] == 204
    assert rows[1]["url"].startswith(stack.service_url + "/callbacks/fallback/")
