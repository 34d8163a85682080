"""A scriptable stand-in for the provider's create-conference endpoint, over real HTTP.

Tests queue the answers it gives and read the requests it received. It can also call the
conference's callback URL *before* answering, as the real provider may.
"""

from __future__ import annotations

import base64
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from flask import Flask, Response, jsonify, request


@dataclass
class Answer:
    status: int = 201
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    # Events to POST to the request's callbackUrl before answering.
    callbacks_first: list[dict[str, Any]] = field(default_factory=list)


class FakeProvider:
    def __init__(self, user_id: str = "u-test", token: str = "tok", secret: str = "sec"):
        self.user_id = user_id
        self.credentials = (token, secret)
        self.answers: list[Answer] = []
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.app = self._build()

    def queue(self, *answers: Answer) -> None:
        with self.lock:
            self.answers.extend(answers)

    def _next(self) -> Answer | None:
        with self.lock:
            return self.answers.pop(0) if self.answers else None

    def _build(self) -> Flask:
        app = Flask("fakeprovider")

        @app.route("/v1/users/<user_id>/conferences", methods=["POST"])
        def create(user_id: str) -> Response:
            body = request.get_json(silent=True)
            self.requests.append({"path": request.path, "json": body,
                                  "auth": request.headers.get("Authorization"),
                                  "content_type": request.mimetype})
            expected = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
            if request.headers.get("Authorization") != expected or user_id != self.user_id:
                return _error(401, "unauthorized", "bad-credentials", "bad credentials")
            answer = self._next() or Answer()
            conference_id = f"conf-{next(self.ids)}"
            for event in answer.callbacks_first:
                payload = {"conferenceId": conference_id, **event}
                if body and body.get("tag") is not None:
                    payload.setdefault("tag", body["tag"])
                requests.post(body["callbackUrl"], json=payload, timeout=5)
            if answer.delay_s:
                time.sleep(answer.delay_s)
            if answer.status == 201:
                location = answer.headers.get(
                    "Location", f"/v1/users/{user_id}/conferences/{conference_id}")
                return Response(status=201, headers={"Location": location})
            response = jsonify(answer.body) if answer.body is not None else Response()
            response.status_code = answer.status
            for name, value in answer.headers.items():
                response.headers[name] = value
            return response

        return app


def _error(status: int, category: str, code: str, message: str) -> Response:
    response = jsonify(category=category, code=code, message=message)
    response.status_code = status
    return response
