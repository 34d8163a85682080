"""A gunicorn worker that hands a request to a thread only once all of it has arrived.

gunicorn's threaded worker (gthread) gives a connection to one of its few threads as soon as
the first bytes arrive, and the thread then reads the rest with blocking reads. A client that
sends its request slowly (one header line a second, or a body that never ends) holds that
thread for as long as it likes, and a handful of such clients hold them all: deliveries from
the provider then wait or fall back.

This worker reads requests in its main loop instead, without blocking, next to the accepting
and the keep-alive connections it already watches. A request goes to a thread when its head
and its whole body (``Content-Length`` or chunked) are buffered. Until then the connection
costs a buffer, not a thread, and it has ``read_timeout`` seconds in all to finish the request
(``408`` then). A head over ``max_head`` bytes is a ``431``, a body over ``max_body`` a ``413``,
both answered here with the app's JSON error shape and the connection closed.

The other way round, a client that asks for a large answer and does not read it (or reads it
a byte at a time) would hold the thread writing it. A thread gives a response ``send_timeout``
seconds in all, then closes the connection.

Plain HTTP/1.x only (what confhook serves behind its listener); with TLS, HTTP/2 or the uwsgi
protocol configured it behaves exactly like gthread.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import re
import selectors
import struct
import time
from collections import OrderedDict
from functools import partial
from typing import Any

from gunicorn import glogging, http
from gunicorn.workers.gthread import TConn, ThreadWorker

#: Seconds a client has to send a whole request once it started (or once it connected).
DEFAULT_READ_TIMEOUT = 10.0
#: Seconds a client has to take in a whole response before its connection is closed.
DEFAULT_SEND_TIMEOUT = 30.0
#: Largest request head (request line and header fields) buffered.
DEFAULT_MAX_HEAD = 64 * 1024
#: Largest body when the app does not say (Flask's ``MAX_CONTENT_LENGTH``).
DEFAULT_MAX_BODY = 1024 * 1024
#: Seconds to stop accepting when the process is out of file descriptors.
ACCEPT_PAUSE_S = 0.5

INCOMPLETE = "incomplete"
COMPLETE = "complete"

_HEAD_END = b"\r\n\r\n"
_EXPECT_LINE = re.compile(rb"\r\nexpect[ \t]*:[^\r\n]*", re.IGNORECASE)
_REASONS = {408: "Request Timeout", 413: "Content Too Large",
            431: "Request Header Fields Too Large"}


def _chunked_end(buf: bytes | bytearray, pos: int, max_body: int) -> int | str | tuple:
    """Where a chunked body starting at ``pos`` ends, ``INCOMPLETE``, or an error to answer.

    Malformed framing is left to gunicorn's parser (it answers 400): the request is complete
    as far as buffering goes.
    """
    size_total = 0
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return INCOMPLETE if len(buf) - pos <= 1024 else len(buf)
        size_text = bytes(buf[pos:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return len(buf)
        if size < 0:
            return len(buf)
        if size == 0:
            # Trailer fields, then an empty line.
            trailer_start = line_end + 2
            if buf[trailer_start:trailer_start + 2] == b"\r\n":
                return trailer_start + 2
            end = buf.find(_HEAD_END, trailer_start)
            return INCOMPLETE if end < 0 else end + 4
        size_total += size
        if size_total > max_body:
            return (413, "payload_too_large", f"body over {max_body} bytes")
        pos = line_end + 2 + size + 2
        if pos > len(buf):
            return INCOMPLETE


def request_state(buf: bytes | bytearray, max_head: int, max_body: int
                  ) -> tuple[str | tuple[int, str, str], int, bool]:
    """Look at the bytes of a connection so far: ``(state, end, expects_continue)``.

    ``state`` is ``COMPLETE`` (the first request ends at ``end``; what follows belongs to the
    next one), ``INCOMPLETE``, or ``(status, code, message)`` to answer and close.
    ``expects_continue`` says the head is complete, asks for ``100 Continue`` and the body
    has not all arrived.
    """
    # Empty lines before a request line are allowed (RFC 9112, section 2.2).
    start = 0
    while buf.startswith(b"\r\n", start):
        start += 2
    head_end = buf.find(_HEAD_END, start)
    if head_end < 0:
        if len(buf) - start > max_head:
            return (431, "request_header_fields_too_large",
                    f"request head over {max_head} bytes"), 0, False
        return INCOMPLETE, 0, False
    if head_end - start > max_head:
        return (431, "request_header_fields_too_large",
                f"request head over {max_head} bytes"), 0, False
    body_start = head_end + 4
    length: int | None = None
    chunked = False
    expect = False
    for line in bytes(buf[start:head_end]).split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.strip().lower()
        if name == b"content-length":
            text = value.strip()
            if not text.isdigit():
                return COMPLETE, body_start, False  # gunicorn answers 400
            if len(text) > 15:
                return (413, "payload_too_large", f"body over {max_body} bytes"), 0, False
            if length is not None and int(text) != length:
                return COMPLETE, body_start, False  # gunicorn answers 400
            length = int(text)
        elif name == b"transfer-encoding":
            chunked = value.strip().lower().endswith(b"chunked")
            if not chunked:
                return COMPLETE, body_start, False  # gunicorn decides
        elif name == b"expect":
            expect = value.strip().lower() == b"100-continue"
    if chunked:
        end = _chunked_end(buf, body_start, max_body)
        if isinstance(end, int):
            return COMPLETE, end, False
        return end, 0, expect and end == INCOMPLETE
    if length is None or length == 0:
        return COMPLETE, body_start, False
    if length > max_body:
        return (413, "payload_too_large", f"body over {max_body} bytes"), 0, False
    if len(buf) - body_start >= length:
        return COMPLETE, body_start + length, False
    return INCOMPLETE, 0, expect


def error_bytes(status: int, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise SystemExit(f"confhook: {name} must be a number of seconds, got {raw!r}") from None
    if not 0 < value <= 300:  # NaN too
        raise SystemExit(f"confhook: {name} must be above 0 and at most 300, got {raw!r}")
    return value


def read_timeout_from_env() -> float:
    """``CONFHOOK_REQUEST_READ_TIMEOUT`` in seconds, or ``SystemExit`` saying what is wrong."""
    return _env_float("CONFHOOK_REQUEST_READ_TIMEOUT", DEFAULT_READ_TIMEOUT)


def send_timeout_from_env() -> float:
    """``CONFHOOK_RESPONSE_SEND_TIMEOUT`` in seconds, or ``SystemExit`` saying what is wrong."""
    return _env_float("CONFHOOK_RESPONSE_SEND_TIMEOUT", DEFAULT_SEND_TIMEOUT)


class Handover:
    """What the workers of one gunicorn master share about a reload (``SIGHUP``) under way.

    gunicorn reloads by starting new workers and sending ``SIGTERM`` to the old ones at once,
    so nothing accepts connections until the new workers have imported the app: seconds on a
    loaded machine, longer than the provider waits. The master notes here, before it starts the
    new workers, which ages (gunicorn numbers its workers in order) are old and how many new
    ones it starts (:meth:`begin`, from the configuration's ``on_reload`` hook). Each new worker
    counts itself once it serves (:meth:`ready`), and an old worker told to stop goes on
    serving while :meth:`waiting` says it should.

    Created at import, in the master, before any worker is forked: an anonymous shared
    mapping, the same memory in the master and all its workers (no file, no semaphore). The
    master writes the reload's numbers; each new worker writes only its own byte; a signal
    handler may read. A reload of more new workers than there are bytes is not waited for.
    """

    _HEAD = struct.Struct("qq")  # the last old worker's age, how many new workers

    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, mmap.PAGESIZE)  # MAP_SHARED | MAP_ANONYMOUS
        self._slots = mmap.PAGESIZE - self._HEAD.size

    def begin(self, last_old_age: int, new_workers: int) -> None:
        """In the master: workers up to ``last_old_age`` are old; ``new_workers`` will start."""
        expected = new_workers if new_workers <= self._slots else 0
        self._HEAD.pack_into(self._memory, 0, 0, 0)  # no reload while the slots are cleared
        self._memory[self._HEAD.size:self._HEAD.size + expected] = bytes(expected)
        self._HEAD.pack_into(self._memory, 0, last_old_age, expected)

    def ready(self, age: int) -> None:
        """In a worker that serves: mark it if it is one of the reload's new workers."""
        boundary, expected = self._HEAD.unpack_from(self._memory, 0)
        if boundary < age <= boundary + expected:
            self._memory[self._HEAD.size + age - boundary - 1] = 1

    def waiting(self, age: int) -> bool:
        """Whether the worker of ``age`` is an old one whose replacements do not all serve."""
        boundary, expected = self._HEAD.unpack_from(self._memory, 0)
        return (age <= boundary and expected > 0
                and 0 in self._memory[self._HEAD.size:self._HEAD.size + expected])


#: The one of this process (a gunicorn master and its workers).
handover = Handover()


class ReadAheadWorker(ThreadWorker):
    """gthread whose threads only ever see requests that have fully arrived."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Connections whose request is arriving, oldest first (all have the same timeout).
        self.reading: OrderedDict[TConn, None] = OrderedDict()
        self.accept_paused_until = 0.0
        self.read_timeout = read_timeout_from_env()
        self.send_timeout = send_timeout_from_env()
        self.max_head = DEFAULT_MAX_HEAD
        self.max_body = DEFAULT_MAX_BODY
        cfg = self.cfg
        self.read_ahead = (not cfg.is_ssl and getattr(cfg, "protocol", "http") == "http"
                           and getattr(cfg, "http2_cleartext", "off") in ("off", None))
        self.handover_until = 0.0  # while stopping for a reload: serve until then at most

    # -- a reload hands over without a gap -------------------------------------------------

    def run(self) -> None:
        handover.ready(self.age)
        super().run()

    def handle_exit(self, sig: Any, frame: Any) -> None:
        """``SIGTERM``: stop, but during a reload only once the new workers serve.

        A second ``SIGTERM`` (the master stopping meanwhile) stops at once, as does a reload
        whose new workers are not all ready within ``graceful_timeout``.
        """
        if self.alive and not self.handover_until and handover.waiting(self.age):
            self.handover_until = time.monotonic() + self.cfg.graceful_timeout
            self.method_queue.defer(partial(  # logged from the main loop, not a handler
                self.log.info, "Reload: worker %s serves until the new workers do", self.pid))
            return
        self.handover_until = 0.0
        super().handle_exit(sig, frame)

    def _check_handover(self) -> None:
        """In the main loop: stop once the new workers serve, or the wait is over."""
        if not self.handover_until or not self.alive:
            return
        if not handover.waiting(self.age):
            self.log.info("Reload: the new workers serve; worker %s stops", self.pid)
        elif time.monotonic() < self.handover_until:
            return
        else:
            self.log.warning("Reload: the new workers did not all start within %s s; "
                             "worker %s stops anyway", self.cfg.graceful_timeout, self.pid)
        self.handover_until = 0.0
        super().handle_exit(None, None)

    def load_wsgi(self) -> None:
        super().load_wsgi()
        config = getattr(self.wsgi, "config", None)
        limit = config.get("MAX_CONTENT_LENGTH") if isinstance(config, dict) else None
        if isinstance(limit, int) and limit > 0:
            self.max_body = limit

    # -- every way a request reaches a thread goes through here --------------------------

    def enqueue_req(self, conn: TConn) -> None:
        if not self.read_ahead:
            super().enqueue_req(conn)
            return
        buffered = b""
        if conn.parser is not None:
            # Bytes read ahead while serving the last request (a pipelined request).
            buffered = conn.parser.unreader.buf.getvalue()
            conn.parser.unreader.buf = type(conn.parser.unreader.buf)()
        conn.sock.setblocking(False)
        conn.read_buf = bytearray(buffered)
        conn.read_deadline = time.monotonic() + self.read_timeout
        conn.sent_continue = False
        conn.polled = False
        self.reading[conn] = None
        # On loopback, on a kept-alive connection and for a pipelined request the bytes are
        # usually there already: read before asking the poller.
        self._on_readable(conn)

    def handle_request(self, req: Any, conn: TConn) -> bool:
        """Serve one request (in a thread); a response not taken in time closes the connection.

        The request has all arrived, so only writing can block here. A socket timeout bounds
        the whole ``sendall`` of the response, not each write.
        """
        if not self.read_ahead:
            return bool(super().handle_request(req, conn))
        conn.sock.settimeout(self.send_timeout)
        try:
            return bool(super().handle_request(req, conn))
        except TimeoutError:
            self.log.warning("Closed the connection from %s: it did not take its response "
                             "within %g s", conn.client, self.send_timeout)
            return False

    def _on_readable(self, conn: TConn, _sock: Any = None) -> None:
        # This runs in the worker's main loop: whatever a client sends must not break it.
        try:
            self._read_more(conn)
        except Exception:
            self.log.exception("Error reading a request from %s", conn.client)
            if conn in self.reading:
                self._drop(conn)

    def _read_more(self, conn: TConn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            data = None
        except OSError:
            self._drop(conn)
            return
        if data is not None:
            if not data:
                self._drop(conn)  # the client went away before finishing its request
                return
            conn.read_buf += data
        state = INCOMPLETE
        expects_continue = False
        if conn.read_buf:
            state, _end, expects_continue = request_state(conn.read_buf, self.max_head,
                                                          self.max_body)
        if state == COMPLETE:
            self._dispatch(conn)
        elif state != INCOMPLETE:
            self._refuse(conn, *state)
        else:
            if expects_continue and not conn.sent_continue and not self._send_continue(conn):
                return
            if not conn.polled:
                conn.polled = True
                self.poller.register(conn.sock, selectors.EVENT_READ,
                                     partial(self._on_readable, conn))

    def _send_continue(self, conn: TConn) -> bool:
        """Answer ``Expect: 100-continue`` here, and drop the field so gunicorn does not too."""
        conn.sent_continue = True
        head_end = conn.read_buf.find(_HEAD_END)
        head = _EXPECT_LINE.sub(b"", bytes(conn.read_buf[:head_end]))
        conn.read_buf = bytearray(head) + conn.read_buf[head_end:]
        try:
            conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        except OSError:
            self._drop(conn)
            return False
        return True

    def _stop_reading(self, conn: TConn) -> None:
        del self.reading[conn]
        if conn.polled:
            conn.polled = False
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)

    def _dispatch(self, conn: TConn) -> None:
        self._stop_reading(conn)
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader.unread(bytes(conn.read_buf))
        conn.read_buf = bytearray()
        conn.data_ready = True
        conn.sock.setblocking(True)
        super().enqueue_req(conn)

    def _refuse(self, conn: TConn, status: int, code: str, message: str) -> None:
        self._stop_reading(conn)
        self.log.info("Refused a request from %s: %s", conn.client, message)
        with contextlib.suppress(OSError):
            conn.sock.send(error_bytes(status, code, message))
        self.nr_conns -= 1
        conn.close()

    def _drop(self, conn: TConn) -> None:
        self._stop_reading(conn)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:  # once per turn of the main loop (at least every 1 s)
        super().murder_pending()
        if self.handover_until:
            self._check_handover()
        now = time.monotonic()
        while self.reading:
            conn = next(iter(self.reading))
            if conn.read_deadline > now:
                break
            if conn.read_buf.strip():
                self._refuse(conn, 408, "request_timeout",
                             f"request not received within {self.read_timeout:g} s")
            else:
                self._drop(conn)  # nothing asked: close quietly, as for an idle keep-alive

    def set_accept_enabled(self, enabled: bool) -> None:
        if enabled and time.monotonic() < self.accept_paused_until:
            return
        super().set_accept_enabled(enabled)

    def accept(self, listener: Any) -> None:
        if not self.read_ahead:
            super().accept(listener)
            return
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                # Out of file descriptors: pause accepting for a moment instead of spinning
                # on a listener that stays readable. Connections wait in the listen queue.
                self.log.warning("Out of file descriptors with %d connections open: "
                                 "raise the open-files limit (LimitNOFILE)", self.nr_conns)
                self.accept_paused_until = time.monotonic() + ACCEPT_PAUSE_S
                super().set_accept_enabled(False)
                return
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self.enqueue_req(TConn(self.cfg, client_sock, client_addr, listener.getsockname()))


_CALLBACK_KEY = re.compile(r"(/callbacks/[^/\s]*/[^/\s]*/)[^\s'\"]*")
_QUERY = re.compile(r"\?[^\s'\"]*")


def redact(text: str) -> str:
    """A log message with every callback URL's key and every query string replaced: gunicorn
    quotes the request line of a request it refuses ("Invalid request from …")."""
    return _QUERY.sub("?<query>", _CALLBACK_KEY.sub(r"\1<key>", text))


class AccessLogger(glogging.Logger):
    """gunicorn's logger, which builds its access line only when an access log is asked for,
    and never writes a callback key or a query string.

    The app writes its own line per request (app/logs.py). gunicorn's builds its line whenever
    a logging configuration is given (ours sets JSON formatting), even to drop it at once.
    """

    def _compute_access_log_enabled(self) -> bool:
        return bool(self.cfg.accesslog)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        super().warning(redact(str(msg % args if args else msg)), **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        super().error(redact(str(msg % args if args else msg)), **kwargs)

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        super().exception(redact(str(msg % args if args else msg)), **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        super().info(redact(str(msg % args if args else msg)), **kwargs)

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        super().debug(redact(str(msg % args if args else msg)), **kwargs)
