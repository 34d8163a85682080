"""The gunicorn worker: gthread, except that a request reaches a thread only once all of it has
arrived, and a response gets ``send_timeout`` seconds to be taken in.

A client that sends its request slowly, or does not read its answer, costs a buffer and a
connection, never a thread: deliveries from the provider keep theirs. Requests are read in
the main loop without blocking; ``server/framing.py`` says when one is whole. Plain HTTP/1.x
only; with TLS, HTTP/2 or the uwsgi protocol it behaves exactly like gthread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import time
from collections import OrderedDict
from functools import partial
from typing import Any

from gunicorn import http
from gunicorn.workers.gthread import TConn, ThreadWorker

from config.env import number
from server.framing import (
    ACCEPT_PAUSE_S,
    COMPLETE,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_HEAD,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_SEND_TIMEOUT,
    INCOMPLETE,
    error_bytes,
    request_state,
    without_expect,
)
from server.handover import handover


def read_timeout_from_env() -> float:
    """``CONFHOOK_REQUEST_READ_TIMEOUT`` in seconds, or ``SystemExit`` saying what is wrong."""
    return number(os.environ, "CONFHOOK_REQUEST_READ_TIMEOUT", DEFAULT_READ_TIMEOUT, 0.001,
                  300.0, float)


def send_timeout_from_env() -> float:
    """``CONFHOOK_RESPONSE_SEND_TIMEOUT`` in seconds, or ``SystemExit`` saying what is wrong."""
    return number(os.environ, "CONFHOOK_RESPONSE_SEND_TIMEOUT", DEFAULT_SEND_TIMEOUT, 0.001,
                  300.0, float)


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
        conn.read_buf = without_expect(conn.read_buf)
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
