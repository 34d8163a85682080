"""Interpretation: what a delivery's bytes say, as one normalised event and its dedup key.

Reading decides only whether a request is a delivery at all (JSON, a form or a query string,
as text); interpreting never refuses one. A value that cannot be understood, or cannot be a
database string, is flagged (``Parsed.problem`` names the field) and the text as received is
kept in ``Parsed.raw``, so nothing the provider sent is lost and it can be interpreted again.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from app.models import (
    EVENT_TYPE_MAX_LENGTH,
    PROVIDER_ID_MAX_LENGTH,
    STATUS_MAX_LENGTH,
    TAG_MAX_LENGTH,
)
from app.payload import is_json

KNOWN_TYPES = ("conference", "conference-member", "conference-playback", "conference-speak")
MEDIA_TYPES = ("conference-playback", "conference-speak")
CONFERENCE_STATUSES = ("created", "completed")
MEMBER_STATES = ("active", "completed")
MEDIA_STATUSES = ("started", "done")
MAX_FIELDS = 200
MAX_DEPTH = 16
TIME_MAX_LENGTH = 64

TRUE = ("true", "1", "yes")
FALSE = ("false", "0", "no")

FORM_TYPE = "application/x-www-form-urlencoded"
_SURROGATE = re.compile("[\ud800-\udfff]")


class NotADelivery(Exception):
    """A request that is no delivery at all (not text, not JSON, a form nor a query string)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Received:
    """A delivery's fields as read, before interpretation.

    ``fields`` is what could be decoded (empty if nothing could); ``raw`` the text as sent,
    kept when ``fields`` is not a faithful copy of it; ``problem`` what reading found wrong.
    """

    fields: dict[str, Any]
    raw: str | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Parsed:
    event_type: str
    unknown_type: bool
    conference_id: str | None
    member_id: str | None
    call_id: str | None
    status: str | None
    tag: str | None
    active_members: int | None
    mute: bool | None
    hold: bool | None
    event_time: datetime | None
    created_time: datetime | None
    payload: dict[str, Any]
    raw: str | None
    problem: str | None  # the first thing not understood, "<field>: <what>"; None if all was
    dedup_key: str

    @property
    def is_media(self) -> bool:
        return self.event_type in MEDIA_TYPES


# -- reading ----------------------------------------------------------------------------------

class _OutOfRange(str):
    """A JSON number too large for a float, kept as the text it was sent as."""


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_query(query: str) -> Received:
    """Read a delivery sent as a query string (``query`` as it arrived, percent-encoded).

    A raw NUL byte (not ``%00``) makes it no query string: no column could keep it as text.
    """
    if "\x00" in query:
        raise NotADelivery(400, "invalid_query", "the query string holds a raw NUL byte; "
                           "percent-encode it")
    pairs = parse_qsl(query, keep_blank_values=True)
    return _from_pairs(pairs, query)


def read_body(body: bytes, mimetype: str) -> Received:
    """Read a delivery's body; raise :class:`NotADelivery` for what is no delivery at all.

    A JSON body that is not valid JSON (cut short, say) is still kept, as text: its URL key
    vouched for it, and a refusal would lose it for good (senders do not retry a 4xx).
    Bytes that are not UTF-8 text, or hold a NUL, are neither JSON nor a form: no database
    column could keep them as text, so they are refused.
    """
    if not (is_json(mimetype) or mimetype == FORM_TYPE):
        raise NotADelivery(415, "unsupported_media_type",
                           "send application/json or application/x-www-form-urlencoded")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise NotADelivery(400, "invalid_body", "the body is not UTF-8 text") from None
    if "\x00" in text:
        raise NotADelivery(400, "invalid_body", "the body holds a NUL byte")
    if mimetype == FORM_TYPE:
        return _from_pairs(parse_qsl(text, keep_blank_values=True), text)
    out_of_range: list[str] = []

    def number(literal: str) -> Any:
        value = float(literal)
        if math.isfinite(value):
            return value
        out_of_range.append(literal)
        return _OutOfRange(literal)

    try:
        value = json.loads(text, parse_float=number, parse_constant=_not_json)
    except RecursionError:
        return Received({}, text, "body: nested too deeply to read")
    except ValueError:
        return Received({}, text, "body: not valid JSON")
    if not isinstance(value, dict):
        return Received({}, text, "body: not a JSON object")
    if len(value) > MAX_FIELDS:
        return Received({}, text, f"body: more than {MAX_FIELDS} fields")
    # Only an escape (\u0000, a lone \ud800), a number past a float's range, or deep
    # nesting can make a value unstorable: the common delivery skips the walk.
    if not (out_of_range or "\\u" in text
            or text.count("{") + text.count("[") > MAX_DEPTH):
        return Received(value)
    problems: list[str] = []
    clean = _storable(value, "", 0, problems)
    if problems:
        return Received(clean if isinstance(clean, dict) else {}, text, problems[0])
    return Received(value)


def _from_pairs(pairs: Sequence[tuple[str, str]], raw: str) -> Received:
    fields: dict[str, Any] = {}
    problem = None
    for name, value in pairs[:MAX_FIELDS]:
        if name in fields:
            problem = problem or f"{_field(name)}: given more than once"
            continue
        fields[name] = value
    if len(pairs) > MAX_FIELDS:
        problem = problem or f"body: more than {MAX_FIELDS} fields"
    if any("\x00" in name or "\x00" in value for name, value in fields.items()):
        problems: list[str] = []
        fields = _storable(fields, "", 0, problems)
        problem = problem or problems[0]
    return Received(fields, raw if problem else None, problem)


def _field(name: str) -> str:
    return _SURROGATE.sub("\ufffd", name.replace("\x00", "\ufffd"))[:40]


def _storable(value: Any, where: str, depth: int, problems: list[str]) -> Any:
    """``value`` with what no database can store replaced; each replacement noted."""
    if isinstance(value, _OutOfRange):
        problems.append(f"{where or 'body'}: number out of range")
        return str(value)
    if isinstance(value, str):
        if "\x00" in value or _SURROGATE.search(value):
            problems.append(f"{where or 'body'}: NUL or lone surrogate in text")
            return _SURROGATE.sub("\ufffd", value.replace("\x00", "\ufffd"))
        return value
    if depth >= MAX_DEPTH and isinstance(value, (dict, list)):
        problems.append(f"{where or 'body'}: nested more than {MAX_DEPTH} levels")
        return None
    if isinstance(value, dict):
        clean = {}
        for key, item in value.items():
            name = _storable(key, where, depth, problems)
            # A problem is named by the top-level field it is in.
            clean[name] = _storable(item, where or _field(name), depth + 1, problems)
        return clean
    if isinstance(value, list):
        return [_storable(item, where, depth + 1, problems) for item in value]
    return value


# -- interpreting ------------------------------------------------------------------------------

class Fields:
    """Reads typed values from a delivery's fields, noting the first value not understood."""

    def __init__(self, fields: Mapping[str, Any], problem: str | None) -> None:
        self.fields = fields
        self.problem = problem

    def flag(self, name: str, what: str) -> None:
        self.problem = self.problem or f"{name}: {what}"

    def string(self, name: str, limit: int = PROVIDER_ID_MAX_LENGTH,
               strict: bool = True) -> str | None:
        """A string (or integer) value; with ``strict`` off, another type is passed over
        unflagged (an unknown event type's fields mean what they mean)."""
        value = self.fields.get(name)
        if value is None or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            if strict:
                self.flag(name, "not a string")
            return None
        text = str(value)
        if len(text) > limit:
            self.flag(name, f"over {limit} characters")
            return None
        return text

    def choice(self, name: str, choices: Sequence[str]) -> str | None:
        """An enum value in any letter case, stored lower-case; an unknown one kept as sent."""
        text = self.string(name, STATUS_MAX_LENGTH)
        if text is None:
            return None
        lowered = text.strip().lower()
        if lowered in choices:
            return lowered
        self.flag(name, "unknown value")
        return text

    def boolean(self, name: str) -> bool | None:
        value = self.fields.get(name)
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
            return value.strip().lower() in TRUE
        self.flag(name, "not true or false")
        return None

    def integer(self, name: str, hi: int = 100_000) -> int | None:
        value = self.fields.get(name)
        if value is None or value == "":
            return None
        if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) < 12:
            value = int(value.strip())
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
            self.flag(name, f"not an integer from 0 to {hi}")
            return None
        return value

    def time(self, name: str) -> datetime | None:
        value = self.fields.get(name)
        parsed = parse_time(value)
        if parsed is None and value not in (None, ""):
            self.flag(name, "not an ISO 8601 time")
        return parsed


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time as the provider writes it, as naive UTC; None if it is not one."""
    if not isinstance(value, str) or not value or len(value) > TIME_MAX_LENGTH:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
        if parsed.tzinfo is not None:
            # The provider writes UTC or an offset; a time without one is taken as UTC.
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):
        return None
    return parsed


def interpret(received: Received) -> Parsed:
    """Normalise one delivery's fields into an event; what is not understood is flagged."""
    fields = received.fields
    read = Fields(fields, received.problem)
    raw_type = fields.get("eventType")
    event_type = raw_type.strip().lower() if isinstance(raw_type, str) else ""
    if not event_type:
        read.flag("eventType", "missing")
    elif len(event_type) > EVENT_TYPE_MAX_LENGTH:
        read.flag("eventType", f"over {EVENT_TYPE_MAX_LENGTH} characters")
        event_type = event_type[:EVENT_TYPE_MAX_LENGTH]
    unknown = event_type not in KNOWN_TYPES

    conference_id = read.string("conferenceId")
    tag = read.string("tag", TAG_MAX_LENGTH)
    member_id = call_id = status = None
    active_members = None
    mute = hold = None
    created_time = None
    if event_type == "conference":
        status = read.choice("status", CONFERENCE_STATUSES)
        created_time = read.time("createdTime")
        completed = read.time("completedTime")
        event_time = completed if status == "completed" and completed else created_time
        event_time = event_time or read.time("time")
    elif event_type == "conference-member":
        member_id = read.string("memberId")
        call_id = read.string("callId")
        status = read.choice("state", MEMBER_STATES)
        active_members = read.integer("activeMembers")
        mute = read.boolean("mute")
        hold = read.boolean("hold")
        event_time = read.time("time")
    elif event_type in MEDIA_TYPES:
        status = read.choice("status", MEDIA_STATUSES)
        event_time = read.time("time")
    else:
        # Unknown types are kept whole; what common fields they have is read leniently,
        # though a value too long for its column is still flagged.
        member_id = read.string("memberId", strict=False)
        call_id = read.string("callId", strict=False)
        status = read.string("status", STATUS_MAX_LENGTH, strict=False) or read.string(
            "state", STATUS_MAX_LENGTH, strict=False)
        event_time = next((t for t in map(parse_time, (
            fields.get(n) for n in ("time", "eventTime", "completedTime", "createdTime")))
            if t is not None), None)

    problem = read.problem
    if unknown or problem:
        # Everything as received: two deliveries are the same only if every field is.
        canonical: Any = ["invalid" if problem else "unknown", event_type, sorted(
            (str(k), _canonical_value(v)) for k, v in fields.items())]
        if received.raw is not None and not fields:
            canonical.append(received.raw)
    else:
        canonical = [event_type, conference_id, member_id, call_id, status, tag,
                     active_members, mute, hold,
                     event_time.isoformat() if event_time else None]
    dedup_key = hashlib.sha256(
        json.dumps(canonical, separators=(",", ":"), ensure_ascii=True).encode()).hexdigest()
    return Parsed(event_type=event_type, unknown_type=unknown, conference_id=conference_id,
                  member_id=member_id, call_id=call_id, status=status, tag=tag,
                  active_members=active_members, mute=mute, hold=hold,
                  event_time=event_time, created_time=created_time, payload=fields,
                  raw=received.raw, problem=problem, dedup_key=dedup_key)


def reinterpret(payload: Mapping[str, Any], raw: str | None, method: str) -> Parsed:
    """Interpret a stored event again, from the text as received where it was kept."""
    if raw is None:
        return interpret(Received(dict(payload)))
    if method == "GET":
        return interpret(read_query(raw))
    try:
        received = read_body(raw.encode(), "application/json")
    except NotADelivery:
        received = Received(dict(payload), raw, "body: not valid JSON")
    if received.problem == "body: not valid JSON" and "=" in raw and not raw.lstrip(
            ).startswith(("{", "[")):
        received = _from_pairs(parse_qsl(raw, keep_blank_values=True), raw)
    return interpret(received)


def _canonical_value(value: Any) -> str:
    # GET delivers every value as a string: make POST's JSON values compare equal to them.
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
