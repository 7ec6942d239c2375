"""Login for galleries served beyond this machine: one password, kept hashed in the instance settings.

Each login is a row in the store (the cookie carries its random token), so logging out ends that
session on the server and setting a new password ends them all. Wrong passwords are limited per
address (Flask-Limiter), with a clear message when the limit is hit.
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from werkzeug.security import check_password_hash, generate_password_hash

from gallery.errors import BadRequest
from gallery.instance import Instance
from gallery.store import Store

from .context import get_store, services

bp = Blueprint("auth", __name__)

MIN_PASSWORD = 8
LOGIN_LIMIT = "5 per minute;30 per hour"
LIMIT_MESSAGE = "Too many wrong passwords from this address: wait a minute and try again."
# What browsers drop from a URL before parsing it (WHATWG URL: ASCII tab and newline anywhere,
# C0 controls and space at either end), so "/\t/evil.example" is read as "//evil.example".
_DROPPED = re.compile(r"[\t\n\r]")


def set_password(instance: Instance, password: str) -> None:
    """Store a new password hash and revoke every session logged in with the old one."""
    if len(password) < MIN_PASSWORD:
        raise BadRequest(f"the password must be at least {MIN_PASSWORD} characters long")
    instance.update_config(password_hash=generate_password_hash(password))
    with Store(instance.db_path) as store:
        store.end_all_sessions()


def safe_next(target: str | None) -> str:
    """``target`` if, read as a browser reads it, it is a path on this site; else the grid."""
    if target:
        cleaned = _DROPPED.sub("", target).strip("\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c\x0e\x0f"
                                                 "\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c"
                                                 "\x1d\x1e\x1f ").replace("\\", "/")
        parts = urlsplit(cleaned)
        if (cleaned.startswith("/") and not cleaned.startswith("//") and not parts.scheme and not parts.netloc
                and all(ch.isprintable() for ch in cleaned)):
            return cleaned
    return url_for("browse.index")


def failed_login(response) -> bool:
    """Whether a response to the login form refused the password (only those count to the limit)."""
    return response.status_code != 302


@bp.route("/login", methods=["GET", "POST"])
def login():
    """The login form."""
    if request.method == "POST":
        pw_hash = services().config().password_hash
        if pw_hash and check_password_hash(pw_hash, request.form.get("password", "")):
            session.clear()
            session["user"] = "owner"
            session["sid"] = get_store().create_session()
            session.permanent = True
            return redirect(safe_next(request.args.get("next")))
        flash("Wrong password.", "error")
    return render_template("auth/login.html")


@bp.route("/logout", methods=["POST"])
def logout():
    """End this session, on the server as well as in the browser."""
    get_store().end_session(session.get("sid"))
    session.clear()
    return redirect(url_for("auth.login"))
