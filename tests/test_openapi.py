"""The API against its own OpenAPI document: schemathesis generates requests from it.

Every generated request must get an answer that is not a 5xx and that conforms to the
document: a documented status code, content type, headers and body schema.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.keys import callback_key
from tests import events as ev
from tests.conftest import AUTH, SECRET, create
from tests.events import deliver, life

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


OPERATIONS = [
    ("POST", "/api/v1/conferences"), ("GET", "/api/v1/conferences"),
    ("GET", "/api/v1/conferences/{ident}"), ("GET", "/api/v1/conferences/{ident}/members"),
    ("GET", "/api/v1/conferences/{ident}/events"),
    ("POST", "/api/v1/conferences/{ident}/terminate"),
    ("POST", "/api/v1/conferences/{ident}/refresh"),
    ("POST", "/api/v1/conferences/track"),
    ("GET", "/api/v1/events"), ("GET", "/api/v1/events/export"),
    ("GET", "/api/v1/events/{event_id}"), ("POST", "/api/v1/events/{event_id}/rematch"),
    ("POST", "/api/v1/events/rematch"), ("GET", "/api/v1/stats"),
    ("GET", "/callbacks/{channel}/{subject}/{key}"),
    ("POST", "/callbacks/{channel}/{subject}/{key}"),
]


# More examples by hand: CONFHOOK_FUZZ_EXAMPLES=400 make test
EXAMPLES = int(os.environ.get("CONFHOOK_FUZZ_EXAMPLES", "40"))


@pytest.fixture
def api_schema(app: Flask, client: FlaskClient) -> Any:
    # Some data, so that lists, views and cursors have something to show.
    conference = create(client, tag="fuzz")
    for event in life(conference["conferenceId"], tag="fuzz"):
        deliver(client, conference["callbackUrl"], event)
    shared = f"/callbacks/callback/shared/{callback_key(SECRET, 'shared')}"
    client.post(shared, json=ev.conference("conf-other", "created"))
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_api_conforms_to_its_document(api_schema: Any, method: str, path: str) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    def conforms(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=AUTH, checks=CHECKS)

    conforms()


def test_document_describes_every_endpoint(client: FlaskClient) -> None:
    spec = client.get("/api/v1/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    operations = {(method.upper(), path) for path, item in spec["paths"].items()
                  for method in item if method != "parameters"}
    assert operations == set(OPERATIONS)
    create_op = spec["paths"]["/api/v1/conferences"]["post"]
    assert {"201", "401", "415", "422", "502", "504"} <= set(create_op["responses"])
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
