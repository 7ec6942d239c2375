"""CSRF tokens, the login gate and security headers, for every request."""
from __future__ import annotations

import hmac
import secrets

from flask import abort, current_app, g, redirect, request, session, url_for

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
CSP = ("default-src 'self'; img-src 'self' data:; media-src 'self'; script-src 'self'; style-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


def csrf_token() -> str:
    """This session's CSRF token (created on first use)."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def init_app(app) -> None:
    """Install the before/after request hooks and the template helper."""
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.before_request(_gate)
    app.after_request(_headers)


def _gate():
    if request.endpoint == "static":
        return None
    if current_app.config.get("PASSWORD_HASH") and not session.get("user") and request.endpoint not in (
            "auth.login",):
        if request.path.startswith("/api/"):
            abort(401, "Log in first.")
        return redirect(url_for("auth.login", next=request.full_path if request.query_string else request.path))
    if request.method in UNSAFE:
        sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token") or ""
        expected = session.get("csrf")
        if not expected or not hmac.compare_digest(sent, expected):
            abort(403, "Missing or invalid CSRF token; reload the page and try again.")
    g.csrf = csrf_token()
    return None


def _headers(response):
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response
