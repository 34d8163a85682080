"""The provider client: Catapult v1 conferences over one ``requests.Session``, one per app.

Every call has connect and read timeouts. Retries happen only where they cannot create
anything twice: a connection that was never established (any method), and for reads also
5xx answers, and a 429 once the time its ``X-RateLimit-Reset`` (or ``Retry-After``) names has
come, if that is within ``RATE_LIMIT_PATIENCE_S``; past it the 429 is raised, saying when to
try again.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from flask import Flask, current_app
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from app import metrics

EXTENSION = "confhook.catapult"
RATE_LIMIT_PATIENCE_S = 3.0  # how long a read waits for the provider's rate limit to reset


class CatapultError(Exception):
    """Base class of the provider client's errors."""


class CatapultAPIError(CatapultError):
    """The provider answered with a non-2xx status; carries its error body."""

    def __init__(self, status: int, category: str | None, code: str | None,
                 message: str | None, details: Any = None, retry_after: str | None = None,
                 wait_s: float | None = None):
        self.status = status
        self.category = category
        self.code = code
        self.message = message
        self.details = details
        self.retry_after = retry_after  # whole seconds, for a Retry-After header
        self.wait_s = wait_s  # a 429's time until the provider's limit resets
        super().__init__(f"provider answered {status}: {code or category or '-'}: "
                         f"{message or '(no message)'}")


class CatapultTimeout(CatapultError):
    """The provider did not answer in time; a create may or may not have happened."""


class CatapultUnavailable(CatapultError):
    """The provider could not be reached, or answered something that is not its API."""


@dataclass(frozen=True)
class Created:
    """A resource the provider created: its id and the Location it gave."""

    id: str
    location: str


def id_from_location(location: str) -> str:
    """Return the id at the end of a Location header (relative or absolute URL)."""
    path = urlsplit(location).path.rstrip("/")
    ident = path.rsplit("/", 1)[-1]
    if not ident:
        raise CatapultUnavailable(f"provider sent a Location without an id: {location!r}")
    return ident


# The provider's ids (conf-…, member-…): a path segment, never "." or "..", which a URL
# would resolve to another resource (with our credentials).
PROVIDER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def _segment(provider_id: str) -> str:
    if not isinstance(provider_id, str) or not PROVIDER_ID.fullmatch(provider_id):
        raise CatapultUnavailable(f"not a provider id: {str(provider_id)[:40]!r}")
    return provider_id


class CatapultClient:
    """Calls the provider's v1 conference API for one user."""

    def __init__(self, base_url: str, user_id: str, token: str, secret: str, *,
                 connect_timeout: float = 3.05, read_timeout: float = 10.0,
                 retries: int = 2) -> None:
        self.base = f"{base_url.rstrip('/')}/v1/users/{quote(user_id, safe='')}"
        self.timeout = (connect_timeout, read_timeout)
        self.session = requests.Session()
        self.session.auth = (token, secret)
        self.session.headers["Accept"] = "application/json"
        self.session.headers["User-Agent"] = "confhook/1"
        # Connection errors are retried for every method: the request never reached the
        # provider. Read errors and status codes only for idempotent methods.
        retry = Retry(
            total=retries, connect=retries, read=retries, status=retries, other=0,
            allowed_methods=frozenset({"GET", "HEAD"}),
            status_forcelist=(500, 502, 503, 504),  # 429: see _request
            backoff_factor=0.2, respect_retry_after_header=False,
            raise_on_status=False, raise_on_redirect=False,
        )
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.retries = retries

    def close(self) -> None:
        self.session.close()

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None
                 ) -> requests.Response:
        for attempt in range(self.retries + 1):
            try:
                return self._send(method, path, body)
            except CatapultAPIError as exc:
                wait = exc.wait_s
                if (exc.status != 429 or method != "GET" or attempt == self.retries
                        or wait is None or wait > RATE_LIMIT_PATIENCE_S):
                    raise
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _send(self, method: str, path: str, body: dict[str, Any] | None) -> requests.Response:
        operation = metrics.provider_operation(method, path)
        started = time.perf_counter()
        try:
            response = self.session.request(method, f"{self.base}/{path}", json=body,
                                            timeout=self.timeout, allow_redirects=False)
        except requests.Timeout as exc:
            metrics.provider_call(operation, "timeout", time.perf_counter() - started)
            raise CatapultTimeout(f"provider did not answer {method} {path} in time") from exc
        except requests.RequestException as exc:
            metrics.provider_call(operation, "unreachable", time.perf_counter() - started)
            raise CatapultUnavailable(f"provider unreachable for {method} {path}: "
                                      f"{type(exc).__name__}") from exc
        status = response.status_code
        metrics.provider_call(operation, "ok" if status < 300 else f"http_{status // 100}xx",
                              time.perf_counter() - started)
        if status >= 300:
            raise _api_error(response)
        return response

    def _json(self, response: requests.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise CatapultUnavailable("provider answered with a body that is not JSON") from exc

    def create_conference(self, params: dict[str, Any]) -> Created:
        """Create a conference; return its id from the ``Location`` of the 201."""
        response = self._request("POST", "conferences", params)
        location = response.headers.get("Location")
        if response.status_code != 201 or not location:
            raise CatapultUnavailable(
                f"provider answered {response.status_code} without a Location to a create")
        return Created(id=id_from_location(location), location=location)

    def ping(self, timeout: float = 2.0) -> None:
        """Check that the provider answers and accepts our credentials: one try, no retry."""
        try:
            response = requests.get(f"{self.base}/account", auth=self.session.auth,
                                    timeout=(min(timeout, self.timeout[0]), timeout),
                                    headers=dict(self.session.headers), allow_redirects=False)
        except requests.Timeout as exc:
            raise CatapultTimeout("provider did not answer in time") from exc
        except requests.RequestException as exc:
            raise CatapultUnavailable(f"provider unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 300:
            raise _api_error(response)

    def get_conference(self, conference_id: str) -> dict[str, Any]:
        return self._json(self._request("GET", f"conferences/{_segment(conference_id)}"))

    def update_conference(self, conference_id: str, changes: dict[str, Any]) -> None:
        self._request("POST", f"conferences/{_segment(conference_id)}", changes)

    def list_members(self, conference_id: str) -> list[dict[str, Any]]:
        return self._json(self._request(
            "GET", f"conferences/{_segment(conference_id)}/members"))


def _api_error(response: requests.Response) -> CatapultAPIError:
    category = code = message = None
    details: Any = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        category = _short(body.get("category"))
        code = _short(body.get("code"))
        message = _short(body.get("message"), 1000)
        details = body.get("details")
    if message is None and response.text:
        message = _short(response.text, 300)
    wait = rate_limit_wait(response.headers) if response.status_code == 429 else None
    return CatapultAPIError(response.status_code, category, code, message, details,
                            None if wait is None else str(max(1, math.ceil(wait))), wait)


def rate_limit_wait(headers: Any, now: float | None = None) -> float | None:
    """Seconds until a 429's limit resets: ``X-RateLimit-Reset`` (milliseconds since the
    epoch, the provider's header), else ``Retry-After`` (seconds); None if neither says."""
    now = time.time() if now is None else now
    reset = headers.get("X-RateLimit-Reset")
    try:
        if reset is not None:
            return max(0.0, int(str(reset).strip()) / 1000 - now)
        after = headers.get("Retry-After")
        if after is not None:
            return max(0.0, float(str(after).strip()))
    except ValueError:
        return None
    return None


def _short(value: Any, limit: int = 128) -> str | None:
    if value is None:
        return None
    return str(value)[:limit]


def init_app(app: Flask) -> None:
    """Give ``app`` its provider client, built from its settings (no I/O)."""
    config = app.config
    app.extensions[EXTENSION] = CatapultClient(
        config["CATAPULT_API_URL"], config["CATAPULT_USER_ID"],
        config["CATAPULT_API_TOKEN"], config["CATAPULT_API_SECRET"],
        connect_timeout=config["CATAPULT_CONNECT_TIMEOUT_S"],
        read_timeout=config["CATAPULT_READ_TIMEOUT_S"], retries=config["CATAPULT_RETRIES"],
    )


def client(app: Flask | None = None) -> CatapultClient:
    """The app's provider client."""
    return (app or current_app).extensions[EXTENSION]  # type: ignore[no-any-return]
