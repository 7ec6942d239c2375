"""The site: the Flask app factory, its blueprints, and how errors become pages.

``create_app`` builds everything: the instance, the services (models and search indexes, loaded
on first use), CSRF protection (Flask-WTF), the login rate limit (Flask-Limiter), the request
guards and the blueprints. Importing this package opens nothing and loads nothing.
"""
from __future__ import annotations

from flask import Flask, jsonify, render_template, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter

from gallery.errors import CuratorError
from gallery.instance import Instance
from gallery.store.rows import SQLITE_INT_MAX
from generate.models import ModelCache

from . import api, auth, browse, images, jobs, report, security
from .context import EXTENSION, Services, close_store

MAX_BODY = 1 << 20


class IdConverter(IntegerConverter):
    """``<id:name>``: a row id, a whole number SQLite can hold (anything else is a 404)."""

    def __init__(self, url_map):
        super().__init__(url_map, min=1, max=SQLITE_INT_MAX)


def create_app(test_config: dict | None = None, *, models: ModelCache | None = None) -> Flask:
    """Build the Flask app; ``test_config`` overrides settings (tests point INSTANCE at tmp_path)."""
    config = dict(test_config or {})
    instance = Instance(config.pop("INSTANCE", None) or Instance.default().root)
    instance.root.mkdir(parents=True, exist_ok=True)
    app = Flask(__name__, instance_path=str(instance.root))
    app.config.from_mapping(
        SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_SECURE=False,
        PAGE_SIZE=60, THUMB_SIZE=256, MAX_CONTENT_LENGTH=MAX_BODY, BEHIND_PROXY=False,
        # A gallery page may stay open all night: its token lives as long as the session.
        WTF_CSRF_TIME_LIMIT=None,
    )
    app.config.update(config)
    app.config.setdefault("SECRET_KEY", None)
    app.config["SECRET_KEY"] = app.config["SECRET_KEY"] or instance.secret_key()
    if app.config["BEHIND_PROXY"]:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)
    app.url_map.converters["id"] = IdConverter
    app.extensions[EXTENSION] = Services(instance, models)
    app.teardown_appcontext(close_store)
    security.init_app(app)
    CSRFProtect(app)
    for module in (auth, browse, images, jobs, report, api):
        app.register_blueprint(module.bp)
    limiter = Limiter(get_remote_address, app=app, storage_uri="memory://", headers_enabled=True)
    app.view_functions["auth.login"] = limiter.limit(
        auth.LOGIN_LIMIT, methods=["POST"], deduct_when=auth.failed_login, error_message=auth.LIMIT_MESSAGE,
    )(app.view_functions["auth.login"])
    _error_handlers(app)
    return app


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def _error(code: int, message: str):
    if _wants_json():
        return jsonify(error=message), code
    return render_template("error.html", code=code, message=message), code


def _error_handlers(app: Flask) -> None:
    @app.errorhandler(CuratorError)
    def domain_error(e: CuratorError):
        """Bad input as a 4xx (a missing id as a 404), with its one-line message."""
        return _error(e.status, str(e))

    @app.errorhandler(CSRFError)
    def csrf_error(e: CSRFError):
        """A missing or stale CSRF token."""
        return _error(403, "Missing or invalid CSRF token; reload the page and try again.")

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        """Any HTTP error as a page with the site's navigation (JSON under /api/)."""
        if isinstance(e, InternalServerError):
            return _error(500, "Something went wrong on the server; the log has the details.")
        return _error(e.code or 500, e.description or e.name)
