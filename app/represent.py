"""How conferences, members and events look in JSON: plain dicts, built fast."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.models import Conference, Event, Member, channels_of, utcnow
from app.queries import ConferenceCounts, MemberHistory, Stats


def iso(value: datetime | None) -> str | None:
    """Return a stored (naive UTC) time as ISO 8601 with ``Z``."""
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds") + "Z"


def conference_json(conference: Conference, members: list[Member] | None = None
                    ) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": conference.id,
        "conferenceId": conference.conference_id,
        "from": conference.from_number,
        "tag": conference.tag,
        "state": conference.state,
        "callbackUrl": conference.callback_url,
        "fallbackUrl": conference.fallback_url,
        "callbackHttpMethod": conference.callback_method,
        "callbackTimeout": conference.callback_timeout_ms,
        "createdAt": iso(conference.created_at),
        "createdTime": iso(conference.created_time),
        "completedTime": iso(conference.completed_time),
        "activeMembers": conference.active_members,
        "lastEventAt": iso(conference.last_event_at),
        "error": None,
    }
    if conference.error_code or conference.error_message or conference.error_status:
        body["error"] = {"status": conference.error_status, "code": conference.error_code,
                         "message": conference.error_message}
    if members is not None:
        body["members"] = [member_json(m) for m in members]
    return body


def counts_json(counts: ConferenceCounts) -> dict[str, Any]:
    return {"total": counts.total, "byType": counts.by_type, "deliveries": counts.deliveries,
            "duplicates": counts.duplicates, "fallbacks": counts.fallbacks,
            "conflicts": counts.conflicts, "invalid": counts.invalid,
            "unknownType": counts.unknown}


def member_json(member: Member) -> dict[str, Any]:
    return {
        "memberId": member.member_id,
        "callId": member.call_id,
        "state": member.state,
        "joinedAt": iso(member.joined_at),
        "leftAt": iso(member.left_at),
        "mute": member.mute,
        "hold": member.hold,
    }


def member_detail_json(history: MemberHistory) -> dict[str, Any]:
    member = history.member
    body = member_json(member)
    duration = None
    if member.joined_at is not None:
        end = member.left_at or (None if member.state == "completed" else utcnow())
        if end is not None:
            duration = round(max((end - member.joined_at).total_seconds(), 0.0), 3)
    body["durationSeconds"] = duration
    body["history"] = [{**change, "time": iso(change["time"])} for change in history.changes]
    return body


def event_json(event: Event) -> dict[str, Any]:
    channels = channels_of(event.channels)
    return {
        "id": event.id,
        "eventType": event.event_type,
        "unknownType": event.unknown_type,
        "conference": event.conference_pk,
        "conferenceId": event.conference_id,
        "memberId": event.member_id,
        "callId": event.call_id,
        "status": event.status,
        "tag": event.tag,
        "eventTime": iso(event.event_time),
        "receivedAt": iso(event.first_received_at),
        "lastReceivedAt": iso(event.last_received_at),
        "channel": channels[0] if channels else None,
        "channels": channels,
        "method": event.method,
        "deliveries": event.deliveries,
        "match": event.match,
        "matchReason": event.match_reason,
        "payload": event.payload,
        "raw": event.raw,
    }


def stats_json(stats: Stats) -> dict[str, Any]:
    minutes = stats.minutes
    rejected = sum(stats.rejected.values())
    return {
        "since": iso(stats.since),
        "until": iso(stats.until),
        "events": {"received": stats.received, "byType": stats.by_type,
                   "duplicates": stats.duplicates, "fallbacks": stats.fallbacks,
                   "unmatched": stats.unmatched, "conflicts": stats.conflicts,
                   "invalid": stats.invalid,
                   "unknownType": stats.unknown},
        "rejectedDeliveries": {"total": rejected, "byReason": stats.rejected},
        "conferences": {"created": stats.conferences_created,
                        "failed": stats.conferences_failed},
        "ratesPerMinute": {"received": round(stats.received / minutes, 3),
                           "duplicates": round(stats.duplicates / minutes, 3),
                           "fallbacks": round(stats.fallbacks / minutes, 3),
                           "rejected": round(rejected / minutes, 3)},
    }
