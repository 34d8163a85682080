"""Strict decoding of request bodies and query strings, shared by the API and callbacks."""

from __future__ import annotations

import json
from typing import Any

from werkzeug.datastructures import MultiDict

from app.errors import APIError


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


def single_values(multi: MultiDict[str, Any], code: str = "invalid_request") -> dict[str, Any]:
    """Return a flat dict of ``multi``; a name given twice is a 422 naming it."""
    repeated = [key for key in multi if len(multi.getlist(key)) > 1]
    if repeated:
        raise APIError(422, code, "a field is given more than once",
                       {name[:64]: "given more than once" for name in repeated[:10]})
    return dict(multi.items())


def is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json"))
