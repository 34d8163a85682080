"""The operator's admin page under ``/admin``: server-rendered, signed in with one password.

Sessions live in the database (``admin_session``); the signed cookie (HttpOnly,
SameSite=Strict, Secure behind TLS) holds only a random token, so signing out ends a session
for good. A session ends after ``CONFHOOK_ADMIN_SESSION_HOURS`` whatever happens, and after
``CONFHOOK_ADMIN_IDLE_MINUTES`` without a page asked for (the pages' own refreshes do not
count). Sign-in attempts are counted in the database per client address before the password
is checked (the limit holds across instances and under concurrency), and failures of all
addresses together slow sign-in down rather than lock anyone out. Every form carries a CSRF
token (Flask-WTF). Pages send a strict Content-Security-Policy.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from datetime import datetime, timedelta
from functools import wraps
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface, SessionMixin
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy import delete, func, select, update
from werkzeug.security import check_password_hash

from app import db
from app.errors import error_response
from app.models import AdminSession, SigninFailure, utcnow
from app.payload import reject_nul_in_request

bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates",
               static_folder="static", static_url_path="/static")
csrf = CSRFProtect()
log = logging.getLogger(__name__)
bp.before_request(reject_nul_in_request)


class AdminSessionInterface(SecureCookieSessionInterface):
    """Cookie sessions for the admin pages only.

    Every other request (a delivery, the API, probes, metrics) gets Flask's null session: the
    admin's cookie is neither verified nor refreshed there, so a request elsewhere does not
    extend a sign-in, and a delivery does not pay for a signature check it has no use for.
    """

    def open_session(self, app: Flask, request: Any) -> SessionMixin | None:
        prefix = bp.url_prefix or "/admin"
        if request.path != prefix and not request.path.startswith(prefix + "/"):
            return None  # Flask then uses its null session, which is never saved
        return super().open_session(app, request)


SIGNIN_LIMIT = 5  # attempts per client address in the window
SIGNIN_WINDOW = timedelta(minutes=5)
SLOWDOWN_AFTER = 20  # failures of all addresses in the window, then each attempt waits
SLOWDOWN_MAX_S = 2.0
TOUCH_EVERY = timedelta(minutes=1)  # how often a session's last_seen_at is written
REFRESHES = ("admin.dashboard_fragment", "admin.conference_fragment")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


def password_configured() -> bool:
    return bool(current_app.config["CONFHOOK_ADMIN_PASSWORD_HASHES"])


def password_matches(password: str) -> bool:
    """Check against every configured hash (current and any being rotated out)."""
    ok = False
    for hashed in current_app.config["CONFHOOK_ADMIN_PASSWORD_HASHES"]:
        ok |= check_password_hash(hashed, password)
    return ok


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def signed_in() -> bool:
    """Whether the cookie names a live session: not signed out, not past its lifetime, not
    idle too long. A page (not a refresh) keeps it alive."""
    token = session.get("sid")
    if not isinstance(token, str):
        return False
    cached = g.get("admin_session_ok")
    if cached is not None:
        return bool(cached)
    config = current_app.config
    now = utcnow()
    table = AdminSession.__table__
    row = db.read_session().execute(select(table.c.created_at, table.c.last_seen_at).where(
        table.c.token_hash == _token_hash(token))).first()
    ok = row is not None and (
        now - row.created_at < timedelta(hours=config["CONFHOOK_ADMIN_SESSION_HOURS"])
        and now - row.last_seen_at < timedelta(minutes=config["CONFHOOK_ADMIN_IDLE_MINUTES"]))
    if ok and request.endpoint not in REFRESHES and now - row.last_seen_at > TOUCH_EVERY:
        writer = db.write_session()
        writer.execute(update(table).where(table.c.token_hash == _token_hash(token))
                       .values(last_seen_at=now))
        writer.commit()
    g.admin_session_ok = ok
    return ok


def wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def require_admin(view: Any) -> Any:
    """Let signed-in operators through; send browsers to sign in, answer 401 to programs."""
    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if signed_in():
            return view(*args, **kwargs)
        session.pop("sid", None)
        if wants_json():
            return error_response(401, "unauthorized", "sign in at /admin/sign-in")
        return redirect(url_for("admin.sign_in", next=request.full_path.rstrip("?")))
    return guarded


def _client_address() -> str:
    # The client behind trusted proxies only (app/proxies.py), as everywhere.
    return (request.remote_addr or "unknown")[:64]


def _window_start() -> datetime:
    return (utcnow() - SIGNIN_WINDOW).replace(second=0, microsecond=0)


def record_attempt(address: str) -> tuple[int, int]:
    """Count one sign-in attempt from ``address``, before its password is checked; return
    the address's attempts and all addresses' in the window, this one included.

    In one write transaction: concurrent attempts are counted one after another, so no more
    than the limit are ever checked.
    """
    writer = db.write_session()
    table = SigninFailure.__table__
    writer.execute(db.upsert(writer, table).values(
        address=address, minute=utcnow().replace(second=0, microsecond=0), count=1,
    ).on_conflict_do_update(index_elements=[table.c.address, table.c.minute],
                            set_={"count": table.c.count + 1}))
    since = _window_start()
    mine = writer.scalar(select(func.coalesce(func.sum(table.c.count), 0)).where(
        table.c.address == address, table.c.minute >= since)) or 0
    everyone = writer.scalar(select(func.coalesce(func.sum(table.c.count), 0)).where(
        table.c.minute >= since)) or 0
    writer.commit()
    return mine, everyone


def forget_attempts(address: str) -> None:
    """A right password: the address's attempts no longer count against it."""
    writer = db.write_session()
    writer.execute(delete(SigninFailure.__table__).where(
        SigninFailure.__table__.c.address == address))
    writer.commit()


def start_session(address: str) -> None:
    token = secrets.token_urlsafe(32)
    writer = db.write_session()
    now = utcnow()
    writer.add(AdminSession(token_hash=_token_hash(token), created_at=now, last_seen_at=now,
                            address=address))
    # Sessions long over are cleared as new ones begin.
    hours = current_app.config["CONFHOOK_ADMIN_SESSION_HOURS"]
    writer.execute(delete(AdminSession.__table__).where(
        AdminSession.__table__.c.created_at < now - timedelta(hours=hours)))
    writer.commit()
    session.clear()
    session["sid"] = token
    session.permanent = True


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Any:
    if not password_configured():
        return render_template("admin/no_password.html"), 503
    target = request.args.get("next") or ""
    # Only a path of this page: no other host, no control character (a header injection).
    if not (target.startswith("/admin") and target.isascii() and target.isprintable()
            and "\\" not in target):
        target = url_for("admin.dashboard")
    error = None
    status = 200
    if request.method == "POST":
        address = _client_address()
        mine, everyone = record_attempt(address)
        if mine > SIGNIN_LIMIT:
            log.warning("admin sign-in refused: too many attempts from %s", address)
            error, status = "Too many attempts. Wait a few minutes.", 429
        else:
            if everyone > SLOWDOWN_AFTER:
                # Many failures from everywhere: every attempt waits, nobody is locked out.
                time.sleep(min(SLOWDOWN_MAX_S, 0.1 * (everyone - SLOWDOWN_AFTER)))
            if password_matches(request.form.get("password", "")):
                forget_attempts(address)
                start_session(address)
                log.info("admin signed in from %s", address)
                return redirect(target)
            log.warning("admin sign-in failed from %s", address)
            error, status = "That password is not right.", 401
    return render_template("admin/sign_in.html", error=error, next=target), status


@bp.post("/sign-out")
def sign_out() -> Response:
    token = session.get("sid")
    if isinstance(token, str):
        writer = db.write_session()
        writer.execute(delete(AdminSession.__table__).where(
            AdminSession.__table__.c.token_hash == _token_hash(token)))
        writer.commit()
    session.clear()
    return redirect(url_for("admin.sign_in"))


def _security_headers(response: Response) -> Response:
    if request.blueprint == "admin":
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        if response.mimetype == "text/html":
            response.headers["Cache-Control"] = "no-store"
    return response


def _csrf_error(exc: CSRFError) -> tuple[str, int]:
    return render_template("admin/error.html", title="Form expired",
                           message=f"{exc.description} Reload the page and try again."), 400


def init_app(app: Flask) -> None:
    # Here, not at the top: the views import this module's blueprint (a real cycle).
    from app.admin import views  # noqa: F401 - registers the pages

    app.session_interface = AdminSessionInterface()
    csrf.init_app(app)
    app.register_blueprint(bp)
    app.after_request(_security_headers)
    app.register_error_handler(CSRFError, _csrf_error)
    # Only the admin's forms use CSRF tokens: the API authenticates with bearer tokens
    # and the provider's callbacks with their URL key.
    for name, blueprint in app.blueprints.items():
        if name != "admin":
            csrf.exempt(blueprint)
