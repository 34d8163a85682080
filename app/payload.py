"""Strict decoding of the API's request bodies and query strings."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import request

from app.errors import APIError

_SURROGATE = re.compile("[\ud800-\udfff]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json(raw: bytes) -> Any:
    """Decode a JSON body; raise a 400 :class:`APIError` that says what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(400, "invalid_json", "the body is not UTF-8") from None
    try:
        # NaN and Infinity are not JSON, and PostgreSQL's JSON type refuses them.
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise APIError(400, "invalid_json", "the body is nested too deeply") from None
    except ValueError as exc:
        raise APIError(400, "invalid_json", f"the body is not valid JSON: {exc}"[:200]) from None


def is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json"))


def _unstorable(text: str) -> bool:
    return "\x00" in text or _SURROGATE.search(text) is not None


def _printable(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text.replace("\x00", "\\0"))


def find_unstorable(value: Any, where: str = "body") -> str | None:
    """Where a decoded value holds a NUL character (PostgreSQL stores none) or a lone
    surrogate (no database's text is UTF-16), or None."""
    if isinstance(value, str):
        return _printable(where) if _unstorable(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{where}.{key}" if where != "body" else str(key)
            if _unstorable(str(key)):
                return _printable(inner)
            found = find_unstorable(item, inner)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = find_unstorable(item, f"{where}[{index}]")
            if found:
                return found
    return None


def reject_nul_in_request() -> None:
    """Answer 400 for a NUL character in the path, query string or form, before any lookup."""
    where = {}
    if "\x00" in request.path:
        where["path"] = "NUL character"
    for name, value in request.args.items(multi=True):
        if "\x00" in name or "\x00" in value:
            where[name.replace("\x00", "\\0")[:64]] = "NUL character"
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        for name, value in request.form.items(multi=True):
            if "\x00" in name or "\x00" in value:
                where[name.replace("\x00", "\\0")[:64]] = "NUL character"
    if where:
        raise APIError(400, "invalid_request", "a NUL character is not allowed", where)


def require_utf8_query_string() -> None:
    """Answer 400 for a query string with raw bytes that are not UTF-8, for every endpoint.

    (Percent-encoded bytes are decoded leniently; raw ones would fail deep inside a view.)
    """
    try:
        request.query_string.decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(400, "invalid_request", "the query string is not UTF-8; "
                       "percent-encode it") from None
