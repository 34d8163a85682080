"""The API's and the admin page's share of a worker: the rest of its threads stay free for
the provider's deliveries.

The provider waits ``callbackTimeout`` for an answer; heavy reads (exports, a client that
does not read its answer) must not take every thread of a worker. At most
``CONFHOOK_READ_CONCURRENCY`` such requests are served at once per worker; one more is answered
``503`` with ``Retry-After`` at once. A streamed answer holds its place until it is sent
(``CONFHOOK_RESPONSE_SEND_TIMEOUT`` bounds a client that does not read). Deliveries never
reach this: they are answered beneath Flask (``app/delivery/entrance.py``).
"""

from __future__ import annotations

import threading

from flask import Flask, Response, g, request

from app.errors import APIError

BOUNDED = ("api", "admin")


def init_app(app: Flask) -> None:
    slots = threading.BoundedSemaphore(app.config["CONFHOOK_READ_CONCURRENCY"])

    @app.before_request
    def _take_a_slot() -> None:
        if request.blueprint not in BOUNDED or request.endpoint == "admin.static":
            return  # static files are small and come with each page at once
        if not slots.acquire(blocking=False):
            raise APIError(503, "busy", "this instance is serving as many API and admin "
                           "requests as it may; retry shortly", headers={"Retry-After": "1"})
        g.capacity_slot = True

    @app.after_request
    def _hold_it_until_sent(response: Response) -> Response:
        # A streamed answer is still being sent after the view returns (and after the first
        # teardown): the place is given back when the server closes the answer.
        if g.pop("capacity_slot", False):
            response.call_on_close(slots.release)
        return response

    @app.teardown_request
    def _give_it_back(_exc: BaseException | None) -> None:
        if g.pop("capacity_slot", False):  # no answer was made: nothing will close
            slots.release()
