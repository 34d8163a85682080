"""POST /api/v1/conferences: validation, the provider round trip, and its failures."""

from __future__ import annotations

import base64

import pytest
from flask.testing import FlaskClient

from tests.conftest import AUTH, create
from tests.fakeprovider import Answer, FakeProvider


def post(client: FlaskClient, body: object, **kw: object) -> tuple[int, dict]:
    response = client.post("/api/v1/conferences", json=body, headers=AUTH, **kw)
    return response.status_code, response.get_json()


def test_create_sends_our_callback_settings_and_stores_the_provider_id(
        client: FlaskClient, provider: FakeProvider, env: dict[str, str]) -> None:
    response = client.post("/api/v1/conferences", headers=AUTH,
                           json={"from": "+19195551212", "tag": "standup"})
    assert response.status_code == 201
    body = response.get_json()
    assert response.headers["Location"] == f"/api/v1/conferences/{body['id']}"
    assert body["conferenceId"] == "conf-1"
    assert body["state"] == "created"
    assert body["tag"] == "standup"
    assert body["from"] == "+19195551212"
    assert body["callbackHttpMethod"] == "POST"
    assert body["callbackTimeout"] == 2000
    assert body["createdAt"].endswith("Z")

    sent = provider.requests[0]
    assert sent["path"] == f"/v1/users/{provider.user_id}/conferences"
    assert sent["auth"] == "Basic " + base64.b64encode(b"tok:sec").decode()
    assert sent["content_type"] == "application/json"
    assert sent["json"] == {
        "from": "+19195551212", "tag": "standup",
        "callbackUrl": body["callbackUrl"], "fallbackUrl": body["fallbackUrl"],
        "callbackHttpMethod": "POST", "callbackTimeout": 2000,
    }
    public = env["CONFHOOK_PUBLIC_URL"]
    assert body["callbackUrl"].startswith(f"{public}/callbacks/callback/{body['id']}/")
    assert body["fallbackUrl"] == body["callbackUrl"].replace("/callback/", "/fallback/", 1)

    again = client.get(f"/api/v1/conferences/{body['id']}", headers=AUTH).get_json()
    by_provider_id = client.get("/api/v1/conferences/conf-1", headers=AUTH).get_json()
    assert again["id"] == by_provider_id["id"] == body["id"]
    assert again["members"] == []


def test_each_conference_gets_its_own_callback_urls(client: FlaskClient) -> None:
    first, second = create(client), create(client)
    assert first["callbackUrl"] != second["callbackUrl"]
    assert first["callbackUrl"].rsplit("/", 1)[1] != second["callbackUrl"].rsplit("/", 1)[1]


def test_caller_may_override_method_and_timeout(client: FlaskClient,
                                                provider: FakeProvider) -> None:
    body = create(client, callbackHttpMethod="get", callbackTimeout="3500")
    assert body["callbackHttpMethod"] == "GET"
    assert body["callbackTimeout"] == 3500
    assert provider.requests[0]["json"]["callbackHttpMethod"] == "GET"
    assert provider.requests[0]["json"]["callbackTimeout"] == 3500
    assert "tag" not in provider.requests[0]["json"]


@pytest.mark.parametrize(("body", "field"), [
    ({}, "from"),
    ({"from": "9195551212"}, "from"),
    ({"from": "+0195551212"}, "from"),
    ({"from": 19195551212}, "from"),
    ({"from": "+19195551212", "callbackHttpMethod": "PUT"}, "callbackHttpMethod"),
    ({"from": "+19195551212", "callbackTimeout": 99}, "callbackTimeout"),
    ({"from": "+19195551212", "callbackTimeout": 10001}, "callbackTimeout"),
    ({"from": "+19195551212", "callbackTimeout": True}, "callbackTimeout"),
    ({"from": "+19195551212", "callbackTimeout": "2s"}, "callbackTimeout"),
    ({"from": "+19195551212", "tag": "x" * 257}, "tag"),
    ({"from": "+19195551212", "tag": 5}, "tag"),
    ({"from": "+19195551212", "tag": "a\x00b"}, "tag"),
    ({"from": "+19195551212", "callbackUrl": "http://evil"}, "callbackUrl"),
])
def test_invalid_input_is_422_naming_the_field(client: FlaskClient, provider: FakeProvider,
                                               body: dict, field: str) -> None:
    status, error = post(client, body)
    assert status == 422
    assert error["error"]["code"] == "invalid_request"
    assert field in error["error"]["details"]
    assert provider.requests == []


def test_body_must_be_a_json_object(client: FlaskClient) -> None:
    status, error = post(client, ["+19195551212"])
    assert status == 422
    assert error["error"]["code"] == "invalid_request"


def test_malformed_json_is_400(client: FlaskClient) -> None:
    response = client.post("/api/v1/conferences", data=b'{"from": ', headers=AUTH,
                           content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"


def test_wrong_content_type_is_415(client: FlaskClient) -> None:
    response = client.post("/api/v1/conferences", data="from=+19195551212", headers=AUTH,
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert response.get_json()["error"]["code"] == "unsupported_media_type"


def test_oversized_body_is_413(client: FlaskClient) -> None:
    response = client.post("/api/v1/conferences", headers=AUTH,
                           json={"from": "+19195551212", "tag": "x" * 70_000})
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "request_entity_too_large"


@pytest.mark.parametrize("header", [None, "Bearer wrong-token-0123456789", "Basic abc",
                                    "Bearer "])
def test_api_requires_a_valid_bearer_token(client: FlaskClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = client.post("/api/v1/conferences", json={"from": "+19195551212"},
                           headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert client.get("/api/v1/conferences/x", headers=headers).status_code == 401


def test_any_configured_token_is_accepted(client: FlaskClient) -> None:
    response = client.get("/api/v1/conferences/none",
                          headers={"Authorization": "Bearer another-token-abcdefgh"})
    assert response.status_code == 404


def _failed_row(client: FlaskClient, error: dict) -> dict:
    ident = error["error"]["details"]["conference"]
    return client.get(f"/api/v1/conferences/{ident}", headers=AUTH).get_json()


def test_provider_4xx_is_mapped_and_the_row_kept_failed(client: FlaskClient,
                                                        provider: FakeProvider) -> None:
    provider.queue(Answer(status=400, body={"category": "bad-request",
                                            "code": "number-not-owned",
                                            "message": "The from number is not yours"}))
    status, error = post(client, {"from": "+19195551212"})
    assert status == 422
    assert error["error"]["code"] == "provider_rejected"
    details = error["error"]["details"]
    assert details["providerStatus"] == 400
    assert details["providerCode"] == "number-not-owned"
    assert details["providerMessage"] == "The from number is not yours"
    row = _failed_row(client, error)
    assert row["state"] == "failed"
    assert row["error"] == {"status": 400, "code": "number-not-owned",
                            "message": "The from number is not yours"}


def test_provider_rate_limit_passes_retry_after(client: FlaskClient,
                                                provider: FakeProvider) -> None:
    provider.queue(Answer(status=429, body={"category": "too-many-requests",
                                            "code": "rate-limit", "message": "slow down"},
                          headers={"Retry-After": "7"}))
    response = client.post("/api/v1/conferences", json={"from": "+19195551212"}, headers=AUTH)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert len(provider.requests) == 1


@pytest.mark.parametrize(("answer", "status", "code"), [
    (Answer(status=500, body={"message": "boom"}), 502, "provider_error"),
    (Answer(status=401, body={"code": "unauthorized", "message": "no"}), 502,
     "provider_auth_failed"),
    (Answer(delay_s=3.6), 504, "provider_timeout"),
])
def test_provider_failures_are_5xx_and_not_retried(client: FlaskClient, provider: FakeProvider,
                                                   answer: Answer, status: int,
                                                   code: str) -> None:
    provider.queue(answer)
    got, error = post(client, {"from": "+19195551212"})
    assert (got, error["error"]["code"]) == (status, code)
    assert len(provider.requests) == 1
    assert _failed_row(client, error)["state"] == "failed"


def test_unreachable_provider_is_502(client: FlaskClient, provider: FakeProvider,
                                     app: object) -> None:
    from app.catapult import client as client_of

    client_of(app).base = "http://127.0.0.1:9/v1/users/u"  # type: ignore[arg-type]
    status, error = post(client, {"from": "+19195551212"})
    assert (status, error["error"]["code"]) == (502, "provider_unavailable")
    assert _failed_row(client, error)["error"]["code"] == "provider_unavailable"


def test_unknown_route_and_method_answer_json(client: FlaskClient) -> None:
    response = client.get("/api/v1/nothing", headers=AUTH)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"
    response = client.delete("/api/v1/conferences", headers=AUTH)
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"


def test_a_rate_limited_create_says_when_to_try_again_from_the_providers_reset(
        client: FlaskClient, provider: FakeProvider) -> None:
    import time

    reset = str(int((time.time() + 30) * 1000))
    provider.queue(Answer(status=429, body={"category": "too-many-requests"},
                          headers={"X-RateLimit-Reset": reset}))
    response = client.post("/api/v1/conferences", json={"from": "+19195551212"},
                           headers=AUTH)
    assert response.status_code == 429
    assert response.get_json()["error"]["code"] == "provider_rate_limited"
    assert 29 <= int(response.headers["Retry-After"]) <= 31
    assert len(provider.requests) == 1


def test_a_provider_id_another_conference_has_is_a_named_409_and_the_row_settles(
        client: FlaskClient, provider: FakeProvider) -> None:
    first = client.post("/api/v1/conferences", json={"from": "+19195551212"},
                        headers=AUTH).get_json()
    provider.queue(Answer(headers={
        "Location": f"/v1/users/{provider.user_id}/conferences/{first['conferenceId']}"}))
    status, error = post(client, {"from": "+19195551212"})
    assert (status, error["error"]["code"]) == (409, "conference_id_taken")
    assert error["error"]["details"]["takenBy"] == first["id"]
    row = _failed_row(client, error)
    assert row["state"] == "failed" and row["conferenceId"] is None
    assert row["error"]["code"] == "conference_id_taken"
    again = client.get(f"/api/v1/conferences/{first['id']}", headers=AUTH).get_json()
    assert again["conferenceId"] == first["conferenceId"] and again["state"] == "created"
