"""Callback event payloads as the provider writes them."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

T0 = "2024-05-01T10:00:00.000Z"


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


def life(cid: str, tag: str = "weekly") -> list[dict[str, Any]]:
    """A whole conference as its callbacks tell it, in the provider's order."""
    return [
        conference(cid, "created", tag=tag, created=T0),
        member(cid, "m-1", "active", "2024-05-01T10:00:05Z", active=1, tag=tag),
        member(cid, "m-2", "active", "2024-05-01T10:00:09Z", active=2, tag=tag),
        member(cid, "m-2", "active", "2024-05-01T10:01:00Z", active=2, mute=True, tag=tag),
        media("playback", cid, "started", "2024-05-01T10:02:00Z", tag=tag),
        media("playback", cid, "done", "2024-05-01T10:02:30Z", tag=tag),
        media("speak", cid, "started", "2024-05-01T10:03:00Z", tag=tag),
        media("speak", cid, "done", "2024-05-01T10:03:04Z", tag=tag),
        member(cid, "m-1", "active", "2024-05-01T10:04:00Z", active=2, hold=True, tag=tag),
        member(cid, "m-1", "completed", "2024-05-01T10:05:00Z", active=1, hold=True,
                  tag=tag),
        member(cid, "m-2", "completed", "2024-05-01T10:06:00Z", active=0, mute=True,
                  tag=tag),
        conference(cid, "completed", tag=tag, created=T0, completed="2024-05-01T10:06:00Z"),
    ]


def deliver(client: FlaskClient, url: str, event: dict[str, Any], method: str = "POST",
            form: bool = False) -> Any:
    if method == "GET":
        return client.get(_path(url), query_string=as_query(event))
    if form:
        return client.post(_path(url), data=as_query(event))
    return client.post(_path(url), json=event)


def _path(url: str) -> str:
    return "/" + url.split("/", 3)[3]
