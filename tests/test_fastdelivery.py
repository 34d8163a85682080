"""The fast delivery path (app/fastdelivery.py) answers exactly as the Flask route does.

Each case sends a delivery through the whole app, then its twin through the route alone (the
WSGI app beneath the fast path), and compares what came back, what was logged and stored.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import Client
from werkzeug.wrappers import Response

from app import callbacks, db
from app.fastdelivery import FastDeliveries
from app.keys import callback_key
from tests import events as ev
from tests.conftest import AUTH, SECRET, create, path_of


def fast(app: Flask) -> FastDeliveries:
    layer = app.wsgi_app
    assert isinstance(layer, FastDeliveries)
    return layer


class _RouteClient(Client):
    def open(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("environ_base", {"REMOTE_ADDR": "127.0.0.1"})  # as Flask's client
        return super().open(*args, **kwargs)


def route_only(app: Flask) -> Client:
    """A client of the app without the fast path: every request goes through Flask."""
    return _RouteClient(fast(app).inner, Response)


def send(client: Any, url: str, event: dict[str, Any], method: str, **kwargs: Any) -> Any:
    if method == "GET":
        return client.get(path_of(url), query_string=ev.as_query(event), **kwargs)
    return client.post(path_of(url), json=event, **kwargs)


def request_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The request log lines so far, as their fields and their message; then forget them."""
    lines = [{**r.__dict__, "text": r.getMessage()} for r in caplog.records
             if r.name == "app.request"]
    caplog.clear()
    return lines


SAME = ("method", "path", "route", "status", "remote", "outcome", "event_type", "channel",
        "match", "conference")


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_a_good_delivery_is_answered_logged_and_stored_as_the_route_does(
        app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture,
        method: str) -> None:
    caplog.set_level(logging.INFO, logger="app")
    conf = create(client, tag="weekly")
    url = conf["callbackUrl"]
    caplog.clear()
    one = ev.member(conf["conferenceId"], "m-1", "active", "2024-05-01T10:00:05.000Z",
                    active=1, tag="weekly")
    two = ev.member(conf["conferenceId"], "m-2", "active", "2024-05-01T10:00:06.000Z",
                    active=2, tag="weekly")
    before = fast(app).served
    quick = send(client, url, one, method, headers={"X-Request-Id": "fast-path-0001"})
    assert fast(app).served == before + 1
    [quick_line] = request_lines(caplog)
    slow = send(route_only(app), url, two, method, headers={"X-Request-Id": "the-route-001"})
    assert fast(app).served == before + 1
    [slow_line] = request_lines(caplog)

    for response in (quick, slow):
        assert response.status_code == 204 and response.data == b""
        assert "Content-Type" not in response.headers
    assert set(quick.headers.keys()) == set(slow.headers.keys())
    assert quick.headers["X-Request-Id"] == "fast-path-0001"
    event_id, outcome, match = quick.headers["X-Confhook-Event"].split("; ")
    assert (outcome, match) == ("stored", "matched")
    assert slow.headers["X-Confhook-Event"].split("; ")[1:] == ["stored", "matched"]

    assert {k: quick_line[k] for k in SAME} == {k: slow_line[k] for k in SAME}
    assert quick_line["request_id"] == "fast-path-0001"
    assert quick_line["event_id"] == int(event_id)
    assert quick_line["text"].split(" ms")[1].replace(event_id, "N") == \
        slow_line["text"].split(" ms")[1].replace(str(slow_line["event_id"]), "N")

    # Stored and folded into the views alike; a repeat is a duplicate either way.
    members = client.get(f"/api/v1/conferences/{conf['id']}/members", headers=AUTH
                         ).get_json()["data"]
    assert sorted((m["memberId"], m["state"]) for m in members) == [
        ("m-1", "active"), ("m-2", "active")]
    assert send(client, url, two, method).headers["X-Confhook-Event"].split("; ")[1] == \
        "duplicate"
    assert send(route_only(app), url, one, method).headers["X-Confhook-Event"] == \
        f"{event_id}; duplicate; matched"


def test_what_the_fast_path_does_not_take_is_answered_by_the_route(
        app: Flask, client: FlaskClient) -> None:
    conf = create(client)
    url = path_of(conf["callbackUrl"])
    bad_key = url.rsplit("/", 1)[0] + "/" + callback_key("another-secret-entirely", conf["id"])
    event = ev.conference(conf["conferenceId"], "created")
    cases: list[tuple[str, dict[str, Any], int, str | None]] = [
        ("bad key", {"path": bad_key, "json": event}, 401, "unauthorized"),
        ("malformed JSON", {"data": b'{"eventType": "conference",',
                            "content_type": "application/json"}, 400, "invalid_json"),
        ("invalid event", {"json": {**event, "status": "exploded"}}, 422, "invalid_event"),
        ("no event type", {"json": {"conferenceId": conf["conferenceId"]}}, 422,
         "invalid_event"),
        ("text body", {"data": b"hello", "content_type": "text/plain"}, 415,
         "unsupported_media_type"),
        ("oversized body", {"json": {**event, "pad": "x" * 70_000}}, 413, "payload_too_large"),
    ]
    before = fast(app).served
    for name, kwargs, status, code in cases:
        path = kwargs.pop("path", url)
        quick = client.post(path, **kwargs)
        slow = route_only(app).post(path, **kwargs)
        assert quick.status_code == slow.status_code == status, name
        if code is not None:
            assert quick.get_json() == slow.get_json(), name
            assert quick.get_json()["error"]["code"] == code, name
            if status == 400:  # the route read the very bytes the fast path had read
                assert "not valid JSON" in quick.get_json()["error"]["message"]
    assert fast(app).served == before  # none of them was answered by the fast path
    # A wrong channel, a wrong method, a non-ASCII path are the route's too.
    assert client.post(url.replace("/callback/", "/other/"), json=event).status_code == 404
    assert client.put(url, json=event).status_code == 405
    assert client.post(url + "\u00e9", json=event).status_code == 401
    assert fast(app).served == before
    # A form body is a good delivery too: stored, on the fast path.
    assert client.post(url, data=ev.as_query(event)).status_code == 204
    assert fast(app).served == before + 1


def test_refusals_through_the_fast_path_are_counted_once(app: Flask,
                                                          client: FlaskClient) -> None:
    from sqlalchemy import func, select

    from app.models import RejectedDelivery

    conf = create(client)
    url = path_of(conf["callbackUrl"])
    for _ in range(3):
        assert client.post(url, json={"eventType": ""}).status_code == 422
    with app.app_context():
        counted = db.read_session().scalar(
            select(func.coalesce(func.sum(RejectedDelivery.count), 0)))
    assert counted == 3


def test_a_database_failure_on_the_fast_path_is_a_503_with_the_apps_error_body(
        env: dict[str, str], tmp_path: Any) -> None:
    from app import create_app

    broken = create_app({**env, "DATABASE_URL": f"sqlite:///{tmp_path / 'missing' / 'x.db'}"})
    try:
        url = f"/callbacks/fallback/shared/{callback_key(SECRET, 'shared')}"
        quick = broken.test_client().post(url, json=ev.conference("c-1", "created"))
        slow = route_only(broken).post(url, json=ev.conference("c-1", "created"))
        for response in (quick, slow):
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "5"
            assert response.headers["Content-Type"] == "application/json"
            assert len(response.headers["X-Request-Id"]) == 16
        assert quick.get_json() == slow.get_json()
        assert quick.get_json()["error"]["code"] == "database_unavailable"
    finally:
        db.database(broken).engine.dispose()


def test_an_unexpected_error_while_storing_is_a_logged_500_json(
        app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    conf = create(client)

    def broken_store(*_args: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(callbacks, "store", broken_store)
    response = client.post(path_of(conf["callbackUrl"]),
                           json=ev.conference(conf["conferenceId"], "created"))
    assert response.status_code == 500
    assert response.get_json() == {"error": {"code": "internal_error",
                                             "message": "internal error"}}
    assert "unhandled error" in caplog.text and "boom" in caplog.text


class _Unreadable:
    def read(self, *_args: Any) -> bytes:
        raise OSError("connection reset by peer")


@pytest.mark.parametrize("length", ["\u00b2", "+12", " 12", "12.0", "-1", "1e3", "\u0661\u0662"])
def test_odd_content_lengths_and_unreadable_bodies_are_the_routes_to_answer(
        app: Flask, client: FlaskClient, length: str) -> None:
    conf = create(client)
    url = path_of(conf["callbackUrl"])
    before = fast(app).served
    response = client.post(url, data=b"{}", content_type="application/json",
                           environ_overrides={"CONTENT_LENGTH": length})
    assert response.status_code < 500, (length, response.status_code)
    assert response.is_json and "error" in response.get_json()
    # A body that cannot be read (a client gone mid-request) is a 400, not a 500.
    cut = client.post(url, data=b"{}", content_type="application/json",
                      environ_overrides={"wsgi.input": _Unreadable()})
    assert cut.status_code == 400 and cut.get_json()["error"]["code"]
    short = client.post(url, data=b"{}", content_type="application/json",
                        environ_overrides={"wsgi.input": io.BytesIO(b'{"eventType'),
                                           "CONTENT_LENGTH": "40"})
    assert short.status_code == 400 and short.get_json()["error"]["code"]
    assert fast(app).served == before
