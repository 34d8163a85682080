"""Conferences: validating a create, the callback URLs and their keys, the provider round trip.

Creating a conference takes two transactions, and the order is the point: the pending row is
committed *before* the provider is called, because the provider may fire ``conference
created`` at our callback URL before its ``201`` reaches us, and that event must find its
conference. :func:`prepare` adds the row, the caller commits, :func:`submit` calls the
provider and records the outcome, the caller commits again.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import db, reconcile
from app.catapult import (
    CatapultAPIError,
    CatapultClient,
    CatapultError,
    CatapultTimeout,
    CatapultUnavailable,
)
from app.delivery.interpret import Fields
from app.errors import APIError
from app.keys import callback_urls
from app.models import TAG_MAX_LENGTH, Conference, Event, Member, new_conference_id, unfiled

log = logging.getLogger(__name__)

E164 = re.compile(r"\+[1-9][0-9]{1,14}")  # matched whole (fullmatch): no trailing newline
CALLBACK_TIMEOUT_RANGE = (100, 10_000)
CREATE_FIELDS = ("from", "tag", "callbackHttpMethod", "callbackTimeout")


class InvalidRequest(Exception):
    """The caller's input is wrong; ``details`` maps each field to what is wrong with it."""

    def __init__(self, message: str, details: dict[str, str]):
        super().__init__(message)
        self.details = details


class ConferenceIdTaken(CatapultError):
    """The provider answered a create with a conference id another conference here has."""

    def __init__(self, conference_id: str, taken_by: str) -> None:
        super().__init__(f"the provider answered with conference id {conference_id}, which "
                         f"conference {taken_by} here has already")
        self.conference_id = conference_id
        self.taken_by = taken_by


class ProviderFailed(Exception):
    """The provider refused or failed a call; the conference row records it."""

    def __init__(self, conference: Conference, error: CatapultError):
        super().__init__(str(error))
        self.conference = conference
        self.error = error


@dataclass(frozen=True)
class CreateRequest:
    from_number: str
    tag: str | None
    callback_method: str
    callback_timeout_ms: int


# -- create -----------------------------------------------------------------------------------

def parse_create(body: Any, defaults: Mapping[str, Any]) -> CreateRequest:
    """Validate a create request body; raise :class:`InvalidRequest` naming every bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", {"body": "not an object"})
    details: dict[str, str] = {}
    for name in body:
        if name not in CREATE_FIELDS:
            details[str(name)[:64]] = f"unknown field; expected one of {', '.join(CREATE_FIELDS)}"

    from_number = body.get("from")
    if from_number is None:
        details["from"] = "required"
    elif not isinstance(from_number, str) or not E164.fullmatch(from_number):
        details["from"] = "must be an E.164 phone number such as +19195551212"

    tag = body.get("tag")
    if tag is not None:
        if not isinstance(tag, str):
            details["tag"] = "must be a string"
        elif len(tag) > TAG_MAX_LENGTH:
            details["tag"] = f"must be at most {TAG_MAX_LENGTH} characters"
        elif "\x00" in tag:
            details["tag"] = "must not contain NUL characters"

    method = body.get("callbackHttpMethod", defaults["CONFHOOK_CALLBACK_METHOD"])
    if not isinstance(method, str) or method.upper() not in ("GET", "POST"):
        details["callbackHttpMethod"] = "must be GET or POST"
        method = "POST"

    timeout = body.get("callbackTimeout", defaults["CONFHOOK_CALLBACK_TIMEOUT_MS"])
    lo, hi = CALLBACK_TIMEOUT_RANGE
    # Clients of the provider's era sent numbers as strings ("2000"): accept both.
    if isinstance(timeout, str) and timeout.strip().isdigit():
        timeout = int(timeout.strip())
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not lo <= timeout <= hi:
        details["callbackTimeout"] = f"must be an integer number of milliseconds, {lo} to {hi}"
        timeout = lo

    if details:
        raise InvalidRequest("invalid conference request", details)
    return CreateRequest(from_number=from_number, tag=tag or None,
                         callback_method=method.upper(), callback_timeout_ms=timeout)


def create(session: Session, client: CatapultClient, body: Any,
           config: Mapping[str, Any]) -> Conference:
    """Create a conference on the provider with this service's callback URLs.

    The one way to create one: the API, the admin page and the CLI call it. It commits twice,
    on purpose: the pending row before the provider is called (its callbacks may arrive
    before its answer), then the outcome. Raises :class:`InvalidRequest` (nothing stored) or
    :class:`ProviderFailed` (the row is kept as ``failed``, with the provider's error).
    """
    request = parse_create(body, config)
    conference = prepare(session, request, config)
    session.commit()
    try:
        submit(session, client, conference)
    except ProviderFailed:
        session.commit()
        raise
    session.commit()
    return conference


def prepare(session: Session, request: CreateRequest, config: Mapping[str, Any]) -> Conference:
    """Add the pending conference row with its own callback URLs; the caller commits."""
    conference_pk = new_conference_id()
    callback_url, fallback_url = callback_urls(config, conference_pk)
    conference = Conference(
        id=conference_pk, tag=request.tag, from_number=request.from_number,
        callback_url=callback_url, fallback_url=fallback_url,
        callback_method=request.callback_method,
        callback_timeout_ms=request.callback_timeout_ms, state="pending",
    )
    session.add(conference)
    session.flush()
    return conference


def provider_params(conference: Conference) -> dict[str, Any]:
    params: dict[str, Any] = {
        "from": conference.from_number,
        "callbackUrl": conference.callback_url,
        "fallbackUrl": conference.fallback_url,
        "callbackHttpMethod": conference.callback_method,
        "callbackTimeout": conference.callback_timeout_ms,
    }
    if conference.tag is not None:
        params["tag"] = conference.tag
    return params


def submit(session: Session, client: CatapultClient, conference: Conference) -> Conference:
    """Create ``conference`` on the provider and record the outcome; the caller commits.

    On failure the row is marked ``failed`` with the provider's error, and
    :class:`ProviderFailed` is raised after that is recorded.
    """
    try:
        created = client.create_conference(provider_params(conference))
    except CatapultError as exc:
        _record_failure(session, conference, exc)
        raise ProviderFailed(conference, exc) from exc

    table = Conference.__table__
    taken_by = session.scalar(select(table.c.id).where(table.c.conference_id == created.id,
                                                       table.c.id != conference.id))
    if taken_by is None:
        # A callback that outran the 201 may have filled in the id and moved the state on
        # already: only fill what is still empty, only advance what is still pending.
        try:
            with session.begin_nested():
                session.execute(update(table).where(table.c.id == conference.id,
                                                    table.c.conference_id.is_(None))
                                .values(conference_id=created.id))
        except IntegrityError:  # another conference took it meanwhile
            taken_by = session.scalar(select(table.c.id).where(
                table.c.conference_id == created.id)) or "another"
    if taken_by is not None:
        error = ConferenceIdTaken(created.id, taken_by)
        _record_failure(session, conference, error)
        raise ProviderFailed(conference, error)
    session.execute(update(table).where(table.c.id == conference.id,
                                        table.c.state.in_(("pending", "failed")))
                    .values(state="created"))
    session.refresh(conference)
    if conference.conference_id != created.id:
        log.warning("conference %s: provider id %s from Location differs from %s seen in an "
                    "earlier callback; keeping the Location's", conference.id, created.id,
                    conference.conference_id)
        conference.conference_id = created.id
        events = Event.__table__
        session.execute(update(events).where(events.c.conference_pk == conference.id,
                                             events.c.conference_id != created.id)
                        .values(match="conflict", match_reason="conference_id_mismatch"))
        session.flush()
    return conference


def _record_failure(session: Session, conference: Conference, exc: CatapultError) -> None:
    if isinstance(exc, CatapultAPIError):
        status, code, message = exc.status, exc.code or exc.category, exc.message
    elif isinstance(exc, ConferenceIdTaken):
        status, code, message = None, "conference_id_taken", str(exc)
    elif isinstance(exc, CatapultTimeout):
        status, code = None, "provider_timeout"
        message = f"{exc}; the conference may exist on the provider"
    else:
        status, code, message = None, "provider_unavailable", str(exc)
    table = Conference.__table__
    this = table.c.id == conference.id
    session.execute(update(table).where(this).values(
        error_status=status, error_code=code, error_message=message))
    # A callback that already arrived proves the conference exists: keep its state then.
    session.execute(update(table).where(this, table.c.state == "pending")
                    .values(state="failed"))
    session.refresh(conference)
    log.warning("conference %s: provider create failed: %s", conference.id, exc)


# -- actions through the provider ---------------------------------------------------------------

class NotOnProvider(Exception):
    """The conference has no provider id (its create failed or is still pending)."""


def terminate(client: CatapultClient, conference: Conference) -> None:
    """Ask the provider to end ``conference``; its callbacks then complete the view."""
    if conference.conference_id is None:
        raise NotOnProvider(conference.id)
    try:
        client.update_conference(conference.conference_id, {"state": "completed"})
    except CatapultError as exc:
        raise ProviderFailed(conference, exc) from exc


def refresh(session: Session, client: CatapultClient, conference: Conference) -> list[str]:
    """Reconcile the conference's view with the provider's ``GET``; return what changed."""
    if conference.conference_id is None:
        raise NotOnProvider(conference.id)
    try:
        remote = client.get_conference(conference.conference_id)
        remote_members = client.list_members(conference.conference_id)
    except CatapultError as exc:
        raise ProviderFailed(conference, exc) from exc
    if not isinstance(remote, dict) or not isinstance(remote_members, list):
        raise ProviderFailed(conference, CatapultUnavailable("provider answered an "
                                                             "unexpected shape"))
    return reconcile.reconcile(session, conference, remote,
                            [m for m in remote_members if isinstance(m, dict)])


# -- tracking a conference created elsewhere ---------------------------------------------------

@dataclass
class Tracked:
    conference: Conference
    created: bool  # False when the conference was known already
    waiting: int  # unmatched events that name it, for the operator to re-match


def _without_credentials(url: Any) -> str:
    if not isinstance(url, str):
        return ""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url[:2048]
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))[:2048]


def track(session: Session, client: CatapultClient, conference_id: str,
          config: Mapping[str, Any]) -> Tracked:
    """Start tracking a conference that another system created on the provider.

    Its callbacks reach the shared callback URL; once it is known here, the ones still
    to come match it by ``conferenceId``, and those already stored as unmatched can be
    re-matched. The row takes the provider's record (and its members); the caller commits.
    """
    known = session.scalar(select(Conference).where(Conference.conference_id == conference_id))
    if known is not None:
        return Tracked(known, False, _waiting(session, conference_id))
    probe = Conference(id=new_conference_id(), conference_id=conference_id)
    try:
        remote = client.get_conference(conference_id)
        remote_members = client.list_members(conference_id)
    except CatapultError as exc:
        raise ProviderFailed(probe, exc) from exc
    if not isinstance(remote, dict) or not isinstance(remote_members, list):
        raise ProviderFailed(probe, CatapultUnavailable("provider answered an unexpected shape"))
    tag = remote.get("tag")
    from_number = remote.get("from")
    method = str(remote.get("callbackHttpMethod") or "").strip().upper()
    lo, hi = CALLBACK_TIMEOUT_RANGE
    timeout = Fields(remote, None).integer("callbackTimeout", hi)  # "5000" as well as 5000
    conference = Conference(
        id=probe.id, conference_id=conference_id,
        tag=tag if isinstance(tag, str) and tag and len(tag) <= TAG_MAX_LENGTH else None,
        from_number=from_number[:32] if isinstance(from_number, str) else "",
        callback_url=_without_credentials(remote.get("callbackUrl")),
        fallback_url=_without_credentials(remote.get("fallbackUrl")),
        callback_method=method if method in ("GET", "POST") else "POST",
        callback_timeout_ms=(timeout if timeout is not None and lo <= timeout
                             else config["CONFHOOK_CALLBACK_TIMEOUT_MS"]),
        state="created",
    )
    session.add(conference)
    session.flush()
    reconcile.reconcile(session, conference, remote,
                     [m for m in remote_members if isinstance(m, dict)])
    return Tracked(conference, True, _waiting(session, conference_id))


def _waiting(session: Session, conference_id: str) -> int:
    return session.scalar(select(func.count()).select_from(Event).where(
        Event.conference_id == conference_id, unfiled())) or 0


# -- reading ----------------------------------------------------------------------------------

def find(session: Session, ident: str) -> Conference | None:
    """Return the conference with local id or provider ``conferenceId`` ``ident``."""
    return session.scalar(select(Conference).where(
        or_(Conference.id == ident, Conference.conference_id == ident)).limit(1))


def find_or_404(ident: str) -> Conference:
    """For views: the conference by local id or provider conferenceId, in the request's
    session, or a 404 (a JSON error for the API, a page for the admin)."""
    conference = find(db.read_session(), ident)
    if conference is None:
        raise APIError(404, "not_found", "no such conference", {"conference": ident[:128]})
    return conference


def members(session: Session, conference: Conference) -> list[Member]:
    return list(session.scalars(select(Member).where(Member.conference_pk == conference.id)
                                .order_by(Member.joined_at, Member.id)))
