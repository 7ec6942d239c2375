"""What guards every request: allowed hosts, same-origin writes, the login gate, body size, headers.

- Without a password the gallery answers only to loopback host names (and the ones configured in
  ``allowed_hosts``), so a page elsewhere whose name rebinds to 127.0.0.1 gets nothing.
- State-changing requests must come from a page of this site: a foreign ``Origin`` is refused,
  and Flask-WTF's CSRF token is required as well.
- With a password, every page but the login asks for a live session (see ``auth``).
- Bodies over the limit are refused from their declared length, before they are read.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Response, abort, current_app, redirect, request, session, url_for
from flask.sessions import SecureCookieSessionInterface

from .context import get_store, services

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")
CSP = ("default-src 'self'; img-src 'self' data:; media-src 'self'; script-src 'self'; style-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
OPEN_ENDPOINTS = ("auth.login", "static")


class SessionInterface(SecureCookieSessionInterface):
    """Signed cookie sessions whose cookie is marked Secure whenever the request came over HTTPS."""

    def get_cookie_secure(self, app) -> bool:
        """Secure when configured so, or when this request is HTTPS (directly or through a trusted proxy)."""
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def init_app(app) -> None:
    """Install the request guards (before Flask-WTF's CSRF check) and the response headers."""
    app.session_interface = SessionInterface()
    app.before_request(_guard)
    app.after_request(_headers)


def password_set() -> bool:
    """Whether the gallery asks for a password."""
    return bool(services().config().password_hash)


def logged_in() -> bool:
    """Whether this request carries a live session."""
    return session.get("user") == "owner" and get_store().session_valid(session.get("sid"))


def _host_allowed(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    allowed = set(LOOPBACK_HOSTS) | {h.lower() for h in services().config().allowed_hosts}
    return name.lower() in allowed


def _same_origin() -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not sent by every client; the CSRF token still has to match
    parts = urlsplit(origin)
    return origin != "null" and parts.netloc.lower() == request.host.lower() and parts.scheme == request.scheme


def _guard():
    if not password_set() and not _host_allowed(request.host):
        # Plain text: nothing of the site (not even a CSRF token) for a name that may be rebound.
        abort(Response(f"This gallery answers only to loopback addresses; {request.host!r} is not one of them "
                       "(add it to allowed_hosts in the instance config, or set a password).\n", 400,
                       mimetype="text/plain"))
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if limit and (request.content_length or 0) > limit:
        abort(413, f"The request body is over the limit of {limit:,} bytes.")
    if request.method in UNSAFE and not _same_origin():
        abort(403, "Cross-site request refused.")
    if request.endpoint in OPEN_ENDPOINTS or not password_set() or logged_in():
        return None
    session.clear()
    if request.path.startswith("/api/"):
        abort(401, "Log in first.")
    return redirect(url_for("auth.login", next=request.full_path if request.query_string else request.path))


def _headers(response):
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    if response.mimetype == "text/html":
        # Pages show live state (stars, the trash): Back must fetch them again, not show a stale copy.
        response.headers["Cache-Control"] = "no-store"
    elif response.cache_control.public:
        # Nothing of a gallery is for shared caches, least of all images behind a login.
        response.cache_control.public = False
        response.cache_control.private = True
    return response
