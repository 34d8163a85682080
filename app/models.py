"""Tables: conferences, their members, the events the provider sent, rejected deliveries.

Times are stored as naive UTC datetimes (SQLite has no time zones); code that reads them
treats them as UTC.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    literal_column,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

# Portable auto-increment 64-bit key: SQLite only auto-increments INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")

CONFERENCE_STATES = ("pending", "created", "active", "completed", "failed")
MEMBER_STATES = ("active", "completed")
# invalid: stored as received, but a field could not be understood (match_reason names it).
MATCH_STATES = ("matched", "unmatched", "conflict", "invalid")

# Event.channels is a bit set of the URLs a delivery of the event came through.
CHANNEL_BITS = {"callback": 1, "fallback": 2}

TAG_MAX_LENGTH = 256
PROVIDER_ID_MAX_LENGTH = 128
EVENT_TYPE_MAX_LENGTH = 64
STATUS_MAX_LENGTH = 64


def channels_of(bits: int) -> list[str]:
    """The names of the channels in an ``Event.channels`` bit set."""
    return [name for name, bit in CHANNEL_BITS.items() if bits & bit]


def utcnow() -> datetime:
    """Return the current time as naive UTC, the form every column stores."""
    return datetime.now(UTC).replace(tzinfo=None)


def new_conference_id() -> str:
    """Return a fresh opaque, URL-safe local conference id."""
    return "cf" + secrets.token_hex(8)


class Conference(Base):
    __tablename__ = "conference"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_conference_id)
    conference_id: Mapped[str | None] = mapped_column(String(PROVIDER_ID_MAX_LENGTH),
                                                      unique=True)
    tag: Mapped[str | None] = mapped_column(String(TAG_MAX_LENGTH), index=True)
    from_number: Mapped[str] = mapped_column(String(32))
    callback_url: Mapped[str] = mapped_column(Text)
    fallback_url: Mapped[str] = mapped_column(Text)
    callback_method: Mapped[str] = mapped_column(String(4))
    callback_timeout_ms: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    error_status: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(128))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    created_time: Mapped[datetime | None] = mapped_column(DateTime)
    completed_time: Mapped[datetime | None] = mapped_column(DateTime)
    active_members: Mapped[int] = mapped_column(Integer, default=0)
    # Event time of the event that last set active_members: later events win, whatever
    # order they arrive in.
    active_members_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_event_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        CheckConstraint(f"state IN {CONFERENCE_STATES!r}", name="state"),
        CheckConstraint("callback_method IN ('GET', 'POST')", name="callback_method"),
    )


class Member(Base):
    __tablename__ = "member"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    conference_pk: Mapped[str] = mapped_column(ForeignKey("conference.id", ondelete="CASCADE"))
    member_id: Mapped[str] = mapped_column(String(PROVIDER_ID_MAX_LENGTH))
    call_id: Mapped[str | None] = mapped_column(String(PROVIDER_ID_MAX_LENGTH))
    state: Mapped[str] = mapped_column(String(16), default="active")
    joined_at: Mapped[datetime | None] = mapped_column(DateTime)
    left_at: Mapped[datetime | None] = mapped_column(DateTime)
    mute: Mapped[bool] = mapped_column(default=False)
    hold: Mapped[bool] = mapped_column(default=False)
    # Event time of the event that last set mute/hold.
    status_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_event_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        UniqueConstraint("conference_pk", "member_id", name="uq_member_conference_member"),
        CheckConstraint(f"state IN {MEMBER_STATES!r}", name="state"),
    )


class Event(Base):
    __tablename__ = "event"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    conference_pk: Mapped[str | None] = mapped_column(
        ForeignKey("conference.id", ondelete="SET NULL"))
    event_type: Mapped[str] = mapped_column(String(EVENT_TYPE_MAX_LENGTH))
    unknown_type: Mapped[bool] = mapped_column(default=False)
    conference_id: Mapped[str | None] = mapped_column(String(PROVIDER_ID_MAX_LENGTH))
    member_id: Mapped[str | None] = mapped_column(String(PROVIDER_ID_MAX_LENGTH))
    call_id: Mapped[str | None] = mapped_column(String(PROVIDER_ID_MAX_LENGTH))
    status: Mapped[str | None] = mapped_column(String(STATUS_MAX_LENGTH))
    tag: Mapped[str | None] = mapped_column(String(TAG_MAX_LENGTH))
    active_members: Mapped[int | None] = mapped_column(Integer)
    mute: Mapped[bool | None] = mapped_column()
    hold: Mapped[bool | None] = mapped_column()
    # The time the event itself carries (UTC), if any; occurred_at falls back to receipt.
    event_time: Mapped[datetime | None] = mapped_column(DateTime)
    occurred_at: Mapped[datetime] = mapped_column(DateTime)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The body or query string as received, kept when ``payload`` is not a faithful copy
    # (the event is then ``invalid``): what was sent is never lost.
    raw: Mapped[str | None] = mapped_column(Text)
    dedup_key: Mapped[str] = mapped_column(String(64), unique=True)
    first_received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    deliveries: Mapped[int] = mapped_column(Integer, default=1)
    channels: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(4))
    match: Mapped[str] = mapped_column(String(16))
    match_reason: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        CheckConstraint(f"match IN {MATCH_STATES!r}", name="match"),
        Index("ix_event_conference_occurred", "conference_pk", "occurred_at", "id"),
        Index("ix_event_type_occurred", "event_type", "occurred_at", "id"),
        Index("ix_event_tag_occurred", "tag", "occurred_at", "id"),
        Index("ix_event_tag_type_occurred", "tag", "event_type", "occurred_at", "id"),
        Index("ix_event_first_received", "first_received_at"),
    )


def unfiled() -> Any:
    """Events filed as anything but matched: the few an operator looks into, re-matches and
    counts as problems. Two indexes hold only these (below), so a matched event, nearly
    every one, costs them nothing to store; a query uses them when its WHERE has this very
    condition (SQLite's rule), a constant and not a parameter."""
    return Event.match != literal_column("'matched'")


def match_in(kinds: Sequence[str]) -> list[Any]:
    """The WHERE clauses for events whose match is one of ``kinds``: with :func:`unfiled`
    when ``matched`` is not one of them, so that the index of events not matched serves it."""
    clauses = [Event.match.in_(kinds)]
    if "matched" not in kinds:
        clauses.append(unfiled())
    return clauses


Index("ix_event_unfiled_occurred", Event.match, Event.occurred_at, Event.id,
      sqlite_where=unfiled(), postgresql_where=unfiled())
Index("ix_event_unfiled_provider_conference", Event.conference_id,
      sqlite_where=unfiled(), postgresql_where=unfiled())


class RejectedDelivery(Base):
    """Deliveries refused before storage, counted per minute and reason (bounded growth)."""

    __tablename__ = "rejected_delivery"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    minute: Mapped[datetime] = mapped_column(DateTime)
    reason: Mapped[str] = mapped_column(String(32))
    count: Mapped[int] = mapped_column(Integer, default=1)
    last_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("minute", "reason", name="uq_rejected_delivery_minute_reason"),
    )


class SigninFailure(Base):
    """Failed admin sign-ins per client address and minute, for rate limiting and audit."""

    __tablename__ = "signin_failure"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(String(64))
    minute: Mapped[datetime] = mapped_column(DateTime)
    count: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (
        UniqueConstraint("address", "minute", name="uq_signin_failure_address_minute"),
    )


class ReadinessProbe(Base):
    """One row that ``/readyz`` writes, as a delivery would, to prove writes go through."""

    __tablename__ = "readiness_probe"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    checked_at: Mapped[datetime] = mapped_column(DateTime)


class AdminSession(Base):
    """A signed-in admin session, server-side, so that signing out ends it for good.

    The cookie holds a random token; only its SHA-256 is stored.
    """

    __tablename__ = "admin_session"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    address: Mapped[str] = mapped_column(String(64))
