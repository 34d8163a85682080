"""Reconciling: a conference's view brought in line with the provider's own record of it.

For when callbacks were lost. States only move forward; mute and hold take the provider's
current values. The provider's answers are read as its clients of the time read them:
numbers and booleans as JSON values or as strings, enum values in any letter case.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db import upsert
from app.delivery.interpret import Fields, parse_time
from app.models import Conference, Member, utcnow


def _state(item: Mapping[str, Any]) -> str | None:
    value = item.get("state")
    return value.strip().lower() if isinstance(value, str) else None


def reconcile(session: Session, conference: Conference, remote: Mapping[str, Any],
              remote_members: Sequence[Mapping[str, Any]]) -> list[str]:
    """Bring ``conference`` in line with ``remote`` (the provider's GET) and its members;
    return what changed, in words. The caller commits."""
    changes: list[str] = []
    now = utcnow()
    conf = Conference.__table__
    this = conf.c.id == conference.id
    state = _state(remote)
    created = parse_time(remote.get("createdTime"))
    completed = parse_time(remote.get("completedTime"))
    if created is not None and conference.created_time is None:
        session.execute(update(conf).where(this).values(created_time=created))
        changes.append("createdTime")
    if state == "completed" and conference.state != "completed":
        session.execute(update(conf).where(this).values(
            state="completed", completed_time=completed or now, active_members=0,
            active_members_at=completed or now))
        changes.append(f"state {conference.state} -> completed")
    elif state == "active" and conference.state in ("pending", "failed", "created"):
        session.execute(update(conf).where(this).values(state="active"))
        changes.append(f"state {conference.state} -> active")
    elif state == "created" and conference.state in ("pending", "failed"):
        session.execute(update(conf).where(this).values(state="created"))
        changes.append(f"state {conference.state} -> created")
    active = Fields(remote, None).integer("activeMembers")
    if active is not None and state != "completed" \
            and active != conference.active_members:
        session.execute(update(conf).where(this).values(active_members=active,
                                                        active_members_at=now))
        changes.append(f"activeMembers {conference.active_members} -> {active}")
    known = {m.member_id: m for m in session.scalars(
        select(Member).where(Member.conference_pk == conference.id))}
    for item in remote_members:
        member_id = item.get("id")
        if not isinstance(member_id, str) or not member_id:
            continue
        changes.extend(_reconcile_member(session, conference.id, known.get(member_id), item,
                                         now))
    session.refresh(conference)
    return changes


def _reconcile_member(session: Session, conference_pk: str, member: Member | None,
                      item: Mapping[str, Any], now: datetime) -> list[str]:
    members = Member.__table__
    member_id = item["id"]
    call = item.get("call")
    call_id = call.rstrip("/").rsplit("/", 1)[-1] if isinstance(call, str) and call else None
    added, removed = parse_time(item.get("addedTime")), parse_time(item.get("removedTime"))
    state = "completed" if _state(item) == "completed" else "active"
    read = Fields(item, None)
    mute, hold = read.boolean("mute") is True, read.boolean("hold") is True
    if member is None:
        session.execute(upsert(session, members).values(
            conference_pk=conference_pk, member_id=member_id, call_id=call_id, state=state,
            joined_at=added, left_at=removed, mute=mute, hold=hold, status_at=now,
            last_event_at=None,
        ).on_conflict_do_nothing(index_elements=[members.c.conference_pk, members.c.member_id]))
        return [f"member {member_id} added"]
    this = (members.c.conference_pk == conference_pk) & (members.c.member_id == member_id)
    changes: list[str] = []
    values: dict[str, Any] = {}
    if state == "completed" and member.state != "completed":
        values.update(state="completed", left_at=removed or now)
        changes.append(f"member {member_id} left")
    if member.joined_at is None and added is not None:
        values["joined_at"] = added
    if (mute, hold) != (member.mute, member.hold):
        values.update(mute=mute, hold=hold, status_at=now)
        changes.append(f"member {member_id} mute={mute} hold={hold}")
    if values:
        session.execute(update(members).where(this).values(**values))
    return changes


