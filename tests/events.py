"""Callback event payloads as the provider writes them."""

from __future__ import annotations

from typing import Any


def conference(conference_id: str, status: str, *, tag: str | None = None,
               created: str = "2024-05-01T10:00:00.000Z",
               completed: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "eventType": "conference", "conferenceId": conference_id,
        "conferenceUri": f"https://api.example.com/v1/users/u/conferences/{conference_id}",
        "status": status, "createdTime": created,
    }
    if completed:
        event["completedTime"] = completed
    if tag is not None:
        event["tag"] = tag
    return event


def member(conference_id: str, member_id: str, state: str, time: str, *,
           active: int, mute: bool = False, hold: bool = False, tag: str | None = None,
           call_id: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "eventType": "conference-member", "conferenceId": conference_id,
        "memberId": member_id, "callId": call_id or f"c-{member_id}",
        "memberUri": f"https://api.example.com/v1/users/u/conferences/{conference_id}"
                     f"/members/{member_id}",
        "state": state, "activeMembers": active, "mute": mute, "hold": hold, "time": time,
    }
    if tag is not None:
        event["tag"] = tag
    return event


def media(kind: str, conference_id: str, status: str, time: str, *,
          tag: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "eventType": f"conference-{kind}", "conferenceId": conference_id,
        "conferenceUri": f"https://api.example.com/v1/users/u/conferences/{conference_id}",
        "status": status, "time": time,
    }
    if tag is not None:
        event["tag"] = tag
    return event


def as_query(event: dict[str, Any]) -> dict[str, str]:
    """The same event as GET delivers it: every value a string."""
    return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in event.items()}
