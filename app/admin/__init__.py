"""The operator's admin page under ``/admin``: server-rendered, signed in with one password.

Sessions are Flask's signed cookies (HttpOnly, SameSite=Strict, Secure behind TLS). Every
form carries a CSRF token (Flask-WTF). Failed sign-ins are counted per client address in the
database, so the limit holds across instances. Pages send a strict Content-Security-Policy:
no inline script or style, nothing from elsewhere.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import wraps
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface, SessionMixin
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy import func, select
from werkzeug.security import check_password_hash

from app import db
from app.models import SigninFailure, utcnow
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


SIGNIN_LIMIT = 5
SIGNIN_WINDOW = timedelta(minutes=5)
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


def signed_in() -> bool:
    return session.get("admin") is True


def wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def require_admin(view: Any) -> Any:
    """Let signed-in operators through; send browsers to sign in, answer 401 to programs."""
    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if signed_in():
            return view(*args, **kwargs)
        if wants_json():
            from app.errors import error_response

            return error_response(401, "unauthorized", "sign in at /admin/sign-in")
        return redirect(url_for("admin.sign_in", next=request.full_path.rstrip("?")))
    return guarded


def _client_address() -> str:
    # gunicorn sets REMOTE_ADDR from X-Forwarded-For only for trusted proxies.
    return (request.remote_addr or "unknown")[:64]


def recent_failures(address: str) -> int:
    since = (utcnow() - SIGNIN_WINDOW).replace(second=0, microsecond=0)
    return db.read_session().scalar(
        select(func.coalesce(func.sum(SigninFailure.count), 0))
        .where(SigninFailure.address == address, SigninFailure.minute >= since)) or 0


def record_failure(address: str) -> None:
    writer = db.write_session()
    table = SigninFailure.__table__
    writer.execute(db.upsert(writer, table).values(
        address=address, minute=utcnow().replace(second=0, microsecond=0), count=1,
    ).on_conflict_do_update(index_elements=[table.c.address, table.c.minute],
                            set_={"count": table.c.count + 1}))
    writer.commit()


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
        if recent_failures(address) >= SIGNIN_LIMIT:
            log.warning("admin sign-in refused: too many failures from %s", address)
            error, status = "Too many failed attempts. Wait a few minutes.", 429
        elif password_matches(request.form.get("password", "")):
            session.clear()
            session["admin"] = True
            session.permanent = True
            log.info("admin signed in from %s", address)
            return redirect(target)
        else:
            record_failure(address)
            log.warning("admin sign-in failed from %s", address)
            error, status = "That password is not right.", 401
    return render_template("admin/sign_in.html", error=error, next=target), status


@bp.post("/sign-out")
def sign_out() -> Response:
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
