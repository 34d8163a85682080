"""The admin page through the Flask test client: guard, sign-in, CSRF, escaping, pages."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash

from app import create_app
from app.keys import callback_key
from tests import events as ev
from tests.conftest import SECRET, create
from tests.events import T0, deliver, life

PASSWORD = "correct horse battery staple"
SHARED = f"/callbacks/callback/shared/{callback_key(SECRET, 'shared')}"
PAGES = ["/admin/", "/admin/conferences", "/admin/events", "/admin/problems",
         "/admin/conferences/new", "/admin/fragments/dashboard", "/admin/events/1",
         "/admin/conferences/cf0", "/admin/fragments/conferences/cf0"]
FORMS = ["/admin/conferences/new", "/admin/conferences/cf0/terminate",
         "/admin/events/1/rematch", "/admin/problems/rematch", "/admin/conferences/track"]


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "CONFHOOK_ADMIN_PASSWORD_HASH": generate_password_hash(PASSWORD)}


def csrf_token(client: FlaskClient, url: str = "/admin/sign-in") -> str:
    page = client.get(url).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def sign_in(client: FlaskClient) -> None:
    response = client.post("/admin/sign-in", data={"password": PASSWORD,
                                                   "csrf_token": csrf_token(client)})
    assert response.status_code == 302, response.get_data(as_text=True)


@pytest.fixture
def admin(client: FlaskClient) -> FlaskClient:
    sign_in(client)
    return client


@pytest.mark.parametrize("url", PAGES)
def test_every_admin_page_needs_a_session(client: FlaskClient, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/sign-in?next=")
    as_program = client.get(url, headers={"Accept": "application/json"})
    assert as_program.status_code == 401
    assert as_program.get_json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("url", FORMS)
def test_forms_need_a_session_too(client: FlaskClient, url: str) -> None:
    # Without a session the CSRF check refuses first; either way nothing happens.
    assert client.post(url, data={}).status_code in (302, 400)


@pytest.mark.parametrize("url", [*FORMS, "/admin/sign-out"])
def test_forms_without_a_csrf_token_are_refused(admin: FlaskClient, url: str) -> None:
    response = admin.post(url, data={"from": "+19195551212"})
    assert response.status_code == 400
    assert "Form expired" in response.get_data(as_text=True)
    assert admin.get("/admin/").status_code == 200  # still signed in


def test_sign_in_and_out(client: FlaskClient) -> None:
    token = csrf_token(client)
    response = client.post("/admin/sign-in?next=/admin/problems",
                           data={"password": PASSWORD, "csrf_token": token})
    assert response.headers["Location"] == "/admin/problems"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    assert client.get("/admin/").status_code == 200
    out = client.post("/admin/sign-out", data={"csrf_token": csrf_token(client, "/admin/")})
    assert out.status_code == 302
    assert client.get("/admin/").status_code == 302


def test_the_session_cookie_is_read_and_refreshed_on_admin_pages_only(
        admin: FlaskClient) -> None:
    # A permanent session is refreshed (Set-Cookie) by every request that opens it.
    assert "confhook_session=" in admin.get("/admin/").headers.get("Set-Cookie", "")
    delivery = admin.post(f"/callbacks/callback/shared/{callback_key(SECRET, 'shared')}",
                          json=ev.conference("c-cookie", "created"))
    assert delivery.status_code == 204
    for response in (delivery, admin.get("/healthz"), admin.get("/api/v1/openapi.json")):
        assert response.status_code in (200, 204)
        assert "Set-Cookie" not in response.headers
    # Outside the admin the cookie grants nothing: the API wants its bearer token.
    assert admin.get("/api/v1/conferences").status_code == 401
    assert admin.get("/admin/conferences").status_code == 200


def test_next_cannot_leave_the_admin(client: FlaskClient) -> None:
    response = client.post("/admin/sign-in?next=//evil.example.com/",
                           data={"password": PASSWORD, "csrf_token": csrf_token(client)})
    assert response.headers["Location"] == "/admin/"


def test_cookie_is_secure_behind_tls(env: dict[str, str]) -> None:
    app = create_app({**env, "CONFHOOK_PUBLIC_URL": "https://hooks.example.com"})
    assert app.config["SESSION_COOKIE_SECURE"] is True


def test_failed_sign_ins_are_limited_and_logged(client: FlaskClient,
                                                caplog: pytest.LogCaptureFixture) -> None:
    token = csrf_token(client)
    statuses = [client.post("/admin/sign-in", data={"password": "nope", "csrf_token": token}
                            ).status_code for _ in range(6)]
    assert statuses == [401] * 5 + [429]
    # Even the right password waits now: the limit is per address, not per guess.
    right = client.post("/admin/sign-in", data={"password": PASSWORD, "csrf_token": token})
    assert right.status_code == 429
    assert "sign-in failed from 127.0.0.1" in caplog.text
    assert "nope" not in caplog.text


def test_without_a_password_the_admin_stays_closed(env: dict[str, str]) -> None:
    app = create_app({k: v for k, v in env.items() if k != "CONFHOOK_ADMIN_PASSWORD_HASH"})
    response = app.test_client().get("/admin/sign-in")
    assert response.status_code == 503
    assert "CONFHOOK_ADMIN_PASSWORD_HASH" in response.get_data(as_text=True)


def test_a_plain_password_is_refused_as_a_hash(env: dict[str, str]) -> None:
    from config.settings import ConfigError

    with pytest.raises(ConfigError, match="CONFHOOK_ADMIN_PASSWORD_HASH"):
        create_app({**env, "CONFHOOK_ADMIN_PASSWORD_HASH": "hunter2"})


def test_pages_send_a_strict_content_security_policy(admin: FlaskClient) -> None:
    response = admin.get("/admin/")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert "<script>" not in response.get_data(as_text=True)  # no inline script at all
    assert ' style="' not in response.get_data(as_text=True)


def test_payload_script_renders_inert(admin: FlaskClient) -> None:
    hostile = "<script>alert(1)</script>"
    admin.post(SHARED, json={"eventType": hostile, "conferenceId": hostile, "status": hostile,
                             "tag": "<img src=x onerror=alert(1)>"})
    conference = create(admin, tag="<b>bold</b>")
    deliver(admin, conference["callbackUrl"],
            ev.member(conference["conferenceId"], hostile, "active", T0, active=1,
                      tag="<b>bold</b>"))
    for url in ("/admin/events", "/admin/events/1", "/admin/problems",
                f"/admin/conferences/{conference['id']}", "/admin/conferences"):
        page = admin.get(url).get_data(as_text=True)
        assert "<script>alert" not in page and "<img src=x" not in page and "<b>bold" not in page
    assert "&lt;script&gt;" in admin.get("/admin/events/1").get_data(as_text=True)


def test_dashboard_shows_health_and_traffic(admin: FlaskClient) -> None:
    conference = create(admin, tag="dash")
    for event in life(conference["conferenceId"], tag="dash"):
        deliver(admin, conference["callbackUrl"], event)
    deliver(admin, conference["fallbackUrl"], life(conference["conferenceId"], tag="dash")[0])
    admin.post("/callbacks/callback/shared/wrong-key", json={})
    page = admin.get("/admin/").get_data(as_text=True)
    assert 'class="chart"' in page
    assert "Events received</th><td>12" in page
    assert "Duplicate deliveries collapsed</th><td>1" in page
    assert "bad_key: 1" in page
    assert "Database" in page and "reachable" in page


def test_conference_page_draws_the_timeline(admin: FlaskClient) -> None:
    conference = create(admin, tag="tl")
    for event in life(conference["conferenceId"], tag="tl"):
        deliver(admin, conference["callbackUrl"], event)
    page = admin.get(f"/admin/conferences/{conference['id']}").get_data(as_text=True)
    assert page.count('class="lane"') == 2
    assert 'data-member="m-1"' in page and 'data-member="m-2"' in page
    assert page.count('class="mark-mute"') == 1 and page.count('class="mark-hold"') == 1
    assert page.count('class="mark-playback"') == 2 and page.count('class="mark-speak"') == 2
    assert "mark-created" in page and "mark-completed" in page


def test_create_conference_form(admin: FlaskClient) -> None:
    token = csrf_token(admin, "/admin/conferences/new")
    bad = admin.post("/admin/conferences/new", data={"from": "12", "callbackTimeout": "5",
                                                    "csrf_token": token})
    assert bad.status_code == 422
    text = bad.get_data(as_text=True)
    assert "E.164" in text and "callbackTimeout" in text
    good = admin.post("/admin/conferences/new", data={"from": "+19195551212", "tag": "ui",
                                                     "csrf_token": token})
    assert good.status_code == 302
    page = admin.get(good.headers["Location"]).get_data(as_text=True)
    assert "created on the provider as conf-1" in page


def test_rematch_from_the_problems_page(admin: FlaskClient) -> None:
    admin.post(SHARED, json=ev.member("conf-1", "m-1", "active", T0, active=1))
    create(admin)  # now conf-1 is known
    page = admin.get("/admin/problems").get_data(as_text=True)
    assert "unknown_conference" in page
    token = csrf_token(admin, "/admin/problems")
    response = admin.post("/admin/events/1/rematch",
                          data={"csrf_token": token, "next": "/admin/problems"})
    assert response.headers["Location"] == "/admin/problems"
    page = admin.get("/admin/problems").get_data(as_text=True)
    assert "unmatched → matched" in page
    assert "No unmatched, conflicting or invalid events." in page


def test_event_filters_reuse_the_api_rules(admin: FlaskClient) -> None:
    page = admin.get("/admin/events?since=yesterday&match=maybe").get_data(as_text=True)
    assert "since" in page and "match" in page and "not valid" in page


def test_unknown_admin_page_is_an_html_404(admin: FlaskClient) -> None:
    response = admin.get("/admin/conferences/cf-none")
    assert response.status_code == 404 and response.mimetype == "text/html"


def test_nul_characters_are_an_html_400(admin: FlaskClient) -> None:
    for url in ("/admin/conferences/c%00f", "/admin/events?tag=%00", "/admin/conferences?q=%00"):
        response = admin.get(url)
        assert response.status_code == 400 and response.mimetype == "text/html", url


def test_rematch_never_redirects_off_the_admin(admin: FlaskClient) -> None:
    admin.post(SHARED, json=ev.member("conf-9", "m-1", "active", T0, active=1))
    token = csrf_token(admin, "/admin/problems")
    for target in ("https://evil.example/", "//evil.example/admin/", "/api/v1/events"):
        response = admin.post("/admin/events/1/rematch",
                              data={"csrf_token": token, "next": target})
        assert response.headers["Location"] == "/admin/events/1", target


def test_track_form_names_a_bad_id(admin: FlaskClient) -> None:
    token = csrf_token(admin, "/admin/conferences/new")
    response = admin.post("/admin/conferences/track",
                          data={"csrf_token": token, "conferenceId": "  "})
    assert response.status_code == 422
    assert "give the provider&#39;s conference id" in response.get_data(as_text=True)


def test_secret_and_password_rotate_without_signing_anyone_out(env: dict[str, str]) -> None:
    before = create_app(env).test_client()
    sign_in(before)
    cookie = before.get_cookie("confhook_session")
    assert cookie is not None
    new_secret = "rotated-secret-key-0123456789-abcdefghijkl"
    rotated = {**env, "CONFHOOK_SECRET_KEY": new_secret, "CONFHOOK_OLD_SECRET_KEYS": SECRET,
               "CONFHOOK_ADMIN_PASSWORD_HASH":
                   f"{generate_password_hash('the new password, long')},"
                   f"{env['CONFHOOK_ADMIN_PASSWORD_HASH']}"}
    after = create_app(rotated).test_client()
    after.set_cookie("confhook_session", cookie.value)
    assert after.get("/admin/").status_code == 200  # the old secret still verifies it
    for password in ("the new password, long", PASSWORD):  # both, while both are listed
        fresh = create_app(rotated).test_client()
        response = fresh.post("/admin/sign-in", data={"password": password,
                                                      "csrf_token": csrf_token(fresh)})
        assert response.status_code == 302
    done = create_app({**rotated, "CONFHOOK_OLD_SECRET_KEYS": ""}).test_client()
    done.set_cookie("confhook_session", cookie.value)
    assert done.get("/admin/").status_code == 302  # once the old secret is dropped
