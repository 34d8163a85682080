"""Hostile input at the API and the admin page: a precise 4xx, never a 500, and no door left
ajar (the README's Security section lists what each test here holds)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash

from tests import events as ev
from tests.conftest import AUTH, create, path_of
from tests.fakeprovider import FakeProvider
from tests.test_admin import PASSWORD, csrf_token


def _forged(query: str, ident: Any) -> str:
    raw = json.dumps([query, "2024-05-01T10:00:00", ident]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("ident", [10**300, 2**63, 1e300, -1, True, "x" * 200, None])
def test_a_forged_cursor_is_a_400_whatever_it_holds(client: FlaskClient, ident: Any) -> None:
    for path in ("/api/v1/events", "/api/v1/conferences"):
        first = client.get(path + "?limit=1", headers=AUTH)
        assert first.status_code == 200
        # The fingerprint of the query is not secret: a forger can put the right one in.
        from app.filters import page_key

        key = page_key({"order": "asc"} if "events" in path else {"sort": "-createdAt"})
        response = client.get(f"{path}?cursor={_forged(key, ident)}", headers=AUTH)
        assert response.status_code == 400, (path, ident, response.get_data()[:200])
        assert response.get_json()["error"]["details"] == {
            "cursor": "not a cursor this endpoint gave"}


def test_a_stats_window_before_year_one_is_a_400(client: FlaskClient) -> None:
    response = client.get("/api/v1/stats?until=0001-01-01T00:30:00Z", headers=AUTH)
    assert response.status_code == 400
    assert "until" in response.get_json()["error"]["details"]


@pytest.mark.parametrize(("path", "body"), [
    ("/api/v1/conferences", '{"from": "+19195551212", "tag": "x\\ud800"}'),
    ("/api/v1/conferences/track", '{"conferenceId": "conf-\\udfff"}'),
    ("/api/v1/events/rematch", '{"conference": "\\ud800"}'),
])
def test_a_lone_surrogate_in_api_json_is_a_422(client: FlaskClient, provider: FakeProvider,
                                              path: str, body: str) -> None:
    response = client.post(path, data=body, content_type="application/json", headers=AUTH)
    assert response.status_code == 422, response.get_data()[:300]
    assert response.get_json()["error"]["code"] == "invalid_request"
    assert provider.requests == []


@pytest.mark.parametrize("conference_id", ["..", ".", "a/b", "%2e%2e", "conf-1?x=1"])
def test_a_provider_id_that_is_no_path_segment_never_reaches_the_provider(
        client: FlaskClient, provider: FakeProvider, conference_id: str) -> None:
    response = client.post("/api/v1/conferences/track", json={"conferenceId": conference_id},
                           headers=AUTH)
    assert response.status_code == 422
    assert provider.requests == []


def test_api_answers_are_not_sniffed_nor_stored_by_caches(client: FlaskClient) -> None:
    for response in (client.get("/api/v1/conferences", headers=AUTH),
                     client.get("/api/v1/conferences"),  # 401
                     client.get("/api/v1/events/999", headers=AUTH)):  # 404
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-store"


def test_csv_cells_that_would_run_as_formulas_are_defused(client: FlaskClient) -> None:
    conference = create(client, tag="csv")
    for n, lead in enumerate(("=", "+", "-", "@", "\t", "\r")):
        event = ev.member(conference["conferenceId"], f"{lead}m-{n}", "active",
                          f"2024-05-01T10:00:0{n}Z", active=1)
        assert client.post(path_of(conference["callbackUrl"]), json=event).status_code == 204
    text = client.get("/api/v1/events/export?format=csv&eventType=conference-member",
                      headers=AUTH).get_data(as_text=True)
    for n, lead in enumerate(("=", "+", "-", "@", "\t", "\r")):
        assert f"'{lead}m-{n}" in text, lead


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "CONFHOOK_ADMIN_PASSWORD_HASH": generate_password_hash(PASSWORD)}


@pytest.mark.parametrize("target", ["/admin/%0D%0ASet-Cookie:%20x=1", "/admin/\\evil",
                                    "//evil.example/admin", "https://evil.example/admin",
                                    "/admin/conferences%09x"])
def test_sign_in_never_redirects_off_the_page_nor_breaks_a_header(
        client: FlaskClient, target: str) -> None:
    url = f"/admin/sign-in?next={target}"
    response = client.post(url, data={"password": PASSWORD,
                                      "csrf_token": csrf_token(client, url)})
    assert response.status_code == 302
    assert response.headers["Location"] in ("/admin/", "http://localhost/admin/")


# -- sign-in and sessions ----------------------------------------------------------------------

def _attempt(client: FlaskClient, password: str, **environ: str) -> int:
    return client.post("/admin/sign-in", environ_base=environ,
                       data={"password": password, "csrf_token": csrf_token(client)}
                       ).status_code


def test_behind_a_trusted_proxy_a_stranger_cannot_lock_the_operator_out(
        client: FlaskClient) -> None:
    """Behind the README's nginx every peer is 127.0.0.1: the limit must be per client."""
    stranger = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.9"}
    assert [_attempt(client, "nope", **stranger) for _ in range(6)] == [401] * 5 + [429]
    operator = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "198.51.100.7"}
    assert _attempt(client, PASSWORD, **operator) == 302


def test_an_untrusted_peer_cannot_choose_its_address(client: FlaskClient) -> None:
    for n in range(6):  # a new forged address each time: all counted against the peer
        status = _attempt(client, "nope", REMOTE_ADDR="203.0.113.9",
                          HTTP_X_FORWARDED_FOR=f"198.51.100.{n}")
    assert status == 429


def test_concurrent_attempts_are_counted_before_any_password_is_checked(
        app: Any, client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from app import admin

    checked = []
    real = admin.password_matches
    monkeypatch.setattr(admin, "password_matches",
                        lambda password: checked.append(1) or real(password))
    token = csrf_token(client)

    def attempt(_: int) -> int:
        other = app.test_client()
        other.set_cookie("confhook_session", client.get_cookie("confhook_session").value)
        return other.post("/admin/sign-in", data={"password": "nope", "csrf_token": token}
                          ).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(attempt, range(60)))
    assert len(checked) == 5 and statuses.count(401) == 5 and statuses.count(429) == 55


def test_many_failures_from_everywhere_slow_sign_in_down_but_lock_nobody_out(
        client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from app import admin

    waits: list[float] = []
    monkeypatch.setattr(admin.time, "sleep", waits.append)
    for n in range(25):
        _attempt(client, "nope", REMOTE_ADDR=f"203.0.113.{n}")
    assert waits and max(waits) <= admin.SLOWDOWN_MAX_S
    assert _attempt(client, PASSWORD, REMOTE_ADDR="198.51.100.7") == 302


def _signed_in_cookie(client: FlaskClient) -> str:
    assert _attempt(client, PASSWORD) == 302
    cookie = client.get_cookie("confhook_session")
    assert cookie is not None
    return cookie.value


def test_signing_out_ends_the_session_even_for_a_saved_cookie(app: Any,
                                                                client: FlaskClient) -> None:
    saved = _signed_in_cookie(client)
    assert client.get("/admin/").status_code == 200
    client.post("/admin/sign-out", data={"csrf_token": csrf_token(client, "/admin/")})
    thief = app.test_client()
    thief.set_cookie("confhook_session", saved)
    response = thief.get("/admin/")
    assert response.status_code == 302 and "/admin/sign-in" in response.headers["Location"]


@pytest.mark.parametrize(("column", "age"), [("created_at", {"hours": 13}),
                                             ("last_seen_at", {"minutes": 31})])
def test_a_session_ends_after_its_lifetime_and_when_idle(app: Any, client: FlaskClient,
                                                        column: str, age: dict) -> None:
    from datetime import timedelta

    from sqlalchemy import text

    from app import db
    from app.models import utcnow

    _signed_in_cookie(client)
    assert client.get("/admin/").status_code == 200
    with app.app_context():
        writer = db.database().writer()
        writer.execute(text(f"UPDATE admin_session SET {column} = :t"),
                       {"t": utcnow() - timedelta(**age)})
        writer.commit()
    assert client.get("/admin/").status_code == 302


def test_the_pages_own_refreshes_do_not_keep_a_session_alive(app: Any,
                                                              client: FlaskClient) -> None:
    from datetime import timedelta

    from sqlalchemy import text

    from app import db
    from app.models import utcnow

    _signed_in_cookie(client)
    earlier = utcnow() - timedelta(minutes=10)
    with app.app_context():
        writer = db.database().writer()
        writer.execute(text("UPDATE admin_session SET last_seen_at = :t"), {"t": earlier})
        writer.commit()
    assert client.get("/admin/fragments/dashboard").status_code == 200
    with app.app_context():
        seen = db.read_session().execute(text("SELECT last_seen_at FROM admin_session")
                                         ).scalar()
    assert str(seen).startswith(str(earlier)[:16])
    assert client.get("/admin/").status_code == 200  # a page does
    with app.app_context():
        seen = db.read_session().execute(text("SELECT last_seen_at FROM admin_session")
                                         ).scalar()
    assert not str(seen).startswith(str(earlier)[:16])
