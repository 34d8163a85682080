"""The admin pages: dashboard, conferences, a conference's timeline, events, problems."""

from __future__ import annotations

import json
import time
from typing import Any

from flask import (
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from marshmallow import ValidationError
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from app import catapult, conferences, db, filters, queries
from app.admin import bp, require_admin
from app.admin.charts import Media, per_minute_chart, timeline
from app.catapult import CatapultError
from app.delivery import filing
from app.filters import ConferenceListArgs, EventListArgs, event_filter
from app.models import (
    CONFERENCE_STATES,
    MATCH_STATES,
    Conference,
    Event,
    channels_of,
    utcnow,
)
from app.represent import iso

PAGE = 50
_provider_health: dict[str, Any] = {"checked": 0.0, "ok": None, "detail": ""}
PROVIDER_HEALTH_TTL_S = 30.0


# -- health -----------------------------------------------------------------------------------

def database_health() -> tuple[bool, str]:
    started = time.perf_counter()
    try:
        db.read_session().execute(text("SELECT 1"))
    except Exception as exc:
        return False, type(exc).__name__
    return True, f"{(time.perf_counter() - started) * 1000:.1f} ms"


def provider_health() -> tuple[bool | None, str]:
    """Ask the provider for our account, at most every 30 s per process."""
    now = time.monotonic()
    if now - _provider_health["checked"] > PROVIDER_HEALTH_TTL_S:
        started = time.perf_counter()
        try:
            catapult.client().ping()
            _provider_health.update(ok=True, detail=f"{(time.perf_counter() - started) * 1000:.0f}"
                                                    " ms")
        except CatapultError as exc:
            _provider_health.update(ok=False, detail=str(exc)[:200])
        _provider_health["checked"] = now
    return _provider_health["ok"], _provider_health["detail"]


def dashboard_data() -> dict[str, Any]:
    session = db.read_session()
    db_ok, db_detail = database_health()
    provider_ok, provider_detail = provider_health()
    stats = queries.stats(session, None, None)
    minutes = queries.per_minute(session)
    return {
        "db_ok": db_ok, "db_detail": db_detail, "provider_ok": provider_ok,
        "provider_detail": provider_detail, "stats": stats,
        "chart": per_minute_chart(minutes),
        "callbacks": sum(m.total - m.fallbacks for m in minutes),
        "fallbacks": sum(m.fallbacks for m in minutes),
        "last_event": queries.last_received(session),
        "problems": queries.problem_counts(session),
        "rejected": sum(stats.rejected.values()),
    }


@bp.get("/")
@require_admin
def dashboard() -> str:
    return render_template("admin/dashboard.html", **dashboard_data())


@bp.get("/fragments/dashboard")
@require_admin
def dashboard_fragment() -> str:
    return render_template("admin/_dashboard.html", **dashboard_data())


# -- conferences ------------------------------------------------------------------------------

def _load(schema: Any, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parse query arguments with the API's schema; return (values, errors)."""
    clean = {k: v for k, v in args.items() if v != ""}
    try:
        return schema.load(clean), {}
    except ValidationError as exc:
        return {}, exc.messages  # type: ignore[return-value]


@bp.get("/conferences")
@require_admin
def conference_list() -> str:
    args = request.args.to_dict()
    search = args.pop("q", "").strip()
    values, errors = _load(ConferenceListArgs(), {**args, "limit": str(PAGE)})
    found = None
    if search:
        found = conferences.find(db.read_session(), search)
        if found is not None:
            return redirect(url_for("admin.conference_page", ident=found.id))  # type: ignore[return-value]
        values.setdefault("tag", search)
    page, next_cursor = queries.Page([], None), None
    if not errors:
        try:
            page, next_cursor = filters.conference_page(db.read_session(), values, PAGE)
        except queries.InvalidQuery as exc:
            errors = {exc.field: [exc.problem]}
    return render_template("admin/conferences.html", page=page, errors=errors,
                           args={**args, "q": search}, next_cursor=next_cursor,
                           states=CONFERENCE_STATES)




conference_or_404 = conferences.find_or_404


def conference_data(conference: Conference) -> dict[str, Any]:
    session = db.read_session()
    histories = queries.member_histories(session, conference)
    media = [Media(kind, status, at) for kind, status, at in session.execute(
        select(Event.event_type, Event.status, Event.occurred_at).where(
            Event.conference_pk == conference.id,
            Event.event_type.in_(("conference-playback", "conference-speak")),
            Event.match == "matched").order_by(Event.occurred_at))]
    log = queries.events_page(session, queries.EventFilter(conference_pk=conference.id),
                              limit=200)
    return {"conference": conference, "histories": histories,
            "timeline": timeline(conference, histories, media),
            "counts": queries.conference_counts(session, conference.id),
            "log": log.items, "log_more": log.next_key is not None}


@bp.get("/conferences/<ident>")
@require_admin
def conference_page(ident: str) -> str:
    return render_template("admin/conference.html",
                           **conference_data(conference_or_404(ident)))


@bp.get("/fragments/conferences/<ident>")
@require_admin
def conference_fragment(ident: str) -> str:
    return render_template("admin/_conference.html",
                           **conference_data(conference_or_404(ident)))


@bp.get("/conferences/new")
@require_admin
def new_conference() -> str:
    return render_template("admin/new_conference.html", errors={}, form={})


@bp.post("/conferences/new")
@require_admin
def create_conference() -> Any:
    form = {k: v.strip() for k, v in request.form.items() if k != "csrf_token"}
    body: dict[str, Any] = {"from": form.get("from", "")}
    if form.get("tag"):
        body["tag"] = form["tag"]
    if form.get("callbackHttpMethod"):
        body["callbackHttpMethod"] = form["callbackHttpMethod"]
    if form.get("callbackTimeout"):
        body["callbackTimeout"] = form["callbackTimeout"]
    try:
        conference = conferences.create(db.write_session(), catapult.client(), body,
                                        current_app.config)
        flash(f"Conference {conference.id} created on the provider as "
              f"{conference.conference_id}.", "ok")
    except conferences.InvalidRequest as exc:
        return render_template("admin/new_conference.html", errors=exc.details,
                               form=form), 422
    except conferences.ProviderFailed as exc:
        conference = exc.conference
        flash(f"The provider refused the conference: {exc}", "error")
    return redirect(url_for("admin.conference_page", ident=conference.id))


@bp.post("/conferences/track")
@require_admin
def track_conference() -> Any:
    conference_id = request.form.get("conferenceId", "").strip()
    form = {"conferenceId": conference_id}
    if not 1 <= len(conference_id) <= 128:
        return render_template("admin/new_conference.html", form={},
                               track_errors={"conferenceId": "give the provider's conference "
                                             "id (1 to 128 characters)"},
                               track_form=form), 422
    session = db.write_session()
    try:
        tracked = conferences.track(session, catapult.client(), conference_id, current_app.config)
        session.commit()
    except conferences.ProviderFailed as exc:
        session.rollback()
        return render_template("admin/new_conference.html", form={},
                               track_errors={"conferenceId": f"the provider says: {exc}"},
                               track_form=form), 422
    except IntegrityError:
        session.rollback()  # tracked by someone else meanwhile
        tracked = conferences.track(session, catapult.client(), conference_id, current_app.config)
    conference = tracked.conference
    message = (f"Now tracking {conference_id} as {conference.id}." if tracked.created
               else f"{conference_id} is tracked already, as {conference.id}.")
    if tracked.waiting:
        message += (f" {tracked.waiting} stored event(s) name it but are not matched: "
                    "re-match them under Problems.")
    flash(message, "ok")
    return redirect(url_for("admin.conference_page", ident=conference.id))


@bp.post("/conferences/<ident>/terminate")
@require_admin
def terminate_conference(ident: str) -> Response:
    conference = conference_or_404(ident)
    try:
        conferences.terminate(catapult.client(), conference)
        flash("The provider is ending the conference; its last events will follow.", "ok")
    except conferences.NotOnProvider:
        flash("This conference was never created on the provider.", "error")
    except conferences.ProviderFailed as exc:
        flash(f"The provider refused: {exc}", "error")
    return redirect(url_for("admin.conference_page", ident=conference.id))


# -- events -----------------------------------------------------------------------------------

def event_search(args: dict[str, str], extra: dict[str, Any] | None = None
                 ) -> tuple[queries.Page, dict[str, Any], str | None]:
    values, errors = _load(EventListArgs(), {**args, "limit": str(PAGE)})
    if errors:
        return queries.Page([], None), errors, None
    conference_pk = None
    if "conference" in values:
        found = conferences.find(db.read_session(), values["conference"])
        if found is None:
            return queries.Page([], None), {"conference": ["no such conference"]}, None
        conference_pk = found.id
    flt = event_filter(values, conference_pk)
    if extra:
        flt = queries.EventFilter(**{**flt.__dict__, **extra})
    try:
        page, cursor = filters.event_page(db.read_session(), flt, values, PAGE)
    except queries.InvalidQuery as exc:
        return queries.Page([], None), {exc.field: [exc.problem]}, None
    return page, {}, cursor


@bp.get("/events")
@require_admin
def event_list() -> str:
    args = request.args.to_dict()
    args.setdefault("order", "desc")
    page, errors, cursor = event_search(args)
    return render_template("admin/events.html", page=page, errors=errors, args=args,
                           next_cursor=cursor, matches=MATCH_STATES)


@bp.get("/events/<int(max=9223372036854775807):event_id>")
@require_admin
def event_page(event_id: int) -> str:
    event = db.read_session().get(Event, event_id)
    if event is None:
        abort(404)
    payload = json.dumps(event.payload, indent=2, sort_keys=True, ensure_ascii=False)
    return render_template("admin/event.html", event=event, payload=payload,
                           channels=channels_of(event.channels))


@bp.post("/events/<int(max=9223372036854775807):event_id>/rematch")
@require_admin
def rematch_event(event_id: int) -> Response:
    session = db.write_session()
    event = session.get(Event, event_id)
    if event is None:
        abort(404)
    before = event.match
    after, reason = filing.rematch(session, event)
    session.commit()
    flash(f"Event {event_id}: {before} → {after}{f' ({reason})' if reason else ''}.",
          "ok" if after == "matched" else "error")
    target = request.form.get("next", "")
    if not target.startswith("/admin/") or target.startswith("//"):
        target = url_for("admin.event_page", event_id=event_id)
    return redirect(target)


# -- problems ---------------------------------------------------------------------------------

@bp.get("/problems")
@require_admin
def problems() -> str:
    args = request.args.to_dict()
    args.setdefault("match", "unmatched,conflict,invalid")
    args.setdefault("order", "desc")
    page, errors, cursor = event_search(args)
    session = db.read_session()
    stats = queries.stats(session, None, None)
    return render_template("admin/problems.html", page=page, errors=errors, args=args,
                           next_cursor=cursor, counts=queries.problem_counts(session),
                           rejected=stats.rejected)


@bp.post("/problems/rematch")
@require_admin
def rematch_all() -> Response:
    session = db.write_session()
    report = filing.rematch_many(session, ("unmatched", "conflict", "invalid"))
    session.commit()
    flash(f"Re-matched {report.examined} events: {report.matched} matched, "
          f"{report.conflict} conflicting, {report.unmatched} still unmatched, "
          f"{report.invalid} still not understood"
          f"{f', {report.remaining} left for another run' if report.remaining else ''}.",
          "ok")
    return redirect(url_for("admin.problems"))


@bp.app_template_filter("iso")
def _iso_filter(value: Any) -> str:
    return iso(value) or "—"


@bp.app_template_filter("ago")
def _ago_filter(value: Any) -> str:
    if value is None:
        return "never"

    seconds = int((utcnow() - value).total_seconds())
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"
