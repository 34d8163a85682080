"""Request framing: whether a buffered HTTP/1.x request has arrived whole, and error answers.

The worker (``server/worker.py``) reads requests without blocking and asks this module when
one is complete: its head and its whole body, by ``Content-Length`` or chunked.
"""

from __future__ import annotations

import json
import re

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


def without_expect(buf: bytes | bytearray) -> bytearray:
    """The request with its ``Expect`` field removed: answered here, so gunicorn does not."""
    head_end = buf.find(_HEAD_END)
    head = _EXPECT_LINE.sub(b"", bytes(buf[:head_end]))
    return bytearray(head) + buf[head_end:]
