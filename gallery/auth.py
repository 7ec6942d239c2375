"""Login for galleries served beyond this machine: one password, kept hashed in the instance config."""
from __future__ import annotations

import json
import os
from pathlib import Path

from flask import Blueprint, current_app, flash, redirect, render_template, request, session, url_for
from werkzeug.security import check_password_hash, generate_password_hash

bp = Blueprint("auth", __name__)


def set_password(instance: Path, password: str) -> None:
    """Store a password hash in the instance's config.json (created private)."""
    path = Path(instance) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        config = {}
    config["password_hash"] = generate_password_hash(password)
    tmp = path.with_suffix(".json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f, indent=2)
    os.replace(tmp, path)


def _safe_next(target: str | None) -> str:
    # Only same-site paths: never redirect to another host after login.
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("browse.index")


@bp.route("/login", methods=["GET", "POST"])
def login():
    """The login form."""
    if request.method == "POST":
        pw_hash = current_app.config.get("PASSWORD_HASH")
        if pw_hash and check_password_hash(pw_hash, request.form.get("password", "")):
            session.clear()
            session["user"] = "owner"
            session.permanent = True
            return redirect(_safe_next(request.args.get("next")))
        flash("Wrong password.")
    return render_template("auth/login.html")


@bp.route("/logout", methods=["POST"])
def logout():
    """Forget the session."""
    session.clear()
    return redirect(url_for("auth.login"))
