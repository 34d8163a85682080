"""Slow and odd clients against gunicorn as shipped (config/gunicorn.conf.py, server/).

Slow clients must not take the threads that answer the provider's deliveries: a request reaches
a thread only once it has all arrived, and a client gets CONFHOOK_REQUEST_READ_TIMEOUT seconds to
send it. The service runs with 2 workers of 2 threads here, so a few slow connections would
block every thread of a plain gthread worker.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from scripts.local import Stack, running
from server.framing import COMPLETE, INCOMPLETE, request_state
from server.worker import read_timeout_from_env, send_timeout_from_env
from tests.servers import free_port

pytestmark = pytest.mark.system  # real servers: `pytest -m 'not system'` skips them

READ_TIMEOUT = 3
SEND_TIMEOUT = 1

# -- request_state: when a buffered request is whole ---------------------------------------


def state(data: bytes, max_head: int = 1000, max_body: int = 100) -> tuple[Any, int, bool]:
    return request_state(data, max_head, max_body)


def test_head_without_body_is_complete_at_the_empty_line() -> None:
    data = b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\nGET /next"
    assert state(data) == (COMPLETE, data.index(b"GET /next"), False)
    assert state(b"GET /a HTTP/1.1\r\nHost: x\r\n")[0] == INCOMPLETE
    blank_lines_first = b"\r\n\r\nGET /a HTTP/1.1\r\n\r\n"
    assert state(blank_lines_first) == (COMPLETE, len(blank_lines_first), False)


def test_content_length_body() -> None:
    head = b"POST /a HTTP/1.1\r\nHost: x\r\ncontent-LENGTH: 5\r\n\r\n"
    assert state(head + b"abcd")[0] == INCOMPLETE
    assert state(head + b"abcde") == (COMPLETE, len(head) + 5, False)
    assert state(head + b"abcdePOST") == (COMPLETE, len(head) + 5, False)


def test_chunked_body() -> None:
    head = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert state(head + b"3\r\nabc\r\n")[0] == INCOMPLETE
    assert state(head + b"3\r\nabc\r\n0\r\n")[0] == INCOMPLETE
    whole = head + b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert state(whole + b"GET") == (COMPLETE, len(whole), False)
    with_trailer = head + b"1\r\na\r\n0\r\nX-T: 1\r\n\r\n"
    assert state(with_trailer) == (COMPLETE, len(with_trailer), False)
    assert state(head + b"0\r\nX-T: 1\r\n")[0] == INCOMPLETE


def test_malformed_framing_is_left_to_gunicorn() -> None:
    # Complete as far as buffering goes: gunicorn's parser answers 400.
    assert state(b"POST /a HTTP/1.1\r\nContent-Length: x1\r\n\r\n")[0] == COMPLETE
    assert state(b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")[0] == COMPLETE


def test_limits() -> None:
    assert state(b"GET /" + b"a" * 2000)[0][:2] == (431, "request_header_fields_too_large")
    assert state(b"POST /a HTTP/1.1\r\nContent-Length: 101\r\n\r\n")[0][:2] == (
        413, "payload_too_large")
    # More digits than int() takes from a string: still a 413, not an exception.
    huge = b"POST /a HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n"
    assert state(huge, max_head=10_000)[0][:2] == (413, "payload_too_large")
    chunks = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"40\r\n" + b"a" * 64
    assert state(chunks + b"\r\n40\r\n")[0][:2] == (413, "payload_too_large")


@settings(max_examples=300, deadline=None)
@given(head=st.lists(st.sampled_from([
    b"POST /a HTTP/1.1", b"Content-Length: 5", b"Content-Length: -1", b"content-length:x",
    b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip", b"Expect: 100-continue",
    b"X: \xff\x00", b"", b":", b"Content-Length: 99999999999999999999"]), max_size=6),
       body=st.binary(max_size=200))
def test_any_bytes_give_a_state_never_an_exception(head: list[bytes], body: bytes) -> None:
    data = b"\r\n".join(head) + b"\r\n\r\n" + body
    for cut in (len(data), len(data) // 2, 3):
        verdict, end, expects = state(data[:cut], max_head=100, max_body=50)
        assert verdict in (COMPLETE, INCOMPLETE) or verdict[0] in (413, 431)
        assert 0 <= end <= cut and isinstance(expects, bool)


def test_expect_continue_is_reported_while_the_body_is_missing() -> None:
    head = b"POST /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    assert state(head) == (INCOMPLETE, 0, True)
    assert state(head + b"ab") == (COMPLETE, len(head) + 2, False)


@pytest.mark.parametrize(("name", "read"), [
    ("CONFHOOK_REQUEST_READ_TIMEOUT", read_timeout_from_env),
    ("CONFHOOK_RESPONSE_SEND_TIMEOUT", send_timeout_from_env)])
def test_timeouts_are_checked_when_gunicorn_starts(monkeypatch: pytest.MonkeyPatch, name: str,
                                                   read: Any) -> None:
    monkeypatch.delenv(name, raising=False)
    assert read() in (10.0, 30.0)
    monkeypatch.setenv(name, "2.5")
    assert read() == 2.5
    for bad in ("0", "-1", "301", "nan", "soon"):
        monkeypatch.setenv(name, bad)
        with pytest.raises(SystemExit, match=name):
            read()


# -- the service under gunicorn ----------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("slow")
    service = Stack(free_port(), free_port(), f"sqlite:///{work / 'confhook.db'}",
                    secrets.token_urlsafe(32), "slow-" + secrets.token_urlsafe(16),
                    extra_env={"CONFHOOK_WORKERS": "2", "CONFHOOK_THREADS": "2",
                               "CONFHOOK_REQUEST_READ_TIMEOUT": str(READ_TIMEOUT),
                               "CONFHOOK_RESPONSE_SEND_TIMEOUT": str(SEND_TIMEOUT)},
                    log_dir=work)
    with running(service):
        yield service


@pytest.fixture(scope="module")
def conference(stack: Stack) -> dict[str, Any]:
    response = requests.post(f"{stack.service_url}/api/v1/conferences", timeout=15,
                             json={"from": "+19195551212"}, headers=stack.auth())
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    body["path"] = "/" + body["callbackUrl"].split("/", 3)[3]
    return body


def speak(conference: dict[str, Any], n: int) -> bytes:
    return json.dumps({"eventType": "conference-speak", "conferenceId": conference["conferenceId"],
                       "status": "started",
                       "time": f"2026-02-01T00:{n // 60 % 60:02d}:{n % 60:02d}Z"}).encode()


def connect(stack: Stack) -> socket.socket:
    return socket.create_connection(("127.0.0.1", stack.service_port), timeout=10)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response from ``sock`` (interim 1xx responses skipped)."""
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {data!r}")
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        if 100 <= status < 200:
            continue
        length = int(headers.get("content-length", "0"))
        while len(data) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed in the body")
            data += chunk
        return status, headers, data[:length]


def stored_speak_events(stack: Stack, conference: dict[str, Any]) -> int:
    response = requests.get(f"{stack.service_url}/api/v1/events", timeout=10,
                            headers=stack.auth(),
                            params={"conference": conference["conferenceId"],
                                    "eventType": "conference-speak", "limit": 500})
    assert response.status_code == 200, response.text
    return len(response.json()["data"])


class Dripping:
    """``count`` connections that each send part of a request, then a byte a second."""

    def __init__(self, stack: Stack, path: str, count: int, *, in_body: bool) -> None:
        self.socks = []
        for _ in range(count):
            sock = connect(stack)
            head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    "Content-Length: 500\r\n")
            sock.sendall((head + "\r\n{" if in_body else head).encode())
            self.socks.append(sock)
        self.stop = threading.Event()
        self.in_body = in_body
        self.thread = threading.Thread(target=self.drip, daemon=True)
        self.thread.start()

    def drip(self) -> None:
        while not self.stop.wait(0.5):
            for sock in self.socks:
                with suppress(OSError):
                    sock.sendall(b" " if self.in_body else b"X-Slow: 1\r\n")

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for sock in self.socks:
            sock.close()


@pytest.mark.parametrize("in_body", [False, True], ids=["slow-head", "slow-body"])
def test_slow_clients_do_not_hold_up_deliveries(stack: Stack, conference: dict[str, Any],
                                                in_body: bool) -> None:
    before = stored_speak_events(stack, conference)
    slow = Dripping(stack, conference["path"], 24, in_body=in_body)  # 6x the threads
    try:
        time.sleep(0.5)
        base = 1000 if in_body else 0
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda n: requests.post(
                f"{stack.service_url}{conference['path']}", data=speak(conference, n),
                headers={"Content-Type": "application/json"},
                timeout=READ_TIMEOUT - 1).status_code, range(base, base + 20)))
        # Every delivery answered while the slow clients still had time left to dawdle.
        assert statuses == [204] * 20
    finally:
        slow.close()
    assert stored_speak_events(stack, conference) == before + 20


def test_clients_that_do_not_read_their_answers_do_not_hold_up_deliveries(
        stack: Stack, conference: dict[str, Any]) -> None:
    # Each asks for the OpenAPI document (about 70 kB) 150 times in one write, with a small
    # receive window, and reads nothing: 10 MB of answers, more than a socket buffer holds
    # (4 MB at most here).
    document = requests.get(f"{stack.service_url}/api/v1/openapi.json", timeout=10)
    assert document.status_code == 200 and len(document.content) > 50_000
    hogs = []
    for _ in range(8):  # twice the threads
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", stack.service_port))
        sock.sendall(b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 150)
        hogs.append(sock)
    try:
        time.sleep(0.5)
        before = stored_speak_events(stack, conference)
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda n: requests.post(
                f"{stack.service_url}{conference['path']}", data=speak(conference, n),
                headers={"Content-Type": "application/json"}, timeout=20).status_code,
                range(3000, 3020)))
        assert statuses == [204] * 20
        assert stored_speak_events(stack, conference) == before + 20
    finally:
        for sock in hogs:
            sock.close()


def test_a_request_that_never_finishes_gets_408_and_the_connection_closes(
        stack: Stack, conference: dict[str, Any]) -> None:
    sock = connect(stack)
    sock.sendall(f"POST {conference['path']} HTTP/1.1\r\nHost: x\r\n".encode())
    began = time.monotonic()
    status, headers, body = read_response(sock)
    assert status == 408
    assert time.monotonic() - began >= READ_TIMEOUT - 1.5
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert sock.recv(10) == b""
    sock.close()


def test_an_idle_connection_is_closed_without_an_answer(stack: Stack) -> None:
    sock = connect(stack)
    assert sock.recv(10) == b""  # after the read timeout, nothing was asked: nothing said
    sock.close()


def test_oversized_requests_are_refused_before_they_are_read(
        stack: Stack, conference: dict[str, Any]) -> None:
    sock = connect(stack)
    sock.sendall(f"POST {conference['path']} HTTP/1.1\r\nHost: x\r\n"
                 "Content-Length: 100000000\r\n\r\n{".encode())
    status, _, body = read_response(sock)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    sock.close()

    sock = connect(stack)
    sock.sendall(b"GET /healthz HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 70_000)
    status, _, body = read_response(sock)
    assert status == 431
    assert json.loads(body)["error"]["code"] == "request_header_fields_too_large"
    sock.close()


def test_pipelined_chunked_and_expect_continue_requests(
        stack: Stack, conference: dict[str, Any]) -> None:
    before = stored_speak_events(stack, conference)
    path = conference["path"]
    one, two, three = (speak(conference, 2000 + n) for n in range(3))
    sock = connect(stack)
    # Two requests in one write, the second split mid-body by a pause.
    first = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             f"Content-Length: {len(one)}\r\n\r\n").encode() + one
    second = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Transfer-Encoding: chunked\r\n\r\n{len(two) - 5:x}\r\n").encode() + two[:-5]
    sock.sendall(first + second)
    time.sleep(0.3)
    sock.sendall(b"\r\n5\r\n" + two[-5:] + b"\r\n0\r\n\r\n")
    assert read_response(sock)[0] == 204
    assert read_response(sock)[0] == 204
    # Expect: 100-continue: the body follows the interim answer, on the same connection.
    sock.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Expect: 100-continue\r\nContent-Length: {len(three)}\r\n\r\n").encode())
    interim = sock.recv(64)
    assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    sock.sendall(three)
    status, _, _ = read_response(sock)
    assert status == 204
    sock.close()
    assert stored_speak_events(stack, conference) == before + 3
