"""The emulator's state: conferences and members in memory, and the events they produce.

State changes happen under one lock and return the callback events they cause, in the order
the provider sends them; the caller hands those to the deliverer.
"""

from __future__ import annotations

import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
MAX_MEMBERS = 20
MAX_CALLBACK_TIMEOUT_MS = 10_000
MAX_SENTENCE = 1000
PROFILES = ("interpret_digits", "passthru_digits")


class ProviderError(Exception):
    """An error answered in the provider's format: category, code, message, details."""

    def __init__(self, status: int, category: str, code: str, message: str,
                 details: list[dict[str, str]] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.headers = headers or {}
        self.status = status
        self.category = category
        self.code = code
        self.message = message
        self.details = details or []

    def body(self) -> dict[str, Any]:
        # Always a message (one client reads it unguarded) and a list of details.
        return {"category": self.category, "code": self.code, "message": self.message,
                "details": self.details}


def bad_request(code: str, message: str, name: str | None = None,
                value: Any = None) -> ProviderError:
    details = [{"name": name, "value": str(value)[:200]}] if name else None
    return ProviderError(400, "bad-request", code, message, details)


def not_found(what: str, ident: str = "") -> ProviderError:
    """``conference`` -> ``conference-not-found``; ``conference-member`` the same way."""
    name = what.replace("-", " ")
    return ProviderError(404, "not-found", f"{what}-not-found",
                         f"The {name} {ident} could not be found".replace("  ", " "))


def rate_limited(reset_ms: int) -> ProviderError:
    """A 429 as the provider sends it: the time its limit resets, in milliseconds since the
    epoch, in ``X-RateLimit-Reset`` and in the details."""
    reset = str(int(datetime.now(UTC).timestamp() * 1000) + reset_ms)
    return ProviderError(429, "too-many-requests", "rate-limit-reached",
                         "The request rate limit was reached; try again after the reset time",
                         [{"name": "rateLimitResetTime", "value": reset}],
                         {"X-RateLimit-Reset": reset})


def invalid_state(what: str, ident: str, state: str) -> ProviderError:
    """What the provider answers to a change of a completed conference or member."""
    return ProviderError(403, "forbidden", "conference-error",
                         f"Unable to update {what} {ident}. Invalid {what} state {state}")


def as_state(body: dict[str, Any]) -> str | None:
    """``state``, in any letter case; only ``completed`` may be set."""
    value = body.get("state")
    if value is None:
        return None
    if not isinstance(value, str) or value.strip().lower() != "completed":
        raise bad_request("validation-error", "state can only be set to completed", "state",
                          value)
    return "completed"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(10)}"


# -- parsing the provider's loosely typed fields (numbers and booleans may be strings) ---------

def as_bool(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise bad_request("invalid-property", f"{name} must be true or false", name, value)


def as_timeout(body: dict[str, Any]) -> int | None:
    value = body.get("callbackTimeout")
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not (
            0 < value <= MAX_CALLBACK_TIMEOUT_MS):
        raise bad_request("invalid-property",
                          f"callbackTimeout must be 1 to {MAX_CALLBACK_TIMEOUT_MS} ms",
                          "callbackTimeout", value)
    return value


def as_method(body: dict[str, Any]) -> str | None:
    value = body.get("callbackHttpMethod")
    if value is None:
        return None
    if not isinstance(value, str) or value.strip().upper() not in ("GET", "POST"):
        raise bad_request("invalid-property", "callbackHttpMethod must be GET or POST",
                          "callbackHttpMethod", value)
    return value.strip().upper()


def as_url(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad_request("invalid-property", f"{name} must be an absolute http(s) URL",
                          name, value)
    return str(value)


def as_tag(body: dict[str, Any]) -> str | None:
    value = body.get("tag")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 256:
        raise bad_request("invalid-property", "tag must be a string of at most 256 characters",
                          "tag", value)
    return value


# -- the records -----------------------------------------------------------------------------

@dataclass
class Member:
    id: str
    call_id: str
    added_time: str
    state: str = "active"
    removed_time: str | None = None
    mute: bool = False
    hold: bool = False
    join_tone: bool = False
    leaving_tone: bool = False


@dataclass
class Conference:
    id: str
    from_number: str
    created_time: str
    callback_url: str | None = None
    fallback_url: str | None = None
    callback_method: str = "POST"
    callback_timeout_ms: int | None = None
    tag: str | None = None
    profile: str = "interpret_digits"
    state: str = "created"
    completed_time: str | None = None
    hold: bool = False
    mute: bool = False
    members: dict[str, Member] = field(default_factory=dict)

    @property
    def active_members(self) -> int:
        return sum(1 for m in self.members.values() if m.state == "active")


class Store:
    """Every conference of every user, and the transitions the provider's API allows."""

    def __init__(self, base_url: str = "") -> None:
        self.lock = threading.RLock()
        self.conferences: dict[str, Conference] = {}
        self.base_url = base_url

    # -- representations, as the provider's API answers them

    def conference_uri(self, user_id: str, conference: Conference) -> str:
        return f"{self.base_url}/v1/users/{user_id}/conferences/{conference.id}"

    def conference_json(self, conference: Conference) -> dict[str, Any]:
        body = {
            "id": conference.id, "state": conference.state, "from": conference.from_number,
            "createdTime": conference.created_time, "completedTime": conference.completed_time,
            "activeMembers": conference.active_members, "hold": conference.hold,
            "mute": conference.mute, "callbackUrl": conference.callback_url,
            "callbackHttpMethod": conference.callback_method,
            "callbackTimeout": conference.callback_timeout_ms,
            "fallbackUrl": conference.fallback_url, "tag": conference.tag,
            "profile": conference.profile,
        }
        return {k: v for k, v in body.items() if v is not None}

    def member_json(self, user_id: str, member: Member) -> dict[str, Any]:
        body = {
            "id": member.id, "state": member.state, "addedTime": member.added_time,
            "removedTime": member.removed_time, "hold": member.hold, "mute": member.mute,
            "joinTone": member.join_tone, "leavingTone": member.leaving_tone,
            "call": f"{self.base_url}/v1/users/{user_id}/calls/{member.call_id}",
        }
        return {k: v for k, v in body.items() if v is not None}

    # -- events, as the provider's callbacks carry them

    def _common(self, user_id: str, conference: Conference, event_type: str,
                tag: str | None) -> dict[str, Any]:
        event: dict[str, Any] = {"eventType": event_type, "conferenceId": conference.id}
        if event_type != "conference-member":
            event["conferenceUri"] = self.conference_uri(user_id, conference)
        if tag is not None:
            event["tag"] = tag
        return event

    def conference_event(self, user_id: str, conference: Conference) -> dict[str, Any]:
        event = self._common(user_id, conference, "conference", conference.tag)
        event["status"] = conference.state if conference.state == "completed" else "created"
        event["createdTime"] = conference.created_time
        if conference.completed_time:
            event["completedTime"] = conference.completed_time
        return event

    def member_event(self, user_id: str, conference: Conference,
                     member: Member) -> dict[str, Any]:
        event = self._common(user_id, conference, "conference-member", conference.tag)
        event.update(
            memberId=member.id, callId=member.call_id,
            memberUri=f"{self.conference_uri(user_id, conference)}/members/{member.id}",
            state=member.state, activeMembers=conference.active_members,
            mute=member.mute, hold=member.hold, time=now_iso(),
        )
        return event

    def media_event(self, user_id: str, conference: Conference, kind: str,
                    status: str, tag: str | None) -> dict[str, Any]:
        """A playback or speak event: it carries the audio request's tag, not the
        conference's."""
        event = self._common(user_id, conference, f"conference-{kind}", tag)
        event.update(status=status, time=now_iso())
        return event

    # -- transitions

    def get(self, conference_id: str) -> Conference:
        conference = self.conferences.get(conference_id)
        if conference is None:
            raise not_found("conference", conference_id)
        return conference

    def create(self, user_id: str, body: dict[str, Any]) -> tuple[Conference, list[dict]]:
        from_number = body.get("from")
        if from_number is None:
            raise bad_request("missing-property", "from is required", "from", "")
        if not isinstance(from_number, str) or not E164.match(from_number):
            raise bad_request("invalid-number", "from must be an E.164 number", "from",
                              from_number)
        profile = body.get("profile", "interpret_digits")
        if profile not in PROFILES:
            raise bad_request("validation-error", f"profile must be one of {', '.join(PROFILES)}",
                              "profile", profile)
        conference = Conference(
            id=new_id("conf"), from_number=from_number, created_time=now_iso(), profile=profile,
            callback_url=as_url(body, "callbackUrl"), fallback_url=as_url(body, "fallbackUrl"),
            callback_method=as_method(body) or "POST", callback_timeout_ms=as_timeout(body),
            tag=as_tag(body),
        )
        with self.lock:
            self.conferences[conference.id] = conference
            return conference, [self.conference_event(user_id, conference)]

    def update(self, user_id: str, conference_id: str, body: dict[str, Any]) -> list[dict]:
        with self.lock:
            conference = self.get(conference_id)
            state = as_state(body)
            if conference.state == "completed":
                raise invalid_state("conference", conference.id, conference.state)
            method, timeout = as_method(body), as_timeout(body)
            callback, fallback = as_url(body, "callbackUrl"), as_url(body, "fallbackUrl")
            hold, mute = as_bool(body, "hold"), as_bool(body, "mute")
            tag = as_tag(body)
            conference.callback_url = callback or conference.callback_url
            conference.fallback_url = fallback or conference.fallback_url
            conference.callback_method = method or conference.callback_method
            conference.callback_timeout_ms = timeout or conference.callback_timeout_ms
            # Clients send every field, unset ones as null: null means "leave as it is".
            conference.tag = tag if tag is not None else conference.tag
            events: list[dict] = []
            if hold is not None or mute is not None:
                conference.hold = conference.hold if hold is None else hold
                conference.mute = conference.mute if mute is None else mute
                for member in conference.members.values():
                    if member.state == "active":
                        member.hold = conference.hold if hold is not None else member.hold
                        member.mute = conference.mute if mute is not None else member.mute
                        events.append(self.member_event(user_id, conference, member))
            if state == "completed":
                events.extend(self._complete(user_id, conference))
            return events

    def _complete(self, user_id: str, conference: Conference) -> list[dict]:
        events = []
        for member in conference.members.values():
            if member.state == "active":
                member.state, member.removed_time = "completed", now_iso()
                events.append(self.member_event(user_id, conference, member))
        conference.state, conference.completed_time = "completed", now_iso()
        events.append(self.conference_event(user_id, conference))
        return events

    def add_member(self, user_id: str, conference_id: str, body: dict[str, Any]
                   ) -> tuple[Member, list[dict]]:
        call_id = body.get("callId")
        if not isinstance(call_id, str) or not call_id:
            raise bad_request("missing-property", "callId is required", "callId", call_id)
        with self.lock:
            conference = self.get(conference_id)
            if conference.state == "completed":
                raise invalid_state("conference", conference.id, conference.state)
            if any(m.call_id == call_id and m.state == "active"
                   for m in conference.members.values()):
                raise ProviderError(409, "conflict", "call-already-member",
                                    "The call is already a member of the conference")
            if conference.active_members >= MAX_MEMBERS:
                raise ProviderError(403, "limit", "conference-max-members",
                                    f"A conference has at most {MAX_MEMBERS} members")
            member = Member(id=new_id("member"), call_id=call_id, added_time=now_iso(),
                            mute=bool(as_bool(body, "mute")), hold=bool(as_bool(body, "hold")),
                            join_tone=bool(as_bool(body, "joinTone")),
                            leaving_tone=bool(as_bool(body, "leavingTone")))
            conference.members[member.id] = member
            conference.state = "active"
            return member, [self.member_event(user_id, conference, member)]

    def member(self, conference_id: str, member_id: str) -> Member:
        member = self.get(conference_id).members.get(member_id)
        if member is None:
            raise not_found("conference-member", member_id)
        return member

    def update_member(self, user_id: str, conference_id: str, member_id: str,
                      body: dict[str, Any]) -> list[dict]:
        with self.lock:
            conference = self.get(conference_id)
            member = self.member(conference_id, member_id)
            state = as_state(body)
            if member.state == "completed":
                raise invalid_state("conference member", member.id, member.state)
            mute, hold = as_bool(body, "mute"), as_bool(body, "hold")
            join_tone, leaving_tone = as_bool(body, "joinTone"), as_bool(body, "leavingTone")
            member.join_tone = member.join_tone if join_tone is None else join_tone
            member.leaving_tone = member.leaving_tone if leaving_tone is None else leaving_tone
            events: list[dict] = []
            changed = (mute is not None and mute != member.mute) or (
                hold is not None and hold != member.hold)
            member.mute = member.mute if mute is None else mute
            member.hold = member.hold if hold is None else hold
            if state == "completed":
                member.state, member.removed_time = "completed", now_iso()
                events.append(self.member_event(user_id, conference, member))
                if conference.active_members == 0:
                    # The last member left: the conference is over.
                    conference.state, conference.completed_time = "completed", now_iso()
                    events.append(self.conference_event(user_id, conference))
            elif changed:
                events.append(self.member_event(user_id, conference, member))
            return events

    def audio_request(self, body: dict[str, Any]) -> tuple[str, bool, str | None]:
        """Check an audio request (conference or member): its kind (``playback`` for a
        ``fileUrl``, ``speak`` for a ``sentence``), whether it stops what plays (an empty
        value), and its tag."""
        file_url, sentence = body.get("fileUrl"), body.get("sentence")
        if (file_url is None) == (sentence is None):
            raise bad_request("missing-property", "give exactly one of fileUrl or sentence",
                              "fileUrl", file_url or "")
        tag = as_tag(body)
        if file_url is not None:
            if file_url == "":
                return "playback", True, tag
            as_url(body, "fileUrl")
            return "playback", False, tag
        if not isinstance(sentence, str):
            raise bad_request("validation-error", "sentence must be text", "sentence",
                              sentence)
        if len(sentence) > MAX_SENTENCE:
            raise bad_request("validation-error", f"sentence exceeds the limit of "
                              f"{MAX_SENTENCE} characters", "sentence", len(sentence))
        return "speak", sentence == "", tag

    def active(self, conference_id: str) -> Conference:
        conference = self.get(conference_id)
        if conference.state != "active":
            raise invalid_state("conference", conference.id, conference.state)
        return conference
